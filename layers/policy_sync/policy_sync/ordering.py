"""The "last applied" store that keeps older assignments from overwriting newer ones.

Per routing key and level it keeps the position of the last assignment that
was applied (or found already in place), and a short-lived claim held by the
invocation that is working on that level right now.

A position is the pair (receive time in ms, sequence). The sequence breaks
ties between assignments received in the same millisecond. It is the Kafka
offset (records of one level share a partition when keyed by routing key)
or the SQLite buffer row id, and 0 where the source has none, as for the
IoT rule.
"""

from __future__ import annotations

import enum
from typing import Protocol

# A claim older than this is taken to belong to a crashed invocation and may
# be taken over. It must exceed the longest time one sync can take: three
# API calls at the client's read timeout plus the Lambda timeout margin.
CLAIM_TTL_S = 120


class ClaimResult(str, enum.Enum):
    """The result of a claim attempt."""

    GRANTED = "granted"
    SUPERSEDED = "superseded"
    BUSY = "busy"


class OrderingStore(Protocol):
    """Storage for per-level claims and last-applied receive times."""

    def claim(self, routing_key: str, level: int, received_at_ms: int, owner: str, sequence: int = 0) -> ClaimResult:
        """Claim the level for `owner` unless a later position was applied or another owner has a live claim.

        The same position as the last applied one is granted, so that a
        redelivered duplicate ends as *unchanged*.
        """
        ...

    def release(
        self,
        routing_key: str,
        level: int,
        owner: str,
        applied_received_at_ms: int | None,
        applied_sequence: int = 0,
    ) -> None:
        """Drop `owner`'s claim; record the applied position when `applied_received_at_ms` is not None.

        The recorded position never goes down.
        """
        ...
