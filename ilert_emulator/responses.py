"""The response value that the API and control routes return to the HTTP server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass
class Response:
    """An HTTP response: status, JSON-ready payload (or raw text) and extra headers."""

    status: int
    payload: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        """Return the body bytes and their Content-Type."""
        if self.text is not None:
            return self.text.encode("utf-8"), "text/plain; charset=utf-8"
        return json.dumps(self.payload).encode("utf-8"), "application/json"


def error_code(status: int) -> str:
    """Return the upper-case error code for a status, such as NOT_FOUND for 404."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "ERROR"
    return phrase.upper().replace(" ", "_").replace("-", "_")


def error_response(status: int, message: str, code: str | None = None) -> Response:
    """Build an ilert-style JSON error response."""
    return Response(status, {"status": status, "code": code or error_code(status), "message": message})
