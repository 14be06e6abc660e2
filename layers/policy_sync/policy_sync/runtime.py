"""The dependencies a handler runs with, installed once per process or container.

Lambda builds them from its environment on the first call (see
`policy_sync.aws`). local_runner installs its own (SQLite ordering store and
dead-letter table) before it calls any handler. The handler code is the same
in both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policy_sync.dead_letters import DeadLetterSink
    from policy_sync.ilert import IlertClient
    from policy_sync.ordering import OrderingStore
    from policy_sync.settings import Settings
    from policy_sync.user_cache import UserCache


def now_ms() -> int:
    """Return the wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass
class Runtime:
    """Settings and clients shared by every handler call in this process."""

    settings: Settings
    client: IlertClient
    user_cache: UserCache
    dead_letters: DeadLetterSink
    ordering: OrderingStore | None = None
    clock_ms: Callable[[], int] = field(default=now_ms)


_lock = threading.Lock()
_installed: Runtime | None = None


def install(runtime: Runtime) -> None:
    """Make `runtime` the one every later handler call uses."""
    global _installed
    with _lock:
        _installed = runtime


def reset() -> None:
    """Forget the installed runtime, so the next `current()` builds a new one."""
    global _installed
    with _lock:
        _installed = None


def current() -> Runtime:
    """Return the installed runtime, building the Lambda one from the environment if none is."""
    global _installed
    with _lock:
        if _installed is None:
            from policy_sync.aws import build_lambda_runtime

            _installed = build_lambda_runtime()
        return _installed
