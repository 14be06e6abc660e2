"""Run the fault scenarios and print a table per scenario.

    .venv/bin/python -m tests.fault.run [--size ci|full] [--scenario NAME ...] [--mode MODE ...]

Needs Mosquitto and Kafka from scripts/services.sh; the broker_restart
scenario restarts both. Exits 1 when any case lost a level, applied an
older assignment over a newer one, left dead letters or damaged a level.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.fault.scenarios import MODES, SCENARIOS, SIZES, format_table, run_scenario


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.fault.run", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="ci", help="load and durations (default %(default)s)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="scenario to run; repeat for several (default: all, in the order api_chaos, bad_key, broker_restart, kill9)",
    )
    parser.add_argument(
        "--mode", action="append", choices=MODES, help="consumer mode to run; repeat for several (default: all)"
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        metavar="SECONDS",
        help="how long each case may take to settle after publishing (default: the size's own figure)",
    )
    parser.add_argument(
        "--show-output", action="store_true", help="print the end of the daemon's output for every failed case"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenarios = args.scenario or list(SCENARIOS)
    modes = args.mode or list(MODES)
    failed = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="policy-sync-faults-") as workdir:
        for name in scenarios:
            scenario_started = time.monotonic()
            results = run_scenario(name, args.size, Path(workdir), modes, args.settle_timeout)
            print(format_table(f"{name} ({args.size}, {time.monotonic() - scenario_started:.0f} s)", results))
            print(flush=True)
            for result in results:
                if not result.passed:
                    failed.append(f"{name}/{result.label}")
                    if args.show_output:
                        print(f"--- daemon output of {name}/{result.label} (end)\n{result.output_tail}\n")
    print(f"total {time.monotonic() - started:.0f} s; {'failed: ' + ', '.join(failed) if failed else 'all cases passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
