#!/usr/bin/env bash
# The test command: installs what the tests need, starts Mosquitto and Kafka,
# runs every test, and stops the brokers again. Extra arguments go to pytest.
#
#   scripts/test.sh                 # everything CI runs
#   scripts/test.sh tests/unit -x   # a subset
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_dir"

scripts/bootstrap.sh
scripts/install-services.sh
scripts/install-sam.sh

started_services=0
stop_services() {
    if [[ "$started_services" == 1 ]]; then
        scripts/services.sh stop all || true
    fi
}
trap stop_services EXIT

if ! scripts/services.sh status all >/dev/null 2>&1; then
    started_services=1
    scripts/services.sh start all
fi

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
