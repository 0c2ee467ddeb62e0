# shellcheck shell=bash
# Container images on a machine that reaches no registry: sourced by scripts/build-image (the
# sync-engine image) and scripts/stand-in-images (MariaDB, Redis, Redis Stack, a Kafka-protocol broker
# and Prometheus for docker-compose.local.yml and the testcontainers path). Needs scripts/services.sh
# sourced first (as_root, apt_install, SYNC_ENGINE_TOOLS_DIR), and `log`/`die`.
#
#   pick_engine          ENGINE=podman or docker (installing podman + runc if neither is there)
#   ensure_debian_image  localhost/debian:bookworm, debootstrapped from apt's mirror, once
#   ensure_recipe_image  IMAGE RECIPE CONTEXT [--build-arg …]: builds IMAGE from the Containerfile
#                        RECIPE on that base unless IMAGE already carries the digest of RECIPE and
#                        CONTEXT's files (label sync-engine.recipe); one builder at a time

DEBIAN_SUITE=bookworm
DEBIAN_IMAGE=localhost/debian:$DEBIAN_SUITE
IMAGES_SCRATCH=()
cleanup_image_scratch() { local d; for d in "${IMAGES_SCRATCH[@]}"; do as_root rm -rf "$d"; done; }

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }
image_id() { "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
image_label() { "$ENGINE" image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }

# ------------------------------------------------------------------------ the engine

ENGINE=""
pick_engine() {
    if [ -n "${SYNC_ENGINE_CONTAINER_ENGINE:-}" ]; then
        ENGINE=$SYNC_ENGINE_CONTAINER_ENGINE
    elif command -v podman >/dev/null 2>&1; then
        ENGINE=podman
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        log "no podman, and no docker daemon answering: installing podman"
        apt_install podman runc
        ENGINE=podman
    fi
    command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE not found"
    if [ "$ENGINE" = podman ] && [ ! -e /etc/containers/containers.conf ]; then
        log "writing /etc/containers/containers.conf (runtime runc, no default ulimits)"
        command -v runc >/dev/null 2>&1 || apt_install runc
        as_root mkdir -p /etc/containers
        as_root tee /etc/containers/containers.conf >/dev/null <<'EOF'
# Written by sync-engine's scripts/images.sh because no containers.conf existed: crun fails
# on cgroups in this kind of sandbox and the default ulimits cannot be set in it.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
    fi
    log "engine: $("$ENGINE" --version)"
}

# ------------------------------------------------------------------ the Debian base

# Prints "MIRROR SECURITY_MIRROR": the Debian archive and security URIs of apt's sources here
# (deb822 .sources files or one-line lists), deb.debian.org where none is found.
apt_mirrors() {
    local uris
    uris="$({
        sed -n 's/^[[:space:]]*URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
        sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    } || true)"
    local main security
    main="$(grep -E '/debian/?$' <<<"$uris" | head -n 1 || true)"
    security="$(grep -E '/debian-security/?$' <<<"$uris" | head -n 1 || true)"
    echo "${main:-http://deb.debian.org/debian} ${security:-http://deb.debian.org/debian-security}"
}

ensure_debian_image() {
    image_exists "$DEBIAN_IMAGE" && return 0
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local mirror security rootfs t0=$SECONDS
    read -r mirror security < <(apt_mirrors)
    rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/sync-engine-rootfs.XXXXXX")"
    IMAGES_SCRATCH+=("$rootfs")
    log "debootstrap --variant=minbase $DEBIAN_SUITE from $mirror"
    as_root debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$mirror" >/dev/null \
        || die "debootstrap failed (its log: $rootfs/debootstrap/debootstrap.log)"
    as_root tee "$rootfs/etc/apt/sources.list" >/dev/null <<EOF
deb $mirror $DEBIAN_SUITE main
deb $mirror $DEBIAN_SUITE-updates main
deb $security $DEBIAN_SUITE-security main
EOF
    as_root sh -c "rm -rf '$rootfs'/var/lib/apt/lists/* '$rootfs'/var/cache/apt/*.bin '$rootfs'/var/cache/apt/archives/*.deb"
    log "importing it as $DEBIAN_IMAGE"
    as_root tar -C "$rootfs" -c . | "$ENGINE" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null \
        || die "$ENGINE import of the debootstrapped tree failed"
    log "$DEBIAN_IMAGE made in $((SECONDS - t0))s"
}

# ensure_recipe_image IMAGE RECIPE CONTEXT [build args…]
ensure_recipe_image() {
    local image=$1 recipe=$2 context=$3
    shift 3
    local digest
    digest="$( { cat "$recipe"; (cd "$context" && find . -type f -print0 | sort -z | xargs -0r sha256sum); } | sha256sum | cut -c1-16)"
    if [ "$(image_label "$image" sync-engine.recipe)" = "$digest" ]; then
        log "$image (cached)"
        return 0
    fi
    # one builder of these images at a time (a test and a developer may both start here)
    mkdir -p "$SYNC_ENGINE_TOOLS_DIR"
    exec 8>"$SYNC_ENGINE_TOOLS_DIR/.image-base.lock"
    flock -w 900 8 || die "could not lock $SYNC_ENGINE_TOOLS_DIR/.image-base.lock within 15 min"
    if [ "$(image_label "$image" sync-engine.recipe)" != "$digest" ]; then
        ensure_debian_image
        local t0=$SECONDS
        log "building $image ($(basename "$recipe"))"
        "$ENGINE" build -q -f "$recipe" --build-arg "DEBIAN_BASE=$DEBIAN_IMAGE" "$@" \
            --label "sync-engine.recipe=$digest" -t "$image" "$context" >/dev/null \
            || die "building $image failed"
        log "$image made in $((SECONDS - t0))s"
    fi
    exec 8>&-
}
