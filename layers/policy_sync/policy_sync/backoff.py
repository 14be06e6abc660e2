"""The retry backoff curve shared by the SQS buffer and the SQLite buffer."""

from __future__ import annotations

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


def backoff_delay_s(failed_attempts: int, retry_after_s: float | None = None) -> float:
    """Return the wait before the next attempt after `failed_attempts` failures.

    The wait doubles per failure from BACKOFF_FIRST_S and is capped at
    BACKOFF_MAX_S; a Retry-After from the API can lengthen it, never shorten it.
    """
    exponent = max(failed_attempts - 1, 0)
    delay_s = BACKOFF_MAX_S if exponent >= 16 else min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**exponent)
    if retry_after_s is not None and retry_after_s > delay_s:
        return float(retry_after_s)
    return delay_s
