"""The `-p PORT` endpoints: `/health` (the process runs) and `/ready` (brokers connected and subscribed)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

HEALTH_HOST = "127.0.0.1"


class Readiness:
    """Named readiness flags, one per consumer (e.g. `mqtt`, `kafka`); ready when all are set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, bool] = {}

    def register(self, name: str) -> None:
        """Add a consumer that starts as not ready."""
        with self._lock:
            self._flags[name] = False

    def set(self, name: str, ready: bool) -> None:
        """Mark one consumer ready or not ready."""
        with self._lock:
            changed = self._flags.get(name) != ready
            self._flags[name] = ready
        if changed:
            logger.info("readiness changed", extra={"consumer": name, "ready": ready})

    def snapshot(self) -> dict[str, bool]:
        """Return a copy of every consumer's flag."""
        with self._lock:
            return dict(self._flags)

    def is_ready(self) -> bool:
        """Return True when at least one consumer is registered and all are ready."""
        flags = self.snapshot()
        return bool(flags) and all(flags.values())


def build_handler(readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    """Return a request handler class that serves `/health` and `/ready` for `readiness`."""

    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/ready":
                flags = readiness.snapshot()
                ready = readiness.is_ready()
                self._send(200 if ready else 503, {"ready": ready, "consumers": flags})
            else:
                self._send(404, {"error": f"not found: {self.path}; use /health or /ready"})

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature fixed by the base class
            logger.debug("health request: " + format, *args)

    return HealthHandler


class HealthServer:
    """The HTTP server on 127.0.0.1:`port`, served from a daemon thread."""

    def __init__(self, port: int, readiness: Readiness):
        self._server = ThreadingHTTPServer((HEALTH_HOST, port), build_handler(readiness))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on (useful with port 0)."""
        return self._server.server_address[1]

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()
        logger.info("health endpoints listening", extra={"host": HEALTH_HOST, "port": self.port})

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
