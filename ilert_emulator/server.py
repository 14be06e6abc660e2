"""HTTP server of the ilert API emulator, on the standard library.

It serves, with ilert's JSON shapes and a JSON error body
``{"status": 404, "code": "NOT_FOUND", "message": "..."}``:

- ``POST /api/users/search-email`` with ``{"email": E}``: the user, matched
  case-insensitively; 404 when unknown; 400 when the body is not a JSON
  object with a string email.
- ``GET /api/escalation-policies/resolve?routing-key=K``: the policy; 404
  when unknown; 400 without the parameter.
- ``GET /api/escalation-policies/{id}``: the policy; 404 when unknown.
- ``PUT /api/escalation-policies/{id}/levels/{N}`` with one escalation rule:
  replaces rule N (0-based) and returns the stored rule. It returns 404 for
  an unknown policy. It returns 400 when level N does not exist (levels are
  never created), when the body is not a JSON object, or when the rule
  references an unknown user id.

Every ``/api/`` call needs ``Authorization: Bearer <api key>`` and gets 401
otherwise. Injected faults (``ilert_emulator.faults``) apply before the key
is checked. The control routes are described in ``ilert_emulator.control``
and the seed format in ``ilert_emulator.state``.

Each connection gets its own thread, and HTTP/1.1 keep-alive is supported.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ilert_emulator.api import INVALID_BODY, NO_BODY, handle_api
from ilert_emulator.control import Emulator, handle_control
from ilert_emulator.faults import FaultEffect, FaultSet
from ilert_emulator.journal import Journal
from ilert_emulator.responses import Response, error_response
from ilert_emulator.state import EmulatorState, read_seed

logger = logging.getLogger("ilert_emulator")

MAX_BODY_BYTES = 1024 * 1024
IDLE_CONNECTION_TIMEOUT_S = 60
LISTEN_BACKLOG = 128
JOURNALED_HEADERS = ("Accept", "User-Agent", "Content-Type")


class _BodyError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.payload)
        self.response = response


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return NO_BODY
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return INVALID_BODY


def _journal_body(body: Any) -> Any:
    return None if body is NO_BODY or body is INVALID_BODY else body


def _fault_response(effect: FaultEffect) -> Response:
    if effect.body is not None:
        response = Response(effect.status, text=effect.body)
    else:
        response = error_response(effect.status, "fault injected by the ilert emulator")
    if effect.retry_after is not None:
        response.headers["Retry-After"] = str(effect.retry_after)
    return response


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ilert-emulator/0.1"
    disable_nagle_algorithm = True
    timeout = IDLE_CONNECTION_TIMEOUT_S
    server: _HttpServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            raw_body = self._read_body()
        except _BodyError as error:
            self.close_connection = True
            self._send(error.response)
            return

        body = _parse_json(raw_body)
        if path.startswith("/_emulator/"):
            self._send(handle_control(self.server.emulator, self.command, path, _journal_body(body)))
        elif path == "/api" or path.startswith("/api/"):
            self._handle_api(path, query, body)
        else:
            self._send(error_response(404, f"no route {path}; the API is under /api/"))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _BodyError(error_response(411, "chunked request bodies are not supported, send Content-Length instead"))
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
        except ValueError:
            raise _BodyError(error_response(400, f"invalid Content-Length {length_text!r}")) from None
        if length < 0:
            raise _BodyError(error_response(400, f"invalid Content-Length {length_text!r}"))
        if length > MAX_BODY_BYTES:
            raise _BodyError(error_response(413, f"request body larger than {MAX_BODY_BYTES} bytes"))
        return self.rfile.read(length) if length else b""

    def _authorization_ok(self) -> bool:
        value = self.headers.get("Authorization", "")
        scheme, _, key = value.partition(" ")
        return scheme.lower() == "bearer" and self.server.emulator.state.api_key_matches(key.strip())

    def _handle_api(self, path: str, query: dict[str, str], body: Any) -> None:
        emulator = self.server.emulator
        authorization_ok = self._authorization_ok()
        headers = {name: self.headers.get(name) for name in JOURNALED_HEADERS}
        entry = emulator.journal.record(
            self.command, path, query, headers, authorization_ok, _journal_body(body)
        )

        effect = emulator.faults.draw(self.command, path)
        fault = effect.describe() if effect is not None else None
        if effect is not None and effect.latency_ms:
            # Simulated slowness of the API, not a wait for another thread.
            time.sleep(effect.latency_ms / 1000)
        if effect is not None and effect.drop_connection:
            emulator.journal.finish(entry, 0, fault)
            self.close_connection = True
            return

        if effect is not None and effect.status is not None:
            response = _fault_response(effect)
        elif not authorization_ok:
            response = error_response(401, "missing or invalid API key in the Authorization header")
        else:
            response = handle_api(emulator.state, self.command, path, query, body)
        emulator.journal.finish(entry, response.status, fault)
        self._send(response)

    def _send(self, response: Response) -> None:
        body, content_type = response.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.emulator = emulator
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall
        # on DNS. The emulator only needs the bound address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port


class EmulatorServer:
    """The emulator on a loopback port, served from a background thread.

    ``seed`` is a dict or the path of a seed file; ``api_key`` overrides the
    seed's key. ``port=0`` picks a free port, readable from ``port`` and
    ``url`` after construction.
    """

    def __init__(
        self,
        seed: Mapping[str, Any] | str,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
    ) -> None:
        state = EmulatorState(read_seed(seed), api_key)
        self.emulator = Emulator(state=state, journal=Journal(), faults=FaultSet())
        self._httpd = _HttpServer((host, port), self.emulator)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop`` is called from another thread."""
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> EmulatorServer:
        """Serve in a daemon thread and return self."""
        self._thread = threading.Thread(target=self.serve_forever, name="ilert-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; open connections are not waited for."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
