"""Journal of the ``/api/`` requests the emulator received, for tests to read.

Each entry is a JSON object::

    {"seq": 1, "timestamp": 1764871200.123, "method": "PUT",
     "path": "/api/escalation-policies/10/levels/1", "query": {},
     "headers": {"Accept": "application/json", "User-Agent": "...", "Content-Type": "application/json"},
     "authorization_ok": true, "body": {...}, "status": 200, "fault": null}

- ``seq`` counts from 1 in arrival order and is not reset by ``clear``.
- ``timestamp`` is the arrival time in seconds since the epoch.
- ``query`` maps each parameter to its value; when a parameter repeats, the
  last value wins.
- ``headers`` has the three headers above, null when the request lacked one.
  The Authorization header is never stored, only whether it carried the
  accepted key (``authorization_ok``).
- ``body`` is the parsed JSON body, or null when the body is empty or not JSON.
- ``status`` is set before the response is sent, so a client that got its
  response finds it filled in. It is null while the request is in progress and
  0 for a connection the emulator closed without a response.
- ``fault`` describes the injected fault that applied, or null.

NOTE: the journal is kept in memory without a size limit, so a long
benchmark should clear it from time to time.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any


class Journal:
    """Thread-safe, ordered list of request entries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._seq = itertools.count(1)

    def record(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str | None],
        authorization_ok: bool,
        body: Any,
    ) -> dict[str, Any]:
        """Append an entry without status and return it for ``finish``."""
        with self._lock:
            entry = {
                "seq": next(self._seq),
                "timestamp": time.time(),
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "authorization_ok": authorization_ok,
                "body": body,
                "status": None,
                "fault": None,
            }
            self._entries.append(entry)
            return entry

    def finish(self, entry: dict[str, Any], status: int, fault: dict[str, Any] | None = None) -> None:
        """Store the response status (0 for a dropped connection) and the fault that applied."""
        with self._lock:
            entry["status"] = status
            entry["fault"] = fault

    def entries(self) -> list[dict[str, Any]]:
        """Return shallow copies of all entries; their bodies are never changed after ``record``."""
        with self._lock:
            return [dict(entry) for entry in self._entries]

    def clear(self) -> int:
        """Remove all entries and return how many there were."""
        with self._lock:
            removed = len(self._entries)
            self._entries = []
            return removed
