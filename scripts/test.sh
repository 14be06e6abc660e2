#!/usr/bin/env bash
# The test command: installs what the tests need, starts Mosquitto and Kafka
# unless they run already, runs every test, and stops the brokers it started.
# Extra arguments go to pytest; a subset still gets the whole setup.
#
#   scripts/test.sh                 # everything CI runs
#   scripts/test.sh tests/unit -x   # a subset
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_dir"

scripts/bootstrap.sh
scripts/install-services.sh
scripts/install-sam.sh

# Start the brokers that are not running, and stop only those at the end.
started_services=()
stop_services() {
    local service
    for service in "${started_services[@]}"; do
        scripts/services.sh stop "$service" || true
    done
}
trap stop_services EXIT

for service in mosquitto kafka; do
    if ! scripts/services.sh status "$service" >/dev/null 2>&1; then
        scripts/services.sh start "$service"
        started_services+=("$service")
    fi
done

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e

# pytest exits 5 when it collected no test; that is a failure here, not a pass.
if [[ "$status" == 5 ]]; then
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
