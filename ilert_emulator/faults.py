"""Fault rules that tests add at run time to make ``/api/`` calls fail or slow down.

A rule is a JSON object with these fields, all optional but at least one
effect (``status``, ``latency_ms`` or ``drop_connection``) required:

- ``status`` (200..599): respond with this status instead of handling the call,
  with an ilert-style JSON error body, or with ``body`` (a string, sent as
  ``text/plain``) when given.
- ``retry_after`` (non-negative integer, seconds): add a Retry-After header;
  needs ``status``.
- ``latency_ms`` (non-negative number): wait this long before responding.
- ``drop_connection`` (true): close the connection without any response;
  cannot be combined with ``status``.
- ``count`` (positive integer): the rule fires this many times, then stays
  listed with ``remaining`` 0. Without it the rule never runs out.
- ``ratio`` (0 < ratio <= 1, default 1): the share of matching calls the rule
  fires on, drawn at random; ``seed`` (integer) makes the draws reproducible.
- ``method`` and ``path_prefix``: fire only on calls with this HTTP method
  and a path that starts with this prefix.

For each call the rules are tried in the order they were added. Every rule
that fires adds its latency. The first firing rule with a status or a dropped
connection decides the response, and later rules with a status or a dropped
connection are then not tried, so they keep their count and random sequence.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

_RULE_FIELDS = {
    "status",
    "body",
    "retry_after",
    "latency_ms",
    "drop_connection",
    "count",
    "ratio",
    "seed",
    "method",
    "path_prefix",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class FaultRule:
    """One injected fault with its filters and remaining count."""

    rule_id: int
    status: int | None = None
    body: str | None = None
    retry_after: int | None = None
    latency_ms: float = 0.0
    drop_connection: bool = False
    remaining: int | None = None
    ratio: float = 1.0
    seed: int | None = None
    method: str | None = None
    path_prefix: str | None = None
    fired: int = 0
    random_source: random.Random = field(default_factory=random.Random, repr=False)

    @property
    def decides_response(self) -> bool:
        return self.status is not None or self.drop_connection

    def matches(self, method: str, path: str) -> bool:
        if self.remaining == 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def draw(self) -> bool:
        """Decide whether the rule fires on a matching call, and count it if so."""
        if self.ratio < 1.0 and self.random_source.random() >= self.ratio:
            return False
        self.fired += 1
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.rule_id,
            "status": self.status,
            "body": self.body,
            "retry_after": self.retry_after,
            "latency_ms": self.latency_ms,
            "drop_connection": self.drop_connection,
            "remaining": self.remaining,
            "ratio": self.ratio,
            "seed": self.seed,
            "method": self.method,
            "path_prefix": self.path_prefix,
            "fired": self.fired,
        }


def parse_rule(rule_id: int, request: Any) -> FaultRule:
    """Build a FaultRule from a request body; raise ValueError naming the invalid field."""
    if not isinstance(request, dict):
        raise ValueError("fault rule must be a JSON object")
    unknown = sorted(set(request) - _RULE_FIELDS)
    if unknown:
        raise ValueError(f"unknown fault rule fields {unknown}; known fields are {sorted(_RULE_FIELDS)}")

    rule = FaultRule(rule_id=rule_id)
    _parse_effects(rule, request)
    _parse_selection(rule, request)
    return rule


def _parse_effects(rule: FaultRule, request: dict[str, Any]) -> None:
    status = request.get("status")
    if status is not None and (not _is_int(status) or not 200 <= status <= 599):
        raise ValueError("status must be an integer from 200 to 599")
    rule.status = status

    body = request.get("body")
    if body is not None and (not isinstance(body, str) or status is None):
        raise ValueError("body must be a string and needs status")
    rule.body = body

    retry_after = request.get("retry_after")
    if retry_after is not None and (not _is_int(retry_after) or retry_after < 0 or status is None):
        raise ValueError("retry_after must be a non-negative integer (seconds) and needs status")
    rule.retry_after = retry_after

    latency_ms = request.get("latency_ms", 0)
    if not _is_number(latency_ms) or latency_ms < 0:
        raise ValueError("latency_ms must be a non-negative number")
    rule.latency_ms = float(latency_ms)

    drop_connection = request.get("drop_connection", False)
    if not isinstance(drop_connection, bool):
        raise ValueError("drop_connection must be true or false")
    if drop_connection and status is not None:
        raise ValueError("drop_connection cannot be combined with status")
    rule.drop_connection = drop_connection

    if status is None and not drop_connection and "latency_ms" not in request:
        raise ValueError("a fault rule needs status, latency_ms or drop_connection")


def _parse_selection(rule: FaultRule, request: dict[str, Any]) -> None:
    count = request.get("count")
    if count is not None and (not _is_int(count) or count < 1):
        raise ValueError("count must be a positive integer")
    rule.remaining = count

    ratio = request.get("ratio", 1.0)
    if not _is_number(ratio) or not 0 < ratio <= 1:
        raise ValueError("ratio must be a number greater than 0 and at most 1")
    rule.ratio = float(ratio)

    seed = request.get("seed")
    if seed is not None and not _is_int(seed):
        raise ValueError("seed must be an integer")
    rule.seed = seed
    rule.random_source = random.Random(seed)

    method = request.get("method")
    if method is not None and (not isinstance(method, str) or not method):
        raise ValueError("method must be a non-empty string such as PUT")
    rule.method = method.upper() if method else None

    path_prefix = request.get("path_prefix")
    if path_prefix is not None and (not isinstance(path_prefix, str) or not path_prefix.startswith("/")):
        raise ValueError("path_prefix must be a string starting with /")
    rule.path_prefix = path_prefix


@dataclass
class FaultEffect:
    """Combined effect of the fault rules that fired on one call."""

    status: int | None = None
    body: str | None = None
    retry_after: int | None = None
    latency_ms: float = 0.0
    drop_connection: bool = False
    rule_ids: list[int] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "rule_ids": self.rule_ids,
            "status": self.status,
            "retry_after": self.retry_after,
            "latency_ms": self.latency_ms,
            "drop_connection": self.drop_connection,
        }


class FaultSet:
    """Thread-safe list of fault rules."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, request: Any) -> dict[str, Any]:
        """Add a rule from a request body and return its description; raise ValueError if invalid."""
        with self._lock:
            rule = parse_rule(self._next_id, request)
            self._next_id += 1
            self._rules.append(rule)
            return rule.describe()

    def clear(self) -> int:
        with self._lock:
            removed = len(self._rules)
            self._rules = []
            return removed

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.describe() for rule in self._rules]

    def draw(self, method: str, path: str) -> FaultEffect | None:
        """Return the combined effect of the rules that fire on this call, or None."""
        effect = FaultEffect()
        with self._lock:
            for rule in self._rules:
                if rule.decides_response and (effect.status is not None or effect.drop_connection):
                    continue
                if not rule.matches(method, path) or not rule.draw():
                    continue
                effect.rule_ids.append(rule.rule_id)
                effect.latency_ms += rule.latency_ms
                if rule.decides_response:
                    effect.status = rule.status
                    effect.body = rule.body
                    effect.retry_after = rule.retry_after
                    effect.drop_connection = rule.drop_connection
        return effect if effect.rule_ids else None
