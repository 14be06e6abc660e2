"""Run the emulator as a subprocess from tests and benchmarks, and drive it over HTTP.

``EmulatorProcess`` starts ``python -m ilert_emulator --port 0`` and talks to
its control routes; ``make_seed`` builds a seed of any size.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 10.0
_LISTENING_LINE = re.compile(r"ilert emulator listening on (http://\S+)")


class EmulatorStartError(RuntimeError):
    """The emulator process exited or stayed silent before it was listening."""


class EmulatorProcess:
    """The emulator in its own process, as a context manager.

    ``seed`` is a dict or the path of a seed file; ``api_key`` overrides the
    seed's key. The control helpers never call ``/api/``, so they add nothing
    to the journal.
    """

    def __init__(
        self,
        seed: Mapping[str, Any] | str | os.PathLike[str],
        api_key: str | None = None,
        host: str = "127.0.0.1",
        verbose: bool = False,
    ) -> None:
        self._seed = seed
        self._api_key = api_key
        self._host = host
        self._verbose = verbose
        self._process: subprocess.Popen[str] | None = None
        self._seed_path: str | None = None
        self._stderr_file: Any = None
        self._session = requests.Session()
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> EmulatorProcess:
        """Start the process and wait until it prints its listening line."""
        seed_path = self._seed_file_path()
        command = [sys.executable, "-m", "ilert_emulator", "--port", "0", "--host", self._host, "--seed", seed_path]
        if self._api_key is not None:
            command += ["--api-key", self._api_key]
        if self._verbose:
            command.append("-v")
        self._stderr_file = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr_file, text=True, encoding="utf-8"
        )
        try:
            self.url = self._wait_for_listening_line(timeout_s)
        except EmulatorStartError:
            self.stop()
            raise
        return self

    def _seed_file_path(self) -> str:
        if not isinstance(self._seed, Mapping):
            return os.fspath(self._seed)
        handle, path = tempfile.mkstemp(prefix="ilert-emulator-seed-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as seed_file:
            json.dump(self._seed, seed_file)
        self._seed_path = path
        return path

    def _wait_for_listening_line(self, timeout_s: float) -> str:
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while True:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise EmulatorStartError(f"emulator did not report listening within {timeout_s} s")
                if not selector.select(remaining_s):
                    continue
                line = self._process.stdout.readline()
                if not line:
                    self._process.wait(timeout=STOP_TIMEOUT_S)
                    raise EmulatorStartError(
                        f"emulator exited with status {self._process.returncode}: {self._stderr_text()}"
                    )
                match = _LISTENING_LINE.search(line)
                if match:
                    return match.group(1)

    def _stderr_text(self) -> str:
        if self._stderr_file is None:
            return ""
        self._stderr_file.seek(0)
        return self._stderr_file.read().strip()

    def stop(self) -> int | None:
        """Terminate the process by PID, kill it if it does not exit in time; return its exit status."""
        process, self._process = self._process, None
        returncode = None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
            returncode = process.returncode
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        if self._seed_path is not None:
            os.unlink(self._seed_path)
            self._seed_path = None
        self._session.close()
        return returncode

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        response = self._session.request(
            method, f"{self.url}/_emulator/{path}", json=body, timeout=CONTROL_TIMEOUT_S
        )
        if not response.ok:
            raise RuntimeError(f"emulator control call {method} {path} failed: {response.status_code} {response.text}")
        return response.json()

    def journal(self) -> list[dict[str, Any]]:
        return self._control("GET", "journal")

    def clear_journal(self) -> None:
        self._control("DELETE", "journal")

    def add_fault(self, **rule: Any) -> dict[str, Any]:
        """Add a fault rule (fields as in ``ilert_emulator.faults``) and return it with its id."""
        return self._control("POST", "faults", rule)

    def faults(self) -> list[dict[str, Any]]:
        return self._control("GET", "faults")

    def clear_faults(self) -> None:
        self._control("DELETE", "faults")

    def set_api_key(self, key: str) -> None:
        self._control("PUT", "api-key", {"api_key": key})

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return self._control("GET", "state")

    def load_seed(self, seed: Mapping[str, Any]) -> None:
        """Replace users and policies; this also clears the journal and the fault rules."""
        self._control("POST", "seed", dict(seed))

    def policy(self, policy_id: int) -> dict[str, Any]:
        for policy in self.state()["policies"]:
            if policy["id"] == policy_id:
                return policy
        raise KeyError(f"no policy with id {policy_id} in the emulator")

    def level(self, routing_key: str, level: int) -> dict[str, Any]:
        """Return escalation rule ``level`` of the policy behind ``routing_key``."""
        for policy in self.state()["policies"]:
            if policy.get("routingKey") == routing_key:
                return policy["escalationRules"][level]
        raise KeyError(f"no policy with routing key {routing_key} in the emulator")


def make_seed(
    policies: int = 100,
    users: int = 20,
    levels: int = 3,
    api_key: str = "bench-key",
) -> dict[str, Any]:
    """Build a seed of ``policies`` policies with ``levels`` levels each and ``users`` users.

    Routing keys are ``key-000``, ``key-001``, ...; emails are
    ``user-00@example.com``, ``user-01@example.com``, ... (the digits widen
    for larger counts). User ids start at 1 and policy ids at 1000. Level j of
    policy i is covered by user ``(i + j) % users``, with an escalation
    timeout of ``5 * (j + 1)`` minutes, one schedule and one team.
    """
    if users < 1:
        raise ValueError("make_seed needs at least one user")
    user_digits = max(2, len(str(users - 1)))
    key_digits = max(3, len(str(policies - 1)))
    user_list = [
        {
            "id": index + 1,
            "email": f"user-{index:0{user_digits}d}@example.com",
            "firstName": "User",
            "lastName": f"{index:0{user_digits}d}",
        }
        for index in range(users)
    ]
    policy_list = [
        {
            "id": 1000 + policy_index,
            "name": f"Policy {policy_index:0{key_digits}d}",
            "routingKey": f"key-{policy_index:0{key_digits}d}",
            "escalationRules": [
                {
                    "escalationTimeout": 5 * (level + 1),
                    "users": [{"id": (policy_index + level) % users + 1}],
                    "schedules": [{"id": 5000 + level}],
                    "teams": [{"id": 7000 + level}],
                }
                for level in range(levels)
            ],
        }
        for policy_index in range(policies)
    ]
    return {"api_key": api_key, "users": user_list, "policies": policy_list}
