"""One message from raw bytes to its outcome: map, sync, dead-letter, and one log line."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from policy_sync import outcomes
from policy_sync.dead_letters import DeadLetter
from policy_sync.mapping import Assignment, map_message
from policy_sync.outcomes import Outcome, OutcomeKind
from policy_sync.sync import sync_assignment

if TYPE_CHECKING:
    from policy_sync.runtime import Runtime

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"


def process_payload(
    payload: bytes | None,
    received_at_ms: int,
    coordinates: dict[str, Any],
    runtime: Runtime,
    sequence: int = 0,
) -> Outcome:
    """Turn one raw message into its outcome; a *rejected* one is stored as a dead letter first.

    If the dead letter cannot be stored, the outcome becomes *retry*, so that
    nothing is acknowledged that is not kept somewhere. `sequence` (the Kafka
    offset or the buffer row id) breaks receive-time ties in the ordering store.
    """
    outcome = decide_outcome(payload, received_at_ms, runtime, sequence)
    if outcome.kind is OutcomeKind.REJECTED:
        outcome = store_dead_letter(payload, received_at_ms, coordinates, outcome, runtime)
    return outcome


def decide_outcome(payload: bytes | None, received_at_ms: int, runtime: Runtime, sequence: int = 0) -> Outcome:
    """Map and sync one payload, without storing anything on rejection."""
    if payload is None:
        return outcomes.rejected(outcomes.NOT_JSON, "the message has no value (a Kafka tombstone)")

    mapped = map_message(payload, runtime.settings)
    if not isinstance(mapped, Assignment):
        return mapped
    try:
        outcome = sync_assignment(mapped, runtime, received_at_ms, sequence)
    except Exception as error:
        # A defect must not lose the message: retry it, and --max_retries or
        # the queue's maxReceiveCount moves it to the dead letters in the end.
        logger.exception("unexpected error while syncing an assignment")
        outcome = outcomes.retry(
            INTERNAL_ERROR,
            f"{type(error).__name__}: {error}",
            routing_key=mapped.routing_key,
            level=mapped.level,
        )
    return outcome.with_context(extra={"email": mapped.email})


def store_dead_letter(
    payload: bytes | None,
    received_at_ms: int,
    coordinates: dict[str, Any],
    outcome: Outcome,
    runtime: Runtime,
) -> Outcome:
    """Write a rejected message to the dead-letter sink; return *retry* if that fails."""
    dead_letter = DeadLetter(
        payload=payload,
        reason=outcome.reason or "rejected",
        detail=outcome.detail,
        received_at_ms=received_at_ms,
        coordinates=dict(coordinates),
    )
    try:
        runtime.dead_letters.put(dead_letter)
    except Exception as error:
        logger.debug("dead-letter write failed", exc_info=True)
        return outcomes.retry(
            outcomes.DEAD_LETTER_FAILED,
            f"could not store the dead letter ({outcome.reason}): {type(error).__name__}: {error}",
            routing_key=outcome.routing_key,
            level=outcome.level,
            policy_id=outcome.policy_id,
        )
    return outcome


LOG_LEVELS = {
    OutcomeKind.APPLIED: logging.INFO,
    OutcomeKind.UNCHANGED: logging.INFO,
    OutcomeKind.SUPERSEDED: logging.INFO,
    OutcomeKind.FILTERED: logging.DEBUG,
    OutcomeKind.REJECTED: logging.WARNING,
    OutcomeKind.RETRY: logging.WARNING,
}


def log_outcome(log: Any, outcome: Outcome, coordinates: dict[str, Any]) -> None:
    """Log the message's outcome once, with routing key, level, policy id and coordinates.

    `log` is a `logging.Logger` or a Powertools Logger. A 401/403 retry is
    logged as an error because it usually means a bad API key. The email is
    personal data and is logged only at debug level. The level is logged as
    `escalation_level` because Powertools' Logger uses `level` for the log level.
    """
    level = LOG_LEVELS[outcome.kind]
    if outcome.reason == outcomes.AUTH_FAILED:
        level = logging.ERROR
    fields = {
        "outcome": outcome.kind.value,
        "reason": outcome.reason,
        "detail": outcome.detail,
        "routing_key": outcome.routing_key,
        "escalation_level": outcome.level,
        "policy_id": outcome.policy_id,
        **coordinates,
    }
    if outcome.retry_after_s is not None:
        fields["retry_after_s"] = outcome.retry_after_s
    # Powertools' Logger has no log(level, ...), so pick the method by name.
    log_method = getattr(log, logging.getLevelName(level).lower())
    log_method(f"message {outcome.kind.value}", extra=fields)
    email_address = outcome.extra.get("email")
    if email_address is not None:
        log.debug("assignment email", extra={"email": email_address, **coordinates})


def count_outcome(metrics: Any, outcome_kind: str, count: int = 1) -> None:
    """Add `count` to the CloudWatch metric named after the outcome, unless metrics are disabled.

    With POWERTOOLS_METRICS_DISABLED set, Powertools 3.37 never clears its
    metric set at flush, and once a metric contains 100 values it prints
    them anyway. local_runner disables metrics, so the values are not added at all.
    """
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    metrics.add_metric(name=outcome_kind, unit="Count", value=count)
