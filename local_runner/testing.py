"""Run the daemon as a subprocess from tests and the demo: start, wait for readiness, stop by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
HEALTH_REQUEST_TIMEOUT_S = 2.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunnerStartError(RuntimeError):
    """The daemon exited or did not become ready in time."""


class RunnerProcess:
    """`python -m local_runner daemon ARGS -f DB -p PORT` as a child process.

    The API key goes into the child's environment as ILERT_API_KEY. Output
    (stdout and stderr) is collected in a temporary file, readable with `output()`.
    """

    def __init__(self, args: list[str], db_file: str | os.PathLike, api_key: str, health_port: int | None = None):
        self.args = list(args)
        self.db_file = str(db_file)
        self.api_key = api_key
        self.health_port = health_port or free_port()
        self._process: subprocess.Popen | None = None
        self._output = tempfile.TemporaryFile(mode="w+b")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/ready"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/health"

    def command(self) -> list[str]:
        """Return the full command line of the child."""
        return [
            sys.executable, "-m", "local_runner", "daemon",
            *self.args,
            "-f", self.db_file,
            "-p", str(self.health_port),
        ]  # fmt: skip

    def start(self) -> RunnerProcess:
        """Start the child; does not wait for readiness."""
        env = dict(os.environ, ILERT_API_KEY=self.api_key, PYTHONUNBUFFERED="1")
        self._process = subprocess.Popen(
            self.command(), env=env, stdout=self._output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        return self

    def ready_status(self) -> int | None:
        """Return the HTTP status of /ready, or None when the request fails."""
        try:
            return requests.get(self.ready_url, timeout=HEALTH_REQUEST_TIMEOUT_S).status_code
        except requests.RequestException:
            return None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> RunnerProcess:
        """Wait until /ready returns 200; raise RunnerStartError if the child exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while self.ready_status() != 200:
            if self._process.poll() is not None:
                raise RunnerStartError(
                    f"local_runner exited with status {self._process.returncode}:\n{self.output()[-4000:]}"
                )
            if time.monotonic() >= deadline:
                raise RunnerStartError(f"local_runner was not ready within {timeout_s} s:\n{self.output()[-4000:]}")
            time.sleep(0.1)
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM to the child's PID and return its exit status; SIGKILL if it does not exit in time."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        return process.returncode

    def send_signal(self, signal_number: int) -> None:
        """Send a signal to the child's PID without waiting."""
        self._process.send_signal(signal_number)

    def kill(self) -> int:
        """Send SIGKILL to the child's PID, as a crash would, and return its exit status."""
        self._process.kill()
        return self._process.wait(timeout=STOP_TIMEOUT_S)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """Return everything the child printed so far."""
        self._output.flush()
        self._output.seek(0)
        return self._output.read().decode("utf-8", errors="replace")

    def close(self) -> None:
        """Stop the child if it still runs and drop the output file."""
        self.stop()
        self._output.close()

    def __enter__(self) -> RunnerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

