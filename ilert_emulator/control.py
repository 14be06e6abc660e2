"""Control routes under ``/_emulator/``, for tests and demos; they need no API key.

| request | effect |
| --- | --- |
| ``GET /_emulator/health`` | ``{"status": "ok"}`` |
| ``GET /_emulator/journal`` | list of journal entries (see ``ilert_emulator.journal``) |
| ``DELETE /_emulator/journal`` | clear the journal |
| ``GET /_emulator/faults`` | list of fault rules with ``remaining`` and ``fired`` counts |
| ``POST /_emulator/faults`` | add a fault rule (see ``ilert_emulator.faults``); 201 with the rule |
| ``DELETE /_emulator/faults`` | remove all fault rules |
| ``PUT /_emulator/api-key`` | ``{"api_key": "new"}`` changes the accepted key |
| ``GET /_emulator/state`` | ``{"users": [...], "policies": [...]}`` |
| ``POST /_emulator/seed`` | replace the state with a new seed, clear journal and faults |

A new seed without ``api_key`` keeps the key in use. Control requests are
not journaled and no fault applies to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ilert_emulator.faults import FaultSet
from ilert_emulator.journal import Journal
from ilert_emulator.responses import Response, error_response
from ilert_emulator.state import EmulatorState, SeedError


@dataclass
class Emulator:
    """Everything the routes work on: state, journal and fault rules."""

    state: EmulatorState
    journal: Journal
    faults: FaultSet


def _health(emulator: Emulator, body: Any) -> Response:
    return Response(200, {"status": "ok"})


def _get_journal(emulator: Emulator, body: Any) -> Response:
    return Response(200, emulator.journal.entries())


def _clear_journal(emulator: Emulator, body: Any) -> Response:
    return Response(200, {"removed": emulator.journal.clear()})


def _get_faults(emulator: Emulator, body: Any) -> Response:
    return Response(200, emulator.faults.describe())


def _add_fault(emulator: Emulator, body: Any) -> Response:
    try:
        return Response(201, emulator.faults.add(body))
    except ValueError as error:
        return error_response(400, f"invalid fault rule: {error}")


def _clear_faults(emulator: Emulator, body: Any) -> Response:
    return Response(200, {"removed": emulator.faults.clear()})


def _set_api_key(emulator: Emulator, body: Any) -> Response:
    key = body.get("api_key") if isinstance(body, dict) else None
    try:
        emulator.state.set_api_key(key)
    except ValueError as error:
        return error_response(400, f'request body must be {{"api_key": "..."}}: {error}')
    return Response(200, {"status": "ok"})


def _get_state(emulator: Emulator, body: Any) -> Response:
    return Response(200, emulator.state.snapshot())


def _load_seed(emulator: Emulator, body: Any) -> Response:
    try:
        emulator.state.replace(body)
    except SeedError as error:
        return error_response(400, f"invalid seed, state kept: {error}")
    emulator.journal.clear()
    emulator.faults.clear()
    return Response(200, {"status": "ok"})


_ROUTES = {
    "/_emulator/health": {"GET": _health},
    "/_emulator/journal": {"GET": _get_journal, "DELETE": _clear_journal},
    "/_emulator/faults": {"GET": _get_faults, "POST": _add_fault, "DELETE": _clear_faults},
    "/_emulator/api-key": {"PUT": _set_api_key},
    "/_emulator/state": {"GET": _get_state},
    "/_emulator/seed": {"POST": _load_seed},
}


def handle_control(emulator: Emulator, method: str, path: str, body: Any) -> Response:
    """Run the control route for ``method`` and ``path``; 404 or 405 when there is none."""
    methods = _ROUTES.get(path.rstrip("/"))
    if methods is None:
        return error_response(404, f"no control route {path}; known routes are {sorted(_ROUTES)}")
    route = methods.get(method)
    if route is None:
        response = error_response(405, f"{method} is not allowed on {path}")
        response.headers["Allow"] = ", ".join(sorted(methods))
        return response
    return route(emulator, body)
