"""Helpers for tests that use the local brokers started by scripts/services.sh.

Ports come from the same environment variables, with the same defaults, as
the script. The `require_*` helpers fail the test (they never skip it) when a
broker does not accept connections, so a missing broker shows up as a failed
test run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

REPO_DIR = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = REPO_DIR / "scripts" / "services.sh"
RUN_DIR = REPO_DIR / ".run"

MQTT_USERNAME = "ilagent"
MQTT_PASSWORD = "ilagent-secret"

_HOST = "127.0.0.1"
_START_HINT = "start the brokers with `scripts/install-services.sh && scripts/services.sh start`"


def _port_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a port number, got {value!r}") from None


def mqtt_port() -> int:
    """Port of the plain, anonymous MQTT listener."""
    return _port_from_env("POLICY_SYNC_MQTT_PORT", 18830)


def mqtt_tls_port() -> int:
    """Port of the MQTT-over-TLS listener, which requires a client certificate."""
    return _port_from_env("POLICY_SYNC_MQTT_TLS_PORT", 18831)


def mqtt_auth_port() -> int:
    """Port of the MQTT listener that requires MQTT_USERNAME and MQTT_PASSWORD."""
    return _port_from_env("POLICY_SYNC_MQTT_AUTH_PORT", 18832)


def mqtt_host() -> str:
    return _HOST


def kafka_bootstrap() -> str:
    """Kafka bootstrap servers string, `host:port`."""
    return f"{_HOST}:{_port_from_env('POLICY_SYNC_KAFKA_PORT', 19092)}"


def certs_dir() -> Path:
    """Folder with ca.crt, server.crt/key and client.crt/key of the test CA."""
    return RUN_DIR / "certs"


def port_accepts_connections(port: int, host: str = _HOST, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_mosquitto() -> None:
    """Fail the calling test unless all three Mosquitto listeners accept connections."""
    for port in (mqtt_port(), mqtt_tls_port(), mqtt_auth_port()):
        if not port_accepts_connections(port):
            pytest.fail(f"Mosquitto is not listening on {_HOST}:{port}; {_START_HINT}")
    if not (certs_dir() / "client.crt").is_file():
        pytest.fail(f"test certificates are missing in {certs_dir()}; {_START_HINT}")


def require_kafka() -> None:
    """Fail the calling test unless the Kafka broker accepts connections and returns metadata."""
    bootstrap = kafka_bootstrap()
    port = int(bootstrap.rsplit(":", 1)[1])
    if not port_accepts_connections(port):
        pytest.fail(f"Kafka is not listening on {bootstrap}; {_START_HINT}")
    try:
        admin = _admin_client()
    except KafkaError as error:
        pytest.fail(f"Kafka at {bootstrap} accepts connections but did not answer: {error}; {_START_HINT}")
    try:
        admin.list_topics()
    except KafkaError as error:
        pytest.fail(f"listing topics on Kafka at {bootstrap} failed: {error}")
    finally:
        admin.close()


def restart_service(name: str, timeout_s: float = 180.0) -> None:
    """Restart one broker ("mosquitto" or "kafka") through scripts/services.sh.

    The broker keeps its data, so persistent sessions, queued messages and
    topics survive. Fails the test when the script fails.
    """
    if name not in ("mosquitto", "kafka"):
        raise ValueError(f"unknown service {name!r}; expected 'mosquitto' or 'kafka'")
    result = subprocess.run(
        [str(SERVICES_SCRIPT), "restart", name],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`scripts/services.sh restart {name}` failed with exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )


def create_topic(name: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Create a Kafka topic with one replica and wait until every partition has a leader.

    Does nothing but wait when the topic exists already.
    NOTE: an existing topic keeps its partition count, even when it differs from `partitions`.
    """
    admin = _admin_client()
    try:
        try:
            admin.create_topics(
                {name: {"num_partitions": partitions, "replication_factor": 1}},
                timeout_ms=int(timeout_s * 1000),
            )
        except TopicAlreadyExistsError:
            pass
        admin.wait_for_topics([name], timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()


def wait_until(condition, timeout_s: float, message: str, interval_s: float = 0.05):
    """Poll `condition` until it returns a true value and return that value.

    Fails the test with `message` when `timeout_s` seconds pass first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s: {message}")
        time.sleep(interval_s)


def _admin_client() -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=kafka_bootstrap(),
        client_id="policy-sync-tests",
        request_timeout_ms=15000,
    )
