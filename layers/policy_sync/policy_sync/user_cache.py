"""A bounded, time-limited cache of ilert user ids by email address."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_SIZE = 1024
DEFAULT_TTL_S = 300.0


class UserCache:
    """Least-recently-used map from email to user id whose entries expire after `ttl_s`.

    Only user ids are cached. Policies never are, because the PUT must start
    from the level as it is now.
    """

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_SIZE,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_size < 1:
            raise ValueError(f"user cache max_size must be at least 1, got {max_size}")
        self._max_size = max_size
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, email: str) -> int | None:
        """Return the cached user id for `email`, or None when absent or expired."""
        with self._lock:
            entry = self._entries.get(email)
            if entry is None:
                return None
            user_id, expires_at = entry
            if self._clock() >= expires_at:
                del self._entries[email]
                return None
            self._entries.move_to_end(email)
            return user_id

    def put(self, email: str, user_id: int) -> None:
        """Store `user_id` for `email`, evicting the least recently used entry when full."""
        with self._lock:
            self._entries[email] = (user_id, self._clock() + self._ttl_s)
            self._entries.move_to_end(email)
            while len(self._entries) > self._max_size:
                self._entries.popitem(last=False)

    def invalidate(self, email: str) -> None:
        """Drop the entry for `email`, if any."""
        with self._lock:
            self._entries.pop(email, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
