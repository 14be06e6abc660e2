"""Routes of the emulated ilert API under ``/api/``.

Authentication is checked by the server before a route runs. Each route
takes the state, the regular-expression match of its path, the query and the
parsed JSON body (``NO_BODY`` when the body was empty, ``INVALID_BODY`` when
it was not JSON) and returns a Response.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ilert_emulator.responses import Response, error_response
from ilert_emulator.state import ApiError, EmulatorState

NO_BODY = object()
INVALID_BODY = object()


def _search_email(state: EmulatorState, match: re.Match, query: dict[str, str], body: Any) -> Response:
    if not isinstance(body, dict) or not isinstance(body.get("email"), str):
        return error_response(400, 'request body must be a JSON object with a string "email"')
    return Response(200, state.find_user_by_email(body["email"]))


def _resolve_policy(state: EmulatorState, match: re.Match, query: dict[str, str], body: Any) -> Response:
    routing_key = query.get("routing-key")
    if not routing_key:
        return error_response(400, "query parameter routing-key is missing")
    return Response(200, state.resolve_routing_key(routing_key))


def _parse_policy_id(match: re.Match) -> int:
    text = match["policy_id"]
    if not text.isascii() or not text.isdigit():
        raise ApiError(404, "NOT_FOUND", f"Escalation policy {text} not found")
    return int(text)


def _get_policy(state: EmulatorState, match: re.Match, query: dict[str, str], body: Any) -> Response:
    return Response(200, state.get_policy(_parse_policy_id(match)))


def _put_level(state: EmulatorState, match: re.Match, query: dict[str, str], body: Any) -> Response:
    policy_id = _parse_policy_id(match)
    level_text = match["level"]
    try:
        level = int(level_text)
    except ValueError:
        return error_response(400, f"level {level_text} is not an integer")
    if body is NO_BODY or body is INVALID_BODY or not isinstance(body, dict):
        return error_response(400, "request body must be one escalation rule as a JSON object")
    return Response(200, state.replace_level(policy_id, level, body))


Route = Callable[[EmulatorState, re.Match, dict[str, str], Any], Response]

# Tried in order, so the fixed path "resolve" comes before the policy id pattern.
_ROUTES: list[tuple[re.Pattern[str], dict[str, Route]]] = [
    (re.compile(r"/api/users/search-email"), {"POST": _search_email}),
    (re.compile(r"/api/escalation-policies/resolve"), {"GET": _resolve_policy}),
    (re.compile(r"/api/escalation-policies/(?P<policy_id>[^/]+)"), {"GET": _get_policy}),
    (
        re.compile(r"/api/escalation-policies/(?P<policy_id>[^/]+)/levels/(?P<level>[^/]+)"),
        {"PUT": _put_level},
    ),
]


def handle_api(state: EmulatorState, method: str, path: str, query: dict[str, str], body: Any) -> Response:
    """Run the route for an authenticated ``/api/`` request; 404 or 405 when there is none."""
    for pattern, methods in _ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        route = methods.get(method)
        if route is None:
            response = error_response(405, f"{method} is not allowed on {path}")
            response.headers["Allow"] = ", ".join(sorted(methods))
            return response
        try:
            return route(state, match, query, body)
        except ApiError as error:
            return error_response(error.status, error.message, error.code)
    return error_response(404, f"no API route for {method} {path}")
