"""The hostile corpus through real brokers to a running local_runner daemon and the ilert emulator.

Each test starts the emulator and a daemon subprocess with a fresh SQLite
file, publishes corpus payloads and then one good payload. The checks: the
daemon stays alive, every rejected payload is dead-lettered once with the
expected reason, no filtered payload is dead-lettered, no PUT is sent for
any of them, and the good payload is applied.

The good payload is published last on the same topic (one Kafka partition),
and all three paths process messages of one topic in order, so once it is
applied and the dead letters are complete, nothing of the corpus is left.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests
from kafka import KafkaProducer
from paho.mqtt.enums import CallbackAPIVersion

from ilert_emulator.testing import EmulatorProcess
from policy_sync import outcomes
from policy_sync.outcomes import OutcomeKind
from tests.corpus.hostile import (
    KNOWN_EMAIL,
    KNOWN_ROUTING_KEY,
    MQTT_HUGE_PAYLOAD_BYTES,
    GOOD_SHIFT,
    HostilePayload,
    corpus_daemon_flags,
    corpus_seed,
    good_payload,
    hostile_payloads,
)
from tests.services import (
    create_topic,
    kafka_bootstrap,
    mqtt_host,
    mqtt_port,
    require_kafka,
    require_mosquitto,
    wait_until,
)

REPO_DIR = Path(__file__).resolve().parents[2]

# The project's Kafka broker accepts records up to 8 MiB, and the record overhead needs some room.
KAFKA_MAX_VALUE_BYTES = 8 * 1024 * 1024 - 64 * 1024
KAFKA_PRODUCER_MAX_REQUEST_BYTES = 9 * 1024 * 1024

DAEMON_READY_TIMEOUT_S = 60.0
CORPUS_DONE_TIMEOUT_S = 180.0
DAEMON_STOP_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 30.0

# The good payload moves level GOOD_SHIFT of KNOWN_ROUTING_KEY (policy 1000)
# from its seeded user to KNOWN_EMAIL (user id 6 in corpus_seed()).
GOOD_POLICY_ID = 1000
GOOD_USER_ID = 6


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DaemonProcess:
    """`python -m local_runner daemon` as a subprocess, with its log in a file."""

    def __init__(self, arguments: list[str], db_file: Path, emulator: EmulatorProcess, log_file: Path):
        self.db_file = db_file
        self.health_port = free_port()
        self.log_file = log_file
        environment = {**os.environ, "ILERT_API_KEY": "corpus-key", "ILERT_API_URL": emulator.url}
        command = [
            sys.executable, "-m", "local_runner", "daemon",
            "-f", str(db_file), "-p", str(self.health_port), "-v",
            *corpus_daemon_flags(), *arguments,
        ]  # fmt: skip
        self._log = open(log_file, "wb")
        self.process = subprocess.Popen(
            command, cwd=REPO_DIR, env=environment, stdout=self._log, stderr=subprocess.STDOUT
        )

    def is_ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"daemon exited with {self.process.returncode} before it was ready:\n{self.log_text()}")
        try:
            return requests.get(f"http://127.0.0.1:{self.health_port}/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self) -> None:
        wait_until(self.is_ready, DAEMON_READY_TIMEOUT_S, "daemon did not report /ready")

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int | None:
        """Send SIGTERM to the daemon's PID and return its exit code, or None after a kill when it does not stop."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(DAEMON_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(DAEMON_STOP_TIMEOUT_S)
                self._log.close()
                return None
        self._log.close()
        return self.process.returncode


def query_db(db_file: Path, sql: str) -> list[tuple]:
    """Run one query on the daemon's SQLite file, opened read-only."""
    connection = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def dead_letter_count(db_file: Path) -> int:
    if not db_file.exists():
        return 0
    return query_db(db_file, "SELECT COUNT(*) FROM dead_letters")[0][0]


def list_dead_letters(db_file: Path) -> list[dict]:
    """Read the dead letters through `local_runner dead-letters list --json`."""
    result = subprocess.run(
        [sys.executable, "-m", "local_runner", "dead-letters", "list", "-f", str(db_file), "--json"],
        cwd=REPO_DIR,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]


def good_level_applied(emulator: EmulatorProcess) -> bool:
    users = emulator.level(KNOWN_ROUTING_KEY, GOOD_SHIFT)["users"]
    return [user["id"] for user in users] == [GOOD_USER_ID]


def publish_mqtt(topic: str, payloads: list[bytes]) -> None:
    """Publish with QoS 1 and wait for each PUBACK."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bad-input-{uuid.uuid4().hex}")
    client.connect(mqtt_host(), mqtt_port())
    client.loop_start()
    try:
        for payload in payloads:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
            assert info.is_published(), f"MQTT publish of {len(payload)} bytes not acknowledged"
    finally:
        client.disconnect()
        client.loop_stop()


def publish_kafka(topic: str, payloads: list[bytes | None]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap(),
        max_request_size=KAFKA_PRODUCER_MAX_REQUEST_BYTES,
        acks="all",
        linger_ms=0,
    )
    try:
        for payload in payloads:
            producer.send(topic, value=payload, key=b"bad-input").get(timeout=PUBLISH_TIMEOUT_S)
    finally:
        producer.close()


def run_corpus(
    daemon: DaemonProcess, emulator: EmulatorProcess, entries: list[HostilePayload], publish, extra_rejected: int = 0
) -> list[dict]:
    """Publish `entries` and the good payload, wait until everything is done and return the dead letters."""
    payloads = [entry.payload for entry in entries]
    assert len(set(payloads)) == len(payloads), "corpus payloads must be unique to match dead letters"
    expected_dead_letters = sum(entry.kind is OutcomeKind.REJECTED for entry in entries) + extra_rejected

    publish(payloads)
    wait_until(
        lambda: dead_letter_count(daemon.db_file) >= expected_dead_letters or daemon.process.poll() is not None,
        CORPUS_DONE_TIMEOUT_S,
        f"fewer than {expected_dead_letters} dead letters",
        interval_s=0.2,
    )
    publish([good_payload()])
    wait_until(
        lambda: good_level_applied(emulator) or daemon.process.poll() is not None,
        CORPUS_DONE_TIMEOUT_S,
        "the good payload after the corpus was not applied",
        interval_s=0.2,
    )
    assert daemon.process.poll() is None, f"daemon exited with {daemon.process.returncode}:\n{daemon.log_text()[-5000:]}"
    return list_dead_letters(daemon.db_file)


def check_dead_letters(dead_letters: list[dict], entries: list[HostilePayload]) -> dict:
    """Check one dead letter per rejected entry, with its reason, and none for a filtered entry.

    Returns the dead letters that match no entry, keyed by payload.
    """
    by_payload = {}
    for dead_letter in dead_letters:
        payload = None if dead_letter["payload_b64"] is None else base64.b64decode(dead_letter["payload_b64"])
        by_payload.setdefault(payload, []).append(dead_letter)

    wrong = []
    for entry in entries:
        found = by_payload.pop(entry.payload, [])
        if entry.kind is OutcomeKind.FILTERED:
            if found:
                wrong.append(f"{entry.name}: filtered payload was dead-lettered ({found[0]['reason']})")
            continue
        reasons = [dead_letter["reason"] for dead_letter in found]
        if reasons != [entry.reason]:
            wrong.append(f"{entry.name}: expected one dead letter {entry.reason}, got {reasons}")
        elif not found[0]["detail"]:
            wrong.append(f"{entry.name}: dead letter has no detail")
    assert wrong == [], "\n".join(wrong)
    return by_payload


def check_api_calls(emulator: EmulatorProcess) -> None:
    """Check that the only PUT is the good payload's and that the level now has only its user."""
    puts = [entry for entry in emulator.journal() if entry["method"] == "PUT"]

    assert [entry["path"] for entry in puts] == [f"/api/escalation-policies/{GOOD_POLICY_ID}/levels/{GOOD_SHIFT}"]
    assert [user["id"] for user in puts[0]["body"]["users"]] == [GOOD_USER_ID]
    assert good_level_applied(emulator)


def check_no_traceback(daemon: DaemonProcess) -> None:
    log = daemon.log_text()

    assert "Traceback" not in log, log[-5000:]


@pytest.fixture
def emulator():
    with EmulatorProcess(corpus_seed()) as process:
        yield process


@pytest.fixture
def start_daemon(tmp_path, emulator):
    daemons = []

    def start(arguments: list[str]) -> DaemonProcess:
        daemon = DaemonProcess(arguments, tmp_path / "runner.db3", emulator, tmp_path / "daemon.log")
        daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


def mqtt_arguments(topic: str, buffered: bool) -> list[str]:
    arguments = ["-m", mqtt_host(), "-q", str(mqtt_port()), "-n", f"bad-input-{uuid.uuid4().hex}"]
    arguments += ["--policy_topic", topic]
    return arguments + (["--mqtt_buffer"] if buffered else [])


def test_mqtt_buffered_dead_letters_whole_corpus(start_daemon, emulator):
    require_mosquitto()
    topic = f"bad-input/{uuid.uuid4().hex}/shifts"
    entries = list(hostile_payloads())
    daemon = start_daemon(mqtt_arguments(topic, buffered=True))

    dead_letters = run_corpus(daemon, emulator, entries, lambda payloads: publish_mqtt(topic, payloads))

    assert check_dead_letters(dead_letters, entries) == {}
    check_api_calls(emulator)
    assert query_db(daemon.db_file, "SELECT COUNT(*) FROM buffer")[0][0] == 0
    assert daemon.stop() == 0
    check_no_traceback(daemon)


def test_mqtt_buffered_rejects_10_mb_before_parsing(start_daemon, emulator):
    require_mosquitto()
    topic = f"bad-input/{uuid.uuid4().hex}/shifts"
    huge = [entry for entry in hostile_payloads() if len(entry.payload) >= MQTT_HUGE_PAYLOAD_BYTES]
    daemon = start_daemon(mqtt_arguments(topic, buffered=True))

    dead_letters = run_corpus(daemon, emulator, huge, lambda payloads: publish_mqtt(topic, payloads))

    assert len(huge) == 1
    assert [dead_letter["reason"] for dead_letter in dead_letters] == [outcomes.TOO_LARGE]
    assert dead_letters[0]["detail"].startswith(f"payload is {len(huge[0].payload)} bytes, over the limit")
    assert base64.b64decode(dead_letters[0]["payload_b64"]) == huge[0].payload
    check_api_calls(emulator)
    assert daemon.stop() == 0


def test_mqtt_direct_dead_letters_whole_corpus(start_daemon, emulator):
    require_mosquitto()
    topic = f"bad-input/{uuid.uuid4().hex}/shifts"
    entries = list(hostile_payloads())
    daemon = start_daemon(mqtt_arguments(topic, buffered=False))

    dead_letters = run_corpus(daemon, emulator, entries, lambda payloads: publish_mqtt(topic, payloads))

    assert check_dead_letters(dead_letters, entries) == {}
    check_api_calls(emulator)
    assert daemon.stop() == 0
    check_no_traceback(daemon)


def test_kafka_dead_letters_corpus_and_tombstone(start_daemon, emulator):
    require_kafka()
    topic = f"bad-input-{uuid.uuid4().hex}"
    create_topic(topic, partitions=1)
    entries = [entry for entry in hostile_payloads() if len(entry.payload) <= KAFKA_MAX_VALUE_BYTES]
    daemon = start_daemon(
        ["--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", f"bad-input-{uuid.uuid4().hex}", "--policy_topic", topic]
    )

    def publish(payloads: list[bytes]) -> None:
        publish_kafka(topic, [*payloads, None] if len(payloads) > 1 else payloads)

    dead_letters = run_corpus(daemon, emulator, entries, publish, extra_rejected=1)

    assert any(len(entry.payload) >= 5 * 1024 * 1024 for entry in entries)
    left_over = check_dead_letters(dead_letters, entries)
    assert list(left_over) == [None], "only the tombstone has no corpus entry"
    assert [dead_letter["reason"] for dead_letter in left_over[None]] == [outcomes.NOT_JSON]
    assert all(dead_letter["coordinates"].get("topic") == topic for dead_letter in dead_letters)
    check_api_calls(emulator)
    assert daemon.stop() == 0
    check_no_traceback(daemon)


def test_unknown_email_not_logged_above_debug(start_daemon, emulator):
    require_mosquitto()
    topic = f"bad-input/{uuid.uuid4().hex}/shifts"
    entries = [entry for entry in hostile_payloads() if entry.reason == outcomes.UNKNOWN_USER]
    daemon = start_daemon(mqtt_arguments(topic, buffered=False))

    run_corpus(daemon, emulator, entries, lambda payloads: publish_mqtt(topic, payloads))
    assert daemon.stop() == 0

    # The daemon runs with -v (info), so no line may contain an email. All
    # but one of these unknown emails end in "@example.com".
    leaked = [log_excerpt(line) for line in daemon.log_text().splitlines() if "@example.com" in line]
    assert leaked == [], "emails logged above debug level:\n" + "\n".join(leaked)


def log_excerpt(line: str) -> str:
    """Return the level, message and detail of a JSON log line, or the start of another line."""
    try:
        record = json.loads(line)
    except ValueError:
        return line[:300]
    return f"{record.get('level')} {record.get('message')}: {record.get('detail')}"
