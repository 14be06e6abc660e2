#!/usr/bin/env bash
# Show local_runner at work: one MQTT message moves level 1 of the demo
# policy `powerplant` to oncall@example.com in the ilert API emulator.
#
# Steps: create .venv if missing, and install and start Mosquitto unless it
# is already up. Start the emulator with examples/demo-seed.json and print
# level 1 of `powerplant`. Run the daemon with ilagent's MQTT command line,
# publish the shift message, wait for the level to change and print it.
# Finally stop everything this script started.
#
# The command line is the README's, with two changes: the routing key is
# `location` alone (the seed payload has no `slot`), and --shift_offset=0,
# so that shift "1" in the message is level 1, the level printed before and
# after. With ilagent's --shift_offset=-1, shift 1 would be level 0.
#
# Environment: POLICY_SYNC_MQTT_PORT (Mosquitto, default 18830), and its TLS
# and password listeners POLICY_SYNC_MQTT_TLS_PORT (18831) and
# POLICY_SYNC_MQTT_AUTH_PORT (18832), which the demo starts too;
# DEMO_HEALTH_PORT (the daemon's /ready, default 18980).
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_dir"

mqtt_port="${POLICY_SYNC_MQTT_PORT:-18830}"
health_port="${DEMO_HEALTH_PORT:-18980}"
topic="user/logins"
payload='{"location": "powerplant", "eventType": "active", "data": {"email": "oncall@example.com", "shift": "1"}}'
wait_timeout_s=30

work_dir="$(mktemp -d -t policy-sync-demo.XXXXXX)"
emulator_pid=""
daemon_pid=""
started_mosquitto=0

log() {
    echo "demo: $*" >&2
}

cleanup() {
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" && wait "$daemon_pid" || true
    fi
    if [[ -n "$emulator_pid" ]] && kill -0 "$emulator_pid" 2>/dev/null; then
        kill -TERM "$emulator_pid" && wait "$emulator_pid" || true
    fi
    if [[ "$started_mosquitto" == 1 ]]; then
        scripts/services.sh stop mosquitto || true
    fi
    rm -rf "$work_dir"
}
trap cleanup EXIT

fail() {
    log "$*"
    for file in "$work_dir"/*.log; do
        [[ -f "$file" ]] && { echo "--- $file" >&2; tail -n 40 "$file" >&2; }
    done
    exit 1
}

# 1. Python environment.
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv and installing the project"
    scripts/bootstrap.sh
fi
python=.venv/bin/python

# 2. Mosquitto.
if ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]] \
    || ! command -v mosquitto_passwd >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    log "installing Mosquitto (scripts/install-services.sh mosquitto)"
    scripts/install-services.sh mosquitto
fi
if ! scripts/services.sh status mosquitto >/dev/null 2>&1; then
    log "starting Mosquitto on 127.0.0.1:$mqtt_port"
    scripts/services.sh start mosquitto
    started_mosquitto=1
fi

# 3. The ilert API emulator on a free port.
"$python" -m ilert_emulator --port 0 --seed examples/demo-seed.json >"$work_dir/emulator.out" 2>"$work_dir/emulator.log" &
emulator_pid=$!
emulator_url=""
for _ in $(seq 1 150); do
    emulator_url="$(sed -n 's/.*ilert emulator listening on \(http[^ ]*\).*/\1/p' "$work_dir/emulator.out" | head -n 1)"
    [[ -n "$emulator_url" ]] && break
    kill -0 "$emulator_pid" 2>/dev/null || fail "the emulator exited"
    sleep 0.1
done
[[ -n "$emulator_url" ]] || fail "the emulator did not start"
log "ilert API emulator at $emulator_url"

# Print level 1 of `powerplant` as the emulator stores it: escalation timeout and user emails.
show_level() {
    "$python" - "$emulator_url" <<'EOF'
import json, sys, urllib.request
state = json.load(urllib.request.urlopen(f"{sys.argv[1]}/_emulator/state", timeout=5))
policy = next(p for p in state["policies"] if p["routingKey"] == "powerplant")
rule = policy["escalationRules"][1]
emails = ", ".join(user.get("email", f"user {user['id']}") for user in rule["users"])
print(f"level 1 of powerplant: {emails} (escalation timeout {rule['escalationTimeout']} min)")
EOF
}

before="$(show_level)"
echo "before: $before"

# 4. The daemon, with ilagent's MQTT command line.
ILERT_API_KEY=demo-key "$python" -m local_runner daemon -v -m 127.0.0.1 -q "$mqtt_port" -n ilagent-demo \
    --policy_topic "$topic" --policy_routing_keys 'location' \
    --map_key_email 'data.email' --map_key_shift 'data.shift' --shift_offset=0 \
    --filter_key 'eventType' --filter_val 'active' --mqtt_qos 1 --mqtt_buffer \
    --ilert_url "$emulator_url" -f "$work_dir/ilagent.db3" -p "$health_port" \
    >"$work_dir/daemon.log" 2>&1 &
daemon_pid=$!

ready=0
for _ in $(seq 1 $((wait_timeout_s * 10))); do
    kill -0 "$daemon_pid" 2>/dev/null || fail "the daemon exited"
    if "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "http://127.0.0.1:$health_port/ready" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
[[ "$ready" == 1 ]] || fail "the daemon was not ready within $wait_timeout_s s"
log "daemon ready (pid $daemon_pid); publishing to $topic: $payload"

# 5. Publish the shift message with QoS 1 and wait for the broker's acknowledgement.
"$python" - "$topic" "$payload" "$mqtt_port" <<'EOF'
import sys
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="policy-sync-demo-publisher")
client.connect("127.0.0.1", int(sys.argv[3]))
client.loop_start()
client.publish(sys.argv[1], sys.argv[2], qos=1).wait_for_publish(timeout=10)
client.disconnect()
client.loop_stop()
EOF

# 6. Wait for the level to change.
after="$before"
for _ in $(seq 1 $((wait_timeout_s * 10))); do
    after="$(show_level)"
    [[ "$after" != "$before" ]] && break
    sleep 0.1
done
[[ "$after" != "$before" ]] || fail "level 1 did not change within $wait_timeout_s s"
echo "after:  $after"
