"""Users and escalation policies of the emulator, kept in memory.

A seed is a JSON object (a dict, or a file that contains one)::

    {
      "api_key": "demo-key",
      "users": [
        {"id": 1, "email": "oncall@example.com", "firstName": "On", "lastName": "Call"}
      ],
      "policies": [
        {"id": 10, "name": "Powerplant", "routingKey": "powerplant",
         "escalationRules": [
           {"escalationTimeout": 15, "users": [{"id": 1}], "schedules": [], "teams": [{"id": 7}]}
         ]}
      ]
    }

- ``api_key`` (string): the bearer key every ``/api/`` call must send. It may
  be left out when the key is given another way (``--api-key``).
- ``users``: objects with a unique integer ``id`` and a unique ``email``
  (compared case-insensitively). Other fields are returned as they are.
- ``policies``: objects with a unique integer ``id``, a string ``name``, an
  optional unique ``routingKey`` and a list ``escalationRules`` (level N is
  ``escalationRules[N]``). Other fields are returned as they are.
- In a rule, ``users`` lists references to seed users: objects with at least
  ``id``. They are stored as the full user objects, the way ilert returns
  them. A legacy single ``user`` reference is treated the same way.
  ``escalationTimeout``, when present, is a non-negative integer (minutes).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Mapping
from typing import Any


class SeedError(ValueError):
    """A seed that cannot be loaded, with the reason in the message."""


class ApiError(Exception):
    """An error response of the emulated API: HTTP status, ilert error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def read_seed(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Return the seed as a new dict, read from a JSON file unless it is a mapping already."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    try:
        with open(source, encoding="utf-8") as seed_file:
            seed = json.load(seed_file)
    except OSError as error:
        raise SeedError(f"cannot read seed file {os.fspath(source)}: {error}") from error
    except json.JSONDecodeError as error:
        raise SeedError(f"seed file {os.fspath(source)} is not valid JSON: {error}") from error
    if not isinstance(seed, dict):
        raise SeedError(f"seed file {os.fspath(source)} must contain a JSON object")
    return seed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_users(raw_users: Any) -> dict[int, dict[str, Any]]:
    if not isinstance(raw_users, list):
        raise SeedError("seed field 'users' must be a list")
    users: dict[int, dict[str, Any]] = {}
    emails: set[str] = set()
    for index, user in enumerate(raw_users):
        where = f"users[{index}]"
        if not isinstance(user, dict):
            raise SeedError(f"{where} must be an object")
        if not _is_int(user.get("id")):
            raise SeedError(f"{where}.id must be an integer")
        if not isinstance(user.get("email"), str) or not user["email"]:
            raise SeedError(f"{where}.email must be a non-empty string")
        if user["id"] in users:
            raise SeedError(f"{where}.id {user['id']} is used by another user")
        email_key = user["email"].lower()
        if email_key in emails:
            raise SeedError(f"{where}.email {user['email']} is used by another user")
        emails.add(email_key)
        users[user["id"]] = dict(user)
    return users


def _expand_user_reference(reference: Any, users: Mapping[int, dict], where: str) -> dict:
    if not isinstance(reference, dict) or not _is_int(reference.get("id")):
        raise ValueError(f"{where} must be an object with an integer id")
    user = users.get(reference["id"])
    if user is None:
        raise ValueError(f"{where} references unknown user id {reference['id']}")
    return dict(user)


def normalize_rule(rule: Any, users: Mapping[int, dict], where: str) -> dict[str, Any]:
    """Return a copy of an escalation rule with its user references expanded.

    Raises ValueError naming ``where`` when the rule is not an object, a user
    reference is malformed or unknown, or ``escalationTimeout`` is not a
    non-negative integer.
    """
    if not isinstance(rule, dict):
        raise ValueError(f"{where} must be a JSON object")
    normalized = copy.deepcopy(rule)

    timeout = rule.get("escalationTimeout")
    if timeout is not None and (not _is_int(timeout) or timeout < 0):
        raise ValueError(f"{where}.escalationTimeout must be a non-negative integer")

    if "users" in rule and rule["users"] is not None:
        if not isinstance(rule["users"], list):
            raise ValueError(f"{where}.users must be a list")
        normalized["users"] = [
            _expand_user_reference(reference, users, f"{where}.users[{index}]")
            for index, reference in enumerate(rule["users"])
        ]
    if rule.get("user") is not None:
        normalized["user"] = _expand_user_reference(rule["user"], users, f"{where}.user")
    return normalized


def _parse_policy(policy: Any, where: str, users: Mapping[int, dict]) -> dict[str, Any]:
    if not isinstance(policy, dict):
        raise SeedError(f"{where} must be an object")
    if not _is_int(policy.get("id")):
        raise SeedError(f"{where}.id must be an integer")
    if not isinstance(policy.get("name"), str):
        raise SeedError(f"{where}.name must be a string")
    routing_key = policy.get("routingKey")
    if routing_key is not None and not isinstance(routing_key, str):
        raise SeedError(f"{where}.routingKey must be a string")
    rules = policy.get("escalationRules")
    if not isinstance(rules, list):
        raise SeedError(f"{where}.escalationRules must be a list")

    parsed = dict(policy)
    try:
        parsed["escalationRules"] = [
            normalize_rule(rule, users, f"{where}.escalationRules[{index}]")
            for index, rule in enumerate(rules)
        ]
    except ValueError as error:
        raise SeedError(str(error)) from error
    return parsed


def _parse_policies(raw_policies: Any, users: Mapping[int, dict]) -> dict[int, dict[str, Any]]:
    if not isinstance(raw_policies, list):
        raise SeedError("seed field 'policies' must be a list")
    policies: dict[int, dict[str, Any]] = {}
    routing_keys: set[str] = set()
    for index, raw_policy in enumerate(raw_policies):
        where = f"policies[{index}]"
        policy = _parse_policy(raw_policy, where, users)
        if policy["id"] in policies:
            raise SeedError(f"{where}.id {policy['id']} is used by another policy")
        routing_key = policy.get("routingKey")
        if routing_key is not None:
            if routing_key in routing_keys:
                raise SeedError(f"{where}.routingKey {routing_key} is used by another policy")
            routing_keys.add(routing_key)
        policies[policy["id"]] = policy
    return policies


class EmulatorState:
    """Thread-safe users, policies and API key, with the operations of the emulated API.

    Every method returns copies, so callers may change what they get.
    """

    def __init__(self, seed: Mapping[str, Any], api_key: str | None = None) -> None:
        self._lock = threading.Lock()
        self._api_key = ""
        self._users: dict[int, dict[str, Any]] = {}
        self._policies: dict[int, dict[str, Any]] = {}
        self.replace(seed, api_key)

    def replace(self, seed: Mapping[str, Any], api_key: str | None = None) -> None:
        """Replace users and policies with those of ``seed``.

        The API key becomes ``api_key`` when given, else the seed's
        ``api_key``, else it stays as it was. Raises SeedError and keeps the
        old state when the seed is invalid or no key is known at all.
        """
        if not isinstance(seed, Mapping):
            raise SeedError("seed must be a JSON object")
        seed_key = seed.get("api_key")
        if seed_key is not None and (not isinstance(seed_key, str) or not seed_key):
            raise SeedError("seed field 'api_key' must be a non-empty string")
        users = _parse_users(seed.get("users", []))
        policies = _parse_policies(seed.get("policies", []), users)

        with self._lock:
            new_key = api_key or seed_key or self._api_key
            if not new_key:
                raise SeedError("no API key: set 'api_key' in the seed or pass --api-key")
            self._api_key = new_key
            self._users = users
            self._policies = policies

    def api_key_matches(self, key: str) -> bool:
        with self._lock:
            return key == self._api_key

    def set_api_key(self, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("api_key must be a non-empty string")
        with self._lock:
            self._api_key = key

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Return all users and policies, each list sorted by id."""
        with self._lock:
            return {
                "users": copy.deepcopy([self._users[key] for key in sorted(self._users)]),
                "policies": copy.deepcopy([self._policies[key] for key in sorted(self._policies)]),
            }

    def find_user_by_email(self, email: str) -> dict[str, Any]:
        email_key = email.lower()
        with self._lock:
            for user in self._users.values():
                if user["email"].lower() == email_key:
                    return copy.deepcopy(user)
        raise ApiError(404, "NOT_FOUND", f"No user found with email {email}")

    def resolve_routing_key(self, routing_key: str) -> dict[str, Any]:
        with self._lock:
            for policy in self._policies.values():
                if policy.get("routingKey") == routing_key:
                    return copy.deepcopy(policy)
        raise ApiError(404, "NOT_FOUND", f"No escalation policy found for routing key {routing_key}")

    def get_policy(self, policy_id: int) -> dict[str, Any]:
        with self._lock:
            policy = self._policies.get(policy_id)
            if policy is None:
                raise ApiError(404, "NOT_FOUND", f"Escalation policy {policy_id} not found")
            return copy.deepcopy(policy)

    def replace_level(self, policy_id: int, level: int, rule: Any) -> dict[str, Any]:
        """Replace rule ``level`` of a policy and return the stored rule; never add a level."""
        with self._lock:
            policy = self._policies.get(policy_id)
            if policy is None:
                raise ApiError(404, "NOT_FOUND", f"Escalation policy {policy_id} not found")
            rules = policy["escalationRules"]
            if not 0 <= level < len(rules):
                raise ApiError(
                    400,
                    "BAD_REQUEST",
                    f"Escalation policy {policy_id} has {len(rules)} levels; level {level} does not exist",
                )
            try:
                stored = normalize_rule(rule, self._users, "request body")
            except ValueError as error:
                raise ApiError(400, "BAD_REQUEST", str(error)) from error
            rules[level] = stored
            return copy.deepcopy(stored)
