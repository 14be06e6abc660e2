"""Dead letters: messages that can never succeed, kept with their reason."""

from __future__ import annotations

import base64
import hashlib
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

    def to_json(self, max_bytes: int | None = None) -> str:
        """Serialize with the envelope's field names, so a requeued dead letter is a valid envelope.

        When the result would exceed `max_bytes` (a queue's message size
        limit), the payload is cut to fit and `payload_truncated`,
        `payload_size` and `payload_sha256` describe the original, so the
        record still names what was given up on.
        """
        body = self._body()
        text = json.dumps(body, sort_keys=True)
        if max_bytes is None or len(text) <= max_bytes or self.payload is None:
            return text

        body["payload_truncated"] = True
        body["payload_size"] = len(self.payload)
        body["payload_sha256"] = hashlib.sha256(self.payload).hexdigest()
        body["payload_b64"] = ""
        room_b64 = max(max_bytes - len(json.dumps(body, sort_keys=True)), 0)
        kept = self.payload[: room_b64 // 4 * 3]
        body["payload_b64"] = base64.b64encode(kept).decode("ascii")
        return json.dumps(body, sort_keys=True)

    def _body(self) -> dict:
        return {
            "payload_b64": None if self.payload is None else base64.b64encode(self.payload).decode("ascii"),
            "received_at_ms": self.received_at_ms,
            "reason": self.reason,
            "detail": self.detail,
            **{key: value for key, value in self.coordinates.items() if key not in ("payload_b64", "received_at_ms")},
        }


class DeadLetterSink(Protocol):
    """Storage for dead letters: the SQS dead-letter queue or the SQLite dead-letter table."""

    def put(self, dead_letter: DeadLetter) -> None:
        """Store the dead letter durably, or raise if it could not be stored."""
        ...
