# The sync-engine sidecar image.
#
#     docker build -t sync-engine .            # or: podman build -t sync-engine .
#     docker run --rm sync-engine --help
#     docker run --read-only -e SYNC_ENGINE__KAFKA__BROKERS=kafka:9092 \
#         -e SYNC_ENGINE__SQL_URL=mysql://… -e SYNC_ENGINE__REDIS_URL=redis://… sync-engine
#
# `Dockerfile` is a byte-for-byte copy of this file (tests/image.rs holds them equal): podman
# and buildah read `Containerfile` first, docker only `Dockerfile`, and a symlink is not read
# everywhere (BuildKit has failed on a symlinked Dockerfile, moby/buildkit#2119).
#
# Stages (the default target is the last, `runtime`):
#   runtime-base      the runtime image without its binary: non-root user, the default
#                     pipeline, entry point, port, labels. Both final stages are built on it.
#   runtime-prebuilt  + a binary built outside (`--build-arg PREBUILT=path/in/context`), for
#                     machines that reach no registry; scripts/build-image builds this one.
#   builder           `cargo build --release --locked` in ${RUST_IMAGE}.
#   runtime           + the builder's binary.
#
# The runtime base must hold glibc, libgcc_s, OpenSSL 3 (libssl3: librdkafka's TLS/SASL and
# native-tls for SQL and Redis) and CA certificates. gcr.io/distroless/cc-debian12 has exactly
# those (its "base" layer is libc6 + libssl3 + ca-certificates, "cc" adds libgcc-s1) and no
# shell. It has no zlib: the crate links zlib statically (rdkafka's `libz-static`), and the
# builder stage checks the binary asks for nothing else.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12

FROM ${RUNTIME_BASE} AS runtime-base
ARG RUNTIME_BASE
# tests/image.rs holds this default equal to Cargo.toml's version
ARG VERSION=0.1.0
ARG REVISION=
ARG CREATED=
LABEL org.opencontainers.image.title="sync-engine" \
      org.opencontainers.image.description="Kafka-fed tiered sync sidecar: L1 memory, L2 Redis, L3 MySQL/MariaDB or SQLite" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${RUNTIME_BASE}"
# Read-only (root-owned, 0644). Every key can be overridden with SYNC_ENGINE__* variables,
# or replace the file with a mount (a ConfigMap: hot reload follows its symlink swap).
COPY pipelines/default.toml /etc/sync-engine/pipeline.toml
# distroless's "nonroot"; numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
# `run` writes no file, so a read-only root filesystem works (`dev` and `demo` write SQLite
# files into the working directory: give them a --db under a writable /tmp).
USER 65532:65532
# logs go to a collector, not a terminal: no ANSI colour codes in them (`-e NO_COLOR=` for colour)
ENV NO_COLOR=1
# /healthz, /readyz, /metrics ([http] listen, default 0.0.0.0:9464)
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/sync-engine"]
CMD ["run", "--pipeline", "/etc/sync-engine/pipeline.toml"]

FROM runtime-base AS runtime-prebuilt
ARG PREBUILT=target/release/sync-engine
COPY ${PREBUILT} /usr/local/bin/sync-engine

FROM ${RUST_IMAGE} AS builder
# librdkafka is compiled from source (configure + make) against the system OpenSSL, and its
# configure script fails without a C++ compiler; the full rust:*-bookworm images have all of
# these already, the slim ones do not.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev make pkg-config libssl-dev binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# Dependencies first, on a stub crate with the real manifest: this layer (librdkafka, sqlx, …,
# most of the build time) is reused until Cargo.toml, Cargo.lock or a bench file changes
# (cargo wants the declared [[bench]] files to exist, it does not build them).
COPY Cargo.toml Cargo.lock ./
COPY benches benches
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY README.md ./
COPY schemas schemas
COPY src src
# COPY keeps the context's modification times, which may be older than the stub build's
# outputs: touch the crate roots so cargo rebuilds the crate itself.
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/sync-engine /out/sync-engine
# The runtime base has glibc, libgcc_s and OpenSSL 3 only: fail here, not in the container.
RUN unexpected="$(readelf -d /out/sync-engine | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' \
        | grep -vxE 'lib(c|m|dl|rt|pthread|util|gcc_s)\.so\.[0-9]+|lib(ssl|crypto)\.so\.3|ld-linux[-a-z0-9_.]*\.so\.[0-9]+' || true)" \
 && if [ -n "$unexpected" ]; then echo "the binary needs libraries the runtime base lacks: $unexpected" >&2; exit 1; fi

FROM runtime-base AS runtime
COPY --from=builder /out/sync-engine /usr/local/bin/sync-engine
