"""Per-level lanes: process different routing keys of one batch in parallel, each level in order.

Records that map to the same routing key and level form one lane, processed
strictly in the order given (offset order for Kafka). A lane stops at its
first *retry*, so a later assignment never overtakes an earlier one that
must be retried. Records that map to no assignment touch no level and each
form a lane of their own. Lanes run on a bounded thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from policy_sync.mapping import Assignment, map_message
from policy_sync.outcomes import Outcome
from policy_sync.settings import Settings

Item = TypeVar("Item")

MAX_CONCURRENCY = 64


def lane_key(payload: bytes | None, settings: Settings, item_id: Hashable) -> Hashable:
    """Return the lane of a payload: its (routing key, level), or a lane of its own when it does not map."""
    if payload is not None:
        mapped = map_message(payload, settings)
        if isinstance(mapped, Assignment):
            return ("level", mapped.routing_key, mapped.level)
    return ("single", item_id)


def plan_lanes(items: Iterable[Item], key_of: Callable[[Item], Hashable]) -> list[list[Item]]:
    """Group items into lanes by key, keeping the given order inside each lane and between lane starts."""
    lanes: dict[Hashable, list[Item]] = {}
    for item in items:
        lanes.setdefault(key_of(item), []).append(item)
    return list(lanes.values())


def run_lanes(
    lanes: Sequence[Sequence[Item]],
    process: Callable[[Item], Outcome],
    concurrency: int,
    may_start: Callable[[], bool] = lambda: True,
) -> dict[int, Outcome]:
    """Process the lanes on up to `concurrency` threads; return outcomes by `id(item)`.

    An item missing from the result was not processed: its lane stopped at an
    earlier *retry*, or `may_start()` returned False (time running out).
    """
    results: dict[int, Outcome] = {}

    def run_lane(lane: Sequence[Item]) -> None:
        for item in lane:
            if not may_start():
                return
            outcome = process(item)
            results[id(item)] = outcome
            if not outcome.is_acknowledged:
                return

    workers = max(1, min(concurrency, MAX_CONCURRENCY, len(lanes) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lane") as pool:
        for future in [pool.submit(run_lane, lane) for lane in lanes]:
            future.result()
    return results
