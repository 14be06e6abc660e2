"""Decode the event and buffer-message shapes into raw payload bytes plus coordinates.

Shapes:
- the MQTT event the IoT rule sends, which is also the project's buffer
  envelope: `{"payload_b64", "topic", "received_at_ms"}`, with `"source":
  "kafka"`, `"partition"` and `"offset"` when it came from Kafka, and an
  optional integer `"sequence"` that orders messages received in the same
  millisecond (local_runner's buffer row id);
- Lambda's on-failure destination record for an asynchronous invoke, whose
  `requestPayload` is the original MQTT event;
- the IoT rule error-action record, whose `base64OriginalPayload` is the
  original payload;
- the MSK on-failure destination record, which names the offsets of a batch
  (`KafkaBatchInfo`) but does not contain the records.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from policy_sync import outcomes
from policy_sync.outcomes import Outcome

COORDINATE_FIELDS = ("topic", "partition", "offset", "source", "sequence")


@dataclass(frozen=True)
class DecodedMessage:
    """A message ready for the pipeline: raw payload, first receive time, and where it came from."""

    payload: bytes | None
    received_at_ms: int
    coordinates: dict[str, Any] = field(default_factory=dict)

    @property
    def sequence(self) -> int:
        """Return the tiebreaker for equal receive times: `sequence`, else a Kafka offset, else 0."""
        for name in ("sequence", "offset"):
            value = self.coordinates.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                if name == "sequence" or self.coordinates.get("source") == "kafka":
                    return value
        return 0


def build_envelope(payload: bytes, received_at_ms: int, topic: str, **coordinates: Any) -> dict[str, Any]:
    """Build the envelope (the MQTT handler's event) for a payload."""
    return {
        "payload_b64": base64.b64encode(payload).decode("ascii"),
        "topic": topic,
        "received_at_ms": received_at_ms,
        **coordinates,
    }


def decode_envelope(event: Any, fallback_received_at_ms: int | None = None) -> DecodedMessage | Outcome:
    """Decode an MQTT event or envelope; return a *rejected* `bad_event` outcome when it is malformed."""
    if not isinstance(event, dict):
        return outcomes.rejected(outcomes.BAD_EVENT, f"the event is a {type(event).__name__}, not an object")
    if "payload_b64" not in event:
        return outcomes.rejected(outcomes.BAD_EVENT, "the event has no payload_b64 field")

    encoded = event["payload_b64"]
    if encoded is None:
        payload = None
    elif isinstance(encoded, str):
        payload = _decode_base64(encoded)
        if payload is None:
            return outcomes.rejected(outcomes.BAD_EVENT, "payload_b64 is not valid base64")
    else:
        return outcomes.rejected(outcomes.BAD_EVENT, "payload_b64 is not a string")

    received_at_ms = _as_epoch_ms(event.get("received_at_ms"))
    if received_at_ms is None:
        if fallback_received_at_ms is None:
            return outcomes.rejected(outcomes.BAD_EVENT, "received_at_ms is missing or not an integer")
        received_at_ms = fallback_received_at_ms

    coordinates = {name: event[name] for name in COORDINATE_FIELDS if name in event}
    return DecodedMessage(payload, received_at_ms, coordinates)


def decode_buffer_body(body: str, sent_at_ms: int) -> DecodedMessage | Outcome:
    """Decode an SQS buffer message body of any of the accepted shapes.

    `sent_at_ms` (the SQS SentTimestamp) replaces the receive time when the
    shape has none, as with the IoT error-action record.
    """
    try:
        message = json.loads(body)
    except ValueError:
        return outcomes.rejected(outcomes.BAD_EVENT, "the buffer message body is not JSON")
    if not isinstance(message, dict):
        return outcomes.rejected(outcomes.BAD_EVENT, "the buffer message body is not a JSON object")

    if "payload_b64" in message:
        return decode_envelope(message, fallback_received_at_ms=sent_at_ms)
    if isinstance(message.get("requestPayload"), dict):
        return decode_envelope(message["requestPayload"], fallback_received_at_ms=sent_at_ms)
    if "base64OriginalPayload" in message:
        return _decode_iot_error_action(message, sent_at_ms)
    if "KafkaBatchInfo" in message:
        info = json.dumps(message["KafkaBatchInfo"], sort_keys=True)[:500]
        return outcomes.rejected(
            outcomes.BAD_EVENT,
            f"an MSK on-failure record names a failed batch but does not contain it; replay it from Kafka: {info}",
        )
    return outcomes.rejected(outcomes.BAD_EVENT, "the buffer message matches none of the accepted shapes")


def _decode_iot_error_action(message: dict[str, Any], sent_at_ms: int) -> DecodedMessage | Outcome:
    encoded = message["base64OriginalPayload"]
    payload = _decode_base64(encoded) if isinstance(encoded, str) else None
    if payload is None:
        return outcomes.rejected(outcomes.BAD_EVENT, "base64OriginalPayload is not valid base64")
    coordinates = {"source": "mqtt"}
    if isinstance(message.get("topic"), str):
        coordinates["topic"] = message["topic"]
    return DecodedMessage(payload, sent_at_ms, coordinates)


def _decode_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _as_epoch_ms(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
