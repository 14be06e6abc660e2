"""Calls into the Lambda handlers, with the events local_runner builds from what it consumes.

The handler modules are imported on first use, after `logs.configure_logging`
has set the POWERTOOLS_* variables they read at import time. With
--concurrency above 1 the buffer drain calls the MQTT handler from several
threads at once. Powertools Logger keeps the invocation's context keys
(request id, cold start) on a shared logger, so those keys may name another
concurrent call. Each outcome line still carries its own routing key, level
and coordinates, because the handler passes them with the line itself.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

from local_runner.context import LocalContext

# Budget of one MQTT handler call: a sync makes up to three API calls, each
# with a 3.05 s connect and 10 s read timeout, so this leaves ample margin.
MQTT_CALL_BUDGET_MS = 120_000

def build_mqtt_event(
    payload: bytes | None, topic: str | None, received_at_ms: int, sequence: int | None = None
) -> dict[str, Any]:
    """Build the event the IoT Core rule sends: payload base64, topic and receive time.

    `sequence` (the buffer row id) orders messages received in the same millisecond.
    """
    event = {
        "payload_b64": None if payload is None else base64.b64encode(payload).decode("ascii"),
        "topic": topic,
        "received_at_ms": received_at_ms,
    }
    if sequence is not None:
        event["sequence"] = sequence
    return event


def invoke_mqtt_handler(event: dict[str, Any], stop_event: threading.Event | None = None) -> dict[str, Any]:
    """Call the MQTT handler; returns its result or raises `RetryLater` for *retry*."""
    from mqtt_handler.app import lambda_handler

    return lambda_handler(event, LocalContext("mqtt-handler", MQTT_CALL_BUDGET_MS, stop_event))


def invoke_kafka_handler(event: dict[str, Any], context: LocalContext) -> dict[str, Any]:
    """Call the Kafka handler; returns `{"batchItemFailures": [...]}`."""
    from kafka_handler.app import lambda_handler

    return lambda_handler(event, context)
