"""The user-id cache (size bound, time-to-live) and the retry backoff curve."""

import pytest

from policy_sync.backoff import BACKOFF_MAX_S, backoff_delay_s
from policy_sync.user_cache import UserCache


class FakeClock:
    """A settable monotonic clock in seconds."""

    def __init__(self):
        self.now_s = 0.0

    def __call__(self):
        return self.now_s


def test_cache_returns_stored_id_until_ttl():
    clock = FakeClock()
    cache = UserCache(max_size=4, ttl_s=10.0, clock=clock)
    cache.put("a@example.com", 1)

    clock.now_s = 9.9
    assert cache.get("a@example.com") == 1
    clock.now_s = 10.0
    assert cache.get("a@example.com") is None
    assert len(cache) == 0


def test_cache_evicts_least_recently_used():
    cache = UserCache(max_size=2, ttl_s=100.0, clock=FakeClock())
    cache.put("a@example.com", 1)
    cache.put("b@example.com", 2)
    assert cache.get("a@example.com") == 1

    cache.put("c@example.com", 3)

    assert cache.get("b@example.com") is None
    assert cache.get("a@example.com") == 1
    assert cache.get("c@example.com") == 3


def test_cache_invalidate_drops_entry():
    cache = UserCache(clock=FakeClock())
    cache.put("a@example.com", 1)

    cache.invalidate("a@example.com")

    assert cache.get("a@example.com") is None


def test_cache_keeps_email_case_distinct():
    cache = UserCache(clock=FakeClock())
    cache.put("A@example.com", 1)

    assert cache.get("a@example.com") is None


def test_cache_rejects_zero_size():
    with pytest.raises(ValueError, match="max_size"):
        UserCache(max_size=0)


@pytest.mark.parametrize(
    ("failed_attempts", "expected_s"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (8, 60.0), (1000, 60.0)],
)
def test_backoff_doubles_to_cap(failed_attempts, expected_s):
    assert backoff_delay_s(failed_attempts) == expected_s


def test_backoff_retry_after_lengthens_never_shortens():
    assert backoff_delay_s(1, retry_after_s=5.0) == 5.0
    assert backoff_delay_s(5, retry_after_s=1.0) == 16.0
    assert backoff_delay_s(10, retry_after_s=120.0) == 120.0
    assert BACKOFF_MAX_S == 60.0
