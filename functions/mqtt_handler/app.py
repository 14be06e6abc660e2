"""Lambda handler for the IoT Core rule on the policy topic (asynchronous invoke).

The rule's SQL hands over `{"payload_b64", "topic", "received_at_ms"}`. A
*retry* raises, so Lambda's asynchronous retries apply and the on-failure
destination (the SQS buffer) takes the event after them. local_runner calls
this same function with events of the same shape.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

from policy_sync import runtime as runtime_module
from policy_sync.envelope import decode_envelope
from policy_sync.outcomes import Outcome, RetryLater
from policy_sync.pipeline import count_outcome, log_outcome, process_payload, store_dead_letter

SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME", "policy-sync")
logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "PolicySync"), service=SERVICE_NAME)
tracer = Tracer(service=SERVICE_NAME)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context) -> dict:
    """Process one MQTT message; return its outcome, or raise RetryLater for *retry*."""
    runtime = runtime_module.current()
    now_ms = runtime.clock_ms()

    decoded = decode_envelope(event, fallback_received_at_ms=now_ms)
    if isinstance(decoded, Outcome):
        coordinates = {"topic": event.get("topic")} if isinstance(event, dict) else {}
        outcome = store_dead_letter(None, now_ms, {**coordinates, "event": _event_excerpt(event)}, decoded, runtime)
    else:
        coordinates = {"source": "mqtt", **decoded.coordinates}
        outcome = process_payload(decoded.payload, decoded.received_at_ms, coordinates, runtime, decoded.sequence)

    log_outcome(logger, outcome, coordinates)
    count_outcome(metrics, outcome.kind.value)
    if not outcome.is_acknowledged:
        raise RetryLater(outcome)
    return {"outcome": outcome.kind.value, "reason": outcome.reason}


def _event_excerpt(event: object) -> str:
    """Return the start of a malformed event so the dead letter shows what arrived."""
    return repr(event)[:1000]
