#!/usr/bin/env bash
# Start, stop, restart or check the local Mosquitto and Kafka brokers that the
# integration tests and the demo use. Installs nothing: run
# scripts/install-services.sh first.
#
# Usage: scripts/services.sh start|stop|restart|status [mosquitto|kafka|all]
#
# State, generated configuration, certificates, pid files and logs live in
# <repo>/.run/. `restart` keeps the broker's data, so queued messages and
# topics survive it.
#
# Environment (defaults in brackets), all listeners bound to 127.0.0.1:
#   POLICY_SYNC_MQTT_PORT              plain MQTT, anonymous [18830]
#   POLICY_SYNC_MQTT_TLS_PORT          MQTT over TLS, client certificate required [18831]
#   POLICY_SYNC_MQTT_AUTH_PORT         plain MQTT, user ilagent / ilagent-secret [18832]
#   POLICY_SYNC_KAFKA_PORT             Kafka broker [19092]
#   POLICY_SYNC_KAFKA_CONTROLLER_PORT  Kafka KRaft controller [19093]
#   POLICY_SYNC_CACHE                  cache with the Kafka jars [~/.cache/policy-sync]
#   POLICY_SYNC_KAFKA_VERSION          Kafka version in the cache [4.4.0]
#   POLICY_SYNC_START_TIMEOUT          seconds to wait for a broker to accept connections [120]
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_dir="$repo_dir/.run"

mqtt_port="${POLICY_SYNC_MQTT_PORT:-18830}"
mqtt_tls_port="${POLICY_SYNC_MQTT_TLS_PORT:-18831}"
mqtt_auth_port="${POLICY_SYNC_MQTT_AUTH_PORT:-18832}"
kafka_port="${POLICY_SYNC_KAFKA_PORT:-19092}"
kafka_controller_port="${POLICY_SYNC_KAFKA_CONTROLLER_PORT:-19093}"
cache_dir="${POLICY_SYNC_CACHE:-$HOME/.cache/policy-sync}"
kafka_version="${POLICY_SYNC_KAFKA_VERSION:-4.4.0}"
kafka_libs="$cache_dir/kafka-$kafka_version/libs"
start_timeout="${POLICY_SYNC_START_TIMEOUT:-120}"
stop_timeout=60

mqtt_username="ilagent"
mqtt_password="ilagent-secret"

certs_dir="$run_dir/certs"
mosquitto_dir="$run_dir/mosquitto"
kafka_dir="$run_dir/kafka"

log() {
    echo "services: $*" >&2
}

die() {
    log "$*"
    exit 1
}

usage() {
    echo "usage: $0 start|stop|restart|status [mosquitto|kafka|all]" >&2
    exit 2
}

# Succeed when something accepts TCP connections on 127.0.0.1:<port>.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Print the PID recorded for a service when that process is still running
# and is the service (not a later process that reused the PID).
running_pid() {
    local name="$1" pid_file pid cmdline
    pid_file="$run_dir/$name/$name.pid"
    [[ -f "$pid_file" ]] || return 1
    pid="$(<"$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$name" in
        mosquitto) [[ "$cmdline" == *mosquitto* ]] || return 1 ;;
        kafka) [[ "$cmdline" == *kafka.Kafka* ]] || return 1 ;;
    esac
    echo "$pid"
}

show_log_tail() {
    local log_file="$1"
    if [[ -f "$log_file" ]]; then
        log "last lines of $log_file:"
        tail -n 40 "$log_file" >&2
    fi
}

# Replace @NAME@ placeholders in a template. Arguments: template, output,
# then NAME=value pairs.
render_template() {
    local template="$1" output="$2"
    shift 2
    local args=() pair
    for pair in "$@"; do
        args+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
    done
    sed "${args[@]}" "$template" >"$output.tmp"
    if grep -q '@[A-Z_]*@' "$output.tmp"; then
        die "template $template has placeholders without a value: $(grep -o '@[A-Z_]*@' "$output.tmp" | sort -u | tr '\n' ' ')"
    fi
    mv "$output.tmp" "$output"
}

# Wait until a readiness command succeeds for a started process, or fail
# with the log tail. Arguments: service name, pid, log file, command...
wait_until_ready() {
    local name="$1" pid="$2" log_file="$3"
    shift 3
    local deadline=$((SECONDS + start_timeout))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail "$log_file"
            rm -f "$run_dir/$name/$name.pid"
            die "$name exited during startup (pid $pid)"
        fi
        if "$@"; then
            return 0
        fi
        sleep 0.2
    done
    show_log_tail "$log_file"
    die "$name startup timed out after ${start_timeout}s (pid $pid still running, not ready; see $log_file)"
}

# --- certificates -----------------------------------------------------------

# Create a project CA plus a server certificate (127.0.0.1, ::1, localhost)
# and a client certificate signed by it. The extensions pass the checks of
# ssl.VERIFY_X509_STRICT, which Python 3.13's default SSL context enables.
make_certs() {
    if [[ -f "$certs_dir/client.crt" && -f "$certs_dir/server.crt" && -f "$certs_dir/ca.crt" ]]; then
        return
    fi
    log "creating test certificates in $certs_dir"
    mkdir -p "$certs_dir"
    local work
    work="$(mktemp -d)"

    cat >"$work/ca.ext" <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    cat >"$work/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
    cat >"$work/client.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF

    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=policy-sync test CA" \
        -keyout "$work/ca.key" -out "$work/ca.csr" 2>/dev/null
    openssl x509 -req -in "$work/ca.csr" -signkey "$work/ca.key" -days 3650 \
        -extfile "$work/ca.ext" -out "$work/ca.crt" 2>/dev/null

    local leaf
    for leaf in server client; do
        local common_name="localhost"
        [[ "$leaf" == client ]] && common_name="policy-sync-test-client"
        openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$common_name" \
            -keyout "$work/$leaf.key" -out "$work/$leaf.csr" 2>/dev/null
        openssl x509 -req -in "$work/$leaf.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
            -CAcreateserial -days 3650 -extfile "$work/$leaf.ext" -out "$work/$leaf.crt" 2>/dev/null
    done

    chmod 600 "$work"/*.key
    chmod 644 "$work"/*.crt
    # The client certificate goes last: make_certs checks for it to decide
    # whether a complete set exists.
    mv "$work/ca.key" "$work/ca.crt" "$work/server.key" "$work/server.crt" "$certs_dir/"
    mv "$work/client.key" "$certs_dir/"
    mv "$work/client.crt" "$certs_dir/"
    rm -rf "$work"
}

# --- Mosquitto --------------------------------------------------------------

mosquitto_ready() {
    port_open "$mqtt_port" && port_open "$mqtt_tls_port" && port_open "$mqtt_auth_port"
}

start_mosquitto() {
    local pid
    if pid="$(running_pid mosquitto)"; then
        log "mosquitto already running (pid $pid)"
        return
    fi
    command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] ||
        die "mosquitto is not installed; run scripts/install-services.sh"
    local port
    for port in "$mqtt_port" "$mqtt_tls_port" "$mqtt_auth_port"; do
        if port_open "$port"; then
            die "port $port is already in use by another process; stop it or set POLICY_SYNC_MQTT_*PORT"
        fi
    done

    mkdir -p "$mosquitto_dir/data"
    make_certs

    local password_file="$mosquitto_dir/passwd"
    if [[ ! -s "$password_file" ]]; then
        mosquitto_passwd -b -c "$password_file" "$mqtt_username" "$mqtt_password"
    fi

    # Started as root, Mosquitto 2.0 drops privileges to the `mosquitto` user
    # right after reading its configuration. It then loads the server key and
    # password file and writes the persistence database as that user.
    if [[ "$(id -u)" == 0 ]] && id mosquitto >/dev/null 2>&1; then
        chown mosquitto: "$mosquitto_dir/data" "$password_file" "$certs_dir/server.key"
    fi
    chmod 700 "$mosquitto_dir/data"
    chmod 600 "$password_file"

    render_template "$repo_dir/config/mosquitto.conf.in" "$mosquitto_dir/mosquitto.conf" \
        "MQTT_PORT=$mqtt_port" \
        "MQTT_TLS_PORT=$mqtt_tls_port" \
        "MQTT_AUTH_PORT=$mqtt_auth_port" \
        "DATA_DIR=$mosquitto_dir/data" \
        "CERTS_DIR=$certs_dir" \
        "PASSWORD_FILE=$password_file"

    local log_file="$mosquitto_dir/mosquitto.log"
    echo "=== services.sh start $(date -Is) ===" >>"$log_file"
    local binary
    binary="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    # setsid: the broker keeps running after this script and the terminal
    # that called it are gone, and Ctrl-C in that terminal does not reach it.
    # 9>&- keeps the broker from holding services.lock.
    setsid "$binary" -c "$mosquitto_dir/mosquitto.conf" </dev/null >>"$log_file" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$mosquitto_dir/mosquitto.pid"

    wait_until_ready mosquitto "$pid" "$log_file" mosquitto_ready
    log "mosquitto started (pid $pid, ports $mqtt_port plain, $mqtt_tls_port TLS, $mqtt_auth_port password)"
}

# --- Kafka ------------------------------------------------------------------

java_binary() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java || die "java is not installed; run scripts/install-services.sh"
    fi
}

write_kafka_log_config() {
    # Kafka 4.x logs through Log4j 2. Everything goes to stdout, which
    # start_kafka sends to .run/kafka/kafka.log.
    cat >"$kafka_dir/log4j2.properties" <<'EOF'
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka_request.name = kafka.request.logger
logger.kafka_request.level = WARN
logger.state_change.name = state.change.logger
logger.state_change.level = WARN
EOF
}

# Succeed once the log (from byte $1 on) records that the server started and
# the broker port accepts connections.
kafka_ready() {
    local log_offset="$1"
    tail -c +"$((log_offset + 1))" "$kafka_dir/kafka.log" | grep -q 'Kafka Server started' &&
        port_open "$kafka_port"
}

start_kafka() {
    local pid
    if pid="$(running_pid kafka)"; then
        log "kafka already running (pid $pid)"
        return
    fi
    [[ -f "$kafka_libs/kafka_2.13-$kafka_version.jar" ]] ||
        die "Kafka $kafka_version jars not found in $kafka_libs; run scripts/install-services.sh"
    local port
    for port in "$kafka_port" "$kafka_controller_port"; do
        if port_open "$port"; then
            die "port $port is already in use by another process; stop it or set POLICY_SYNC_KAFKA_*PORT"
        fi
    done

    local java
    java="$(java_binary)"
    mkdir -p "$kafka_dir/data"
    write_kafka_log_config
    render_template "$repo_dir/config/kafka-server.properties.in" "$kafka_dir/server.properties" \
        "KAFKA_PORT=$kafka_port" \
        "KAFKA_CONTROLLER_PORT=$kafka_controller_port" \
        "DATA_DIR=$kafka_dir/data"

    local java_options=(-Xmx512m -Xms128m -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true "-Dlog4j2.configurationFile=$kafka_dir/log4j2.properties"
        -cp "$kafka_libs/*")
    local log_file="$kafka_dir/kafka.log"
    touch "$log_file"

    # Format the storage once. A single controller in Kafka 4.x is formatted
    # with --standalone, which writes the initial voter set.
    if [[ ! -f "$kafka_dir/data/meta.properties" ]]; then
        local cluster_id
        cluster_id="$("$java" "${java_options[@]}" kafka.tools.StorageTool random-uuid 2>>"$log_file" | tail -n 1)"
        log "formatting Kafka storage (cluster id $cluster_id)"
        if ! "$java" "${java_options[@]}" kafka.tools.StorageTool format \
            --cluster-id "$cluster_id" --config "$kafka_dir/server.properties" --standalone \
            >>"$log_file" 2>&1; then
            show_log_tail "$log_file"
            die "formatting the Kafka storage in $kafka_dir/data failed"
        fi
    fi

    echo "=== services.sh start $(date -Is) ===" >>"$log_file"
    local log_offset
    log_offset="$(stat -c %s "$log_file")"
    setsid "$java" "${java_options[@]}" kafka.Kafka "$kafka_dir/server.properties" \
        </dev/null >>"$log_file" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$kafka_dir/kafka.pid"

    wait_until_ready kafka "$pid" "$log_file" kafka_ready "$log_offset"
    log "kafka started (pid $pid, broker 127.0.0.1:$kafka_port, controller 127.0.0.1:$kafka_controller_port)"
}

# --- stop and status --------------------------------------------------------

stop_service() {
    local name="$1" pid
    if ! pid="$(running_pid "$name")"; then
        rm -f "$run_dir/$name/$name.pid"
        log "$name is not running"
        return
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + stop_timeout))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not stop within ${stop_timeout}s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do
            sleep 0.1
        done
    fi
    rm -f "$run_dir/$name/$name.pid"
    log "$name stopped (pid $pid)"
}

# Print one status line; return non-zero when the service is down.
status_service() {
    local name="$1" pid ready
    if ! pid="$(running_pid "$name")"; then
        echo "$name: down"
        return 1
    fi
    case "$name" in
        mosquitto)
            ready=mosquitto_ready
            ;;
        kafka)
            ready="port_open $kafka_port"
            ;;
    esac
    if $ready; then
        echo "$name: up (pid $pid)"
    else
        echo "$name: down (pid $pid runs but does not accept connections)"
        return 1
    fi
}

start_service() {
    case "$1" in
        mosquitto) start_mosquitto ;;
        kafka) start_kafka ;;
    esac
}

# --- main -------------------------------------------------------------------

(($# >= 1 && $# <= 2)) || usage
action="$1"
target="${2:-all}"
case "$target" in
    mosquitto | kafka) services=("$target") ;;
    all) services=(mosquitto kafka) ;;
    *) usage ;;
esac

mkdir -p "$run_dir/mosquitto" "$run_dir/kafka"

# One services.sh at a time per checkout, so parallel test sessions do not
# start the same broker twice.
exec 9>"$run_dir/services.lock"
flock -w 300 9 || die "timed out waiting for $run_dir/services.lock (another services.sh is running)"

case "$action" in
    start)
        for service in "${services[@]}"; do
            start_service "$service"
        done
        ;;
    stop)
        for service in "${services[@]}"; do
            stop_service "$service"
        done
        ;;
    restart)
        for service in "${services[@]}"; do
            stop_service "$service"
            start_service "$service"
        done
        ;;
    status)
        exit_code=0
        for service in "${services[@]}"; do
            status_service "$service" || exit_code=1
        done
        exit "$exit_code"
        ;;
    *)
        usage
        ;;
esac
