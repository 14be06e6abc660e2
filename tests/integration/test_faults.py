"""The fault scenarios of tests/fault at CI size: nothing lost, nothing applied out of order, no dead letters.

Each scenario runs the daemon in every consumer mode at once against real
brokers and the emulator. tests/fault/scenarios.py describes the cases, and
`python -m tests.fault.run --size full` runs them at full size.
"""

from __future__ import annotations

import pytest

from tests.fault.scenarios import SCENARIOS, CaseResult, format_table, run_scenario
from tests.services import require_kafka, require_mosquitto

pytestmark = pytest.mark.brokers


@pytest.fixture(autouse=True)
def brokers():
    require_mosquitto()
    require_kafka()


def failure_context(result: CaseResult, table: str) -> str:
    return f"case {result.scenario}/{result.label}\n{table}\n--- end of the daemon's output\n{result.output_tail}"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_keeps_newest_assignment(scenario, tmp_path):
    results = run_scenario(scenario, "ci", tmp_path)
    table = format_table(scenario, results)
    print(table)

    for result in results:
        context = failure_context(result, table)
        assert result.published > 0, context
        assert result.publish_errors == 0, context
        assert result.settled, context
        assert result.lost == 0, context
        assert result.older_over_newer == 0, context
        assert result.dead_letters == 0, context
        assert result.damaged == 0, context
