"""The "last applied" store that keeps older assignments from overwriting newer ones.

Per routing key and level it keeps the receive time of the last assignment
that was applied (or found already in place), and a short-lived claim held
by the invocation that is working on that level right now.
"""

from __future__ import annotations

import enum
from typing import Protocol

# A claim older than this is taken to belong to a crashed invocation and may
# be taken over. It must exceed the longest time one sync can take: three
# API calls at the client's read timeout plus the Lambda timeout margin.
CLAIM_TTL_S = 120


class ClaimResult(str, enum.Enum):
    """What a claim attempt found."""

    GRANTED = "granted"
    SUPERSEDED = "superseded"
    BUSY = "busy"


class OrderingStore(Protocol):
    """Storage for per-level claims and last-applied receive times."""

    def claim(self, routing_key: str, level: int, received_at_ms: int, owner: str) -> ClaimResult:
        """Claim the level for `owner` unless a newer assignment was applied or another owner holds it.

        An assignment received at the same millisecond as the last applied one
        is granted, so that a redelivered duplicate ends as *unchanged*.
        """
        ...

    def release(self, routing_key: str, level: int, owner: str, applied_received_at_ms: int | None) -> None:
        """Drop `owner`'s claim; record `applied_received_at_ms` as last applied when not None."""
        ...
