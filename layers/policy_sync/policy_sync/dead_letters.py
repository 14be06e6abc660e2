"""Dead letters: messages that can never succeed, kept with their reason."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class DeadLetter:
    """One message given up on, with everything needed to inspect or requeue it.

    `payload` is the raw message as received (None for a Kafka tombstone).
    `coordinates` names where it came from: topic, partition and offset, or a
    queue message id. The record never contains the API key.
    """

    payload: bytes | None
    reason: str
    detail: str
    received_at_ms: int
    coordinates: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize with the envelope's field names, so a requeued dead letter is a valid envelope."""
        body = {
            "payload_b64": None if self.payload is None else base64.b64encode(self.payload).decode("ascii"),
            "received_at_ms": self.received_at_ms,
            "reason": self.reason,
            "detail": self.detail,
            **{key: value for key, value in self.coordinates.items() if key not in ("payload_b64", "received_at_ms")},
        }
        return json.dumps(body, sort_keys=True)


class DeadLetterSink(Protocol):
    """Where dead letters go: the SQS dead-letter queue or the SQLite dead-letter table."""

    def put(self, dead_letter: DeadLetter) -> None:
        """Store the dead letter durably, or raise if it could not be stored."""
        ...
