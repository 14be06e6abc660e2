"""The six outcomes a message can end in, and the reasons that explain them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace


class OutcomeKind(str, enum.Enum):
    """The result of processing one message; every message ends in exactly one."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    FILTERED = "filtered"
    REJECTED = "rejected"
    RETRY = "retry"
    SUPERSEDED = "superseded"


# Reasons for *rejected*: the message can never succeed as sent.
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
TOO_LARGE = "too_large"
MISSING_EMAIL = "missing_email"
BAD_SHIFT = "bad_shift"
NO_ROUTING_KEY = "no_routing_key"
UNKNOWN_USER = "unknown_user"
UNKNOWN_ROUTING_KEY = "unknown_routing_key"
NO_SUCH_LEVEL = "no_such_level"
API_REJECTED = "api_rejected"
BAD_EVENT = "bad_event"
RETRIES_EXHAUSTED = "retries_exhausted"

# Reasons for *retry*: the message may succeed later.
AUTH_FAILED = "auth_failed"
API_UNAVAILABLE = "api_unavailable"
CONNECTION_FAILED = "connection_failed"
TIMED_OUT = "timed_out"
BAD_RESPONSE = "bad_response"
CLAIM_BUSY = "claim_busy"
STORE_FAILED = "store_failed"
DEAD_LETTER_FAILED = "dead_letter_failed"
OUT_OF_TIME = "out_of_time"
BLOCKED_BY_EARLIER = "blocked_by_earlier"

# Reasons for *filtered* and *superseded*.
FILTER_MISMATCH = "filter_mismatch"
NEWER_APPLIED = "newer_applied"


@dataclass(frozen=True)
class Outcome:
    """The end of one message: its kind, a machine-readable reason and a human detail.

    `retry_after_s` is the earliest next attempt the API asked for (Retry-After),
    or None. `routing_key`, `level` and `policy_id` are filled in as far as
    processing got, so that the outcome's log line can name them.
    """

    kind: OutcomeKind
    reason: str | None = None
    detail: str = ""
    retry_after_s: float | None = None
    routing_key: str | None = None
    level: int | None = None
    policy_id: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_acknowledged(self) -> bool:
        """True when the message is done with and may be acknowledged or committed."""
        return self.kind is not OutcomeKind.RETRY

    def with_context(self, **fields) -> Outcome:
        """Return a copy with routing key, level or policy id filled in."""
        return replace(self, **fields)


def rejected(reason: str, detail: str = "", **context) -> Outcome:
    """Build a *rejected* outcome."""
    return Outcome(OutcomeKind.REJECTED, reason, detail, **context)


def retry(reason: str, detail: str = "", retry_after_s: float | None = None, **context) -> Outcome:
    """Build a *retry* outcome."""
    return Outcome(OutcomeKind.RETRY, reason, detail, retry_after_s=retry_after_s, **context)


def filtered(detail: str = "", **context) -> Outcome:
    """Build a *filtered* outcome."""
    return Outcome(OutcomeKind.FILTERED, FILTER_MISMATCH, detail, **context)


class RetryLater(Exception):
    """Raised by a handler whose message must be delivered again (outcome *retry*).

    Lambda turns the raise into an asynchronous retry; local_runner withholds
    the broker acknowledgement or keeps the buffer row.
    """

    def __init__(self, outcome: Outcome):
        super().__init__(f"retry: {outcome.reason}: {outcome.detail}")
        self.outcome = outcome
