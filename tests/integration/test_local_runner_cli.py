"""local_runner's command line: bad configurations, the dead-letters subcommand, signals and the file lock."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid

import pytest

from local_runner.store import Database, SqliteDeadLetterSink
from local_runner.testing import RunnerProcess
from policy_sync.dead_letters import DeadLetter
from tests.integration.test_local_runner_mqtt import publish
from tests.services import mqtt_port, require_mosquitto, wait_until

API_KEY = "demo-key"
ONCALL_USER_ID = 1

LOGIN_PAYLOAD = {
    "location": "powerplant",
    "slot": "three50",
    "eventType": "active",
    "data": {"email": "oncall@example.com", "shift": "2"},
}


def run_cli(*args: str, api_key: str | None = API_KEY, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("ILERT_API_KEY", "ILERT_API_URL")}
    if api_key is not None:
        env["ILERT_API_KEY"] = api_key
    return subprocess.run(
        [sys.executable, "-m", "local_runner", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )


MQTT_BASE = ["daemon", "-m", "127.0.0.1", "--policy_topic", "user/logins", "--policy_routing_keys", "location"]


@pytest.mark.parametrize(
    ("args", "api_key", "expected"),
    [
        (["daemon", "-m", "127.0.0.1", "--policy_topic", "t"], API_KEY, "--policy_routing_keys"),
        ([*MQTT_BASE, "--mqtt_qos", "0"], API_KEY, "--mqtt_buffer"),
        ([*MQTT_BASE, "--mqtt_qos", "3"], API_KEY, "--mqtt_qos"),
        ([*MQTT_BASE, "--mqtt_qos", "-1"], API_KEY, "--mqtt_qos"),
        (MQTT_BASE, None, "ILERT_API_KEY"),
        (MQTT_BASE, "   ", "ILERT_API_KEY"),
        (["daemon", "--policy_topic", "t", "--policy_routing_keys", "location"], API_KEY, "--kafka_brokers"),
        ([*MQTT_BASE, "--shift_offset=one"], API_KEY, "--shift_offset"),
        (["daemon", "-m", "127.0.0.1", "--policy_routing_keys", "location"], API_KEY, "--policy_topic"),
        ([*MQTT_BASE, "--mqtt_ca", "/nonexistent/ca.crt"], API_KEY, "--mqtt_ca"),
        ([*MQTT_BASE, "--ilert_url", "ftp://example.com"], API_KEY, "--ilert_url"),
    ],
    ids=[
        "topic-without-routing-keys",
        "qos0-without-buffer",
        "qos3",
        "negative-qos",
        "missing-api-key",
        "blank-api-key",
        "no-broker",
        "shift-offset-not-integer",
        "no-policy-topic",
        "missing-ca-file",
        "bad-ilert-url",
    ],
)
def test_bad_configuration_exits_2_with_one_line(args, api_key, expected):
    result = run_cli(*args, api_key=api_key)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("local_runner: error: ")
    assert expected in lines[0]


def test_api_key_never_appears_in_error():
    result = run_cli(*MQTT_BASE, "--mqtt_qos", "0", api_key="secret-key-123")
    assert result.returncode == 2
    assert "secret-key-123" not in result.stderr


def test_unknown_flag_is_rejected():
    result = run_cli(*MQTT_BASE, "--api_key", "x")
    assert result.returncode == 2
    assert "unrecognized arguments: --api_key" in result.stderr


def test_ilagent_kafka_command_line_parses():
    from local_runner.cli import build_daemon_config, build_parser

    args = build_parser().parse_args(
        "daemon -v -v --kafka_brokers localhost:9092 --kafka_group_id ilagent --policy_topic user-logins "
        "--policy_routing_keys location --map_key_email user.info.email --map_key_shift level "
        "--shift_offset=-1".split()
    )
    config = build_daemon_config(args, {"ILERT_API_KEY": "Bearer k"})
    assert config.api_key == "k"
    assert config.verbosity == 2
    assert config.mqtt is None
    assert config.kafka.brokers == ("localhost:9092",)
    assert config.kafka.group_id == "ilagent"
    assert config.settings.shift_offset == -1
    assert config.settings.email_path == "user.info.email"
    assert config.settings.ilert_url == "https://api.ilert.com"


def test_ilert_url_falls_back_to_environment():
    from local_runner.cli import build_daemon_config, build_parser

    args = build_parser().parse_args([*MQTT_BASE])
    config = build_daemon_config(args, {"ILERT_API_KEY": "k", "ILERT_API_URL": "http://127.0.0.1:9/"})
    assert config.settings.ilert_url == "http://127.0.0.1:9"
    assert config.mqtt.qos == 1
    assert config.mqtt.client_id == "ilagent"
    assert config.mqtt.port == 1883
    assert config.db_file == "./ilagent.db3"


def test_shift_offset_accepts_separate_negative_value():
    from local_runner.cli import build_parser

    args = build_parser().parse_args([*MQTT_BASE, "--shift_offset", "-1"])
    assert args.shift_offset == "-1"


def seed_dead_letters(db_file) -> None:
    database = Database(db_file)
    sink = SqliteDeadLetterSink(database)
    payload = json.dumps(LOGIN_PAYLOAD).encode()
    sink.put(DeadLetter(payload, "api_rejected", "HTTP 400", 1_700_000_000_000, {"topic": "t", "source": "mqtt"}))
    sink.put(DeadLetter(b"not json", "not_json", "not JSON", 1_700_000_000_001, {"topic": "t", "source": "mqtt"}))
    database.close()


def test_dead_letters_list_shows_reason_and_payload(tmp_path):
    db_file = tmp_path / "dl.db3"
    seed_dead_letters(db_file)

    text = run_cli("dead-letters", "list", "-f", str(db_file), api_key=None)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("1\t")
    assert "api_rejected" in lines[0]
    assert "not_json" in lines[1]
    assert "'not json'" in lines[1]
    assert lines[-1] == f"2 dead letter(s) in {db_file}"

    as_json = run_cli("dead-letters", "list", "-f", str(db_file), "--json", api_key=None)
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [record["reason"] for record in records] == ["api_rejected", "not_json"]
    assert records[1]["payload_b64"] == "bm90IGpzb24="
    assert records[0]["received_at_ms"] == 1_700_000_000_000


def test_dead_letters_list_of_missing_file_fails(tmp_path):
    result = run_cli("dead-letters", "list", "-f", str(tmp_path / "missing.db3"), api_key=None)
    assert result.returncode == 1
    assert "not found" in result.stderr


def test_requeue_moves_dead_letter_to_buffer(tmp_path):
    db_file = tmp_path / "dl.db3"
    seed_dead_letters(db_file)

    result = run_cli("dead-letters", "requeue", "2", "-f", str(db_file), api_key=None)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db_file) as connection:
        assert connection.execute("SELECT id FROM dead_letters").fetchall() == [(1,)]
        buffered = connection.execute("SELECT payload, received_at_ms, topic FROM buffer").fetchall()
    assert buffered == [(b"not json", 1_700_000_000_001, "t")]


def test_requeue_all_and_unknown_id(tmp_path):
    db_file = tmp_path / "dl.db3"
    seed_dead_letters(db_file)

    missing = run_cli("dead-letters", "requeue", "7", "-f", str(db_file), api_key=None)
    assert missing.returncode == 1
    assert "not found: 7" in missing.stderr

    both = run_cli("dead-letters", "requeue", "1", "--all", "-f", str(db_file), api_key=None)
    assert both.returncode == 2

    result = run_cli("dead-letters", "requeue", "--all", "-f", str(db_file), api_key=None)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db_file) as connection:
        assert connection.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM buffer").fetchone() == (2,)


@pytest.mark.brokers
def test_requeued_dead_letter_is_applied_by_running_daemon(emulator, tmp_path):
    require_mosquitto()
    db_file = tmp_path / "ilagent.db3"
    # The API rejects the first PUT with 400, so the message becomes a dead letter.
    emulator.add_fault(status=400, count=1, method="PUT")
    topic = f"user/logins-{uuid.uuid4().hex[:10]}"
    args = [
        "-v", "-m", "127.0.0.1", "-q", str(mqtt_port()), "-n", f"ilagent-{uuid.uuid4().hex[:10]}",
        "--policy_topic", topic, "--policy_routing_keys", "location,slot", "--shift_offset=-1",
        "--mqtt_buffer", "--ilert_url", emulator.url,
    ]  # fmt: skip
    with RunnerProcess(args, db_file, API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])

        def listed() -> list[dict]:
            result = run_cli("dead-letters", "list", "--json", "-f", str(db_file), api_key=None)
            return [json.loads(line) for line in result.stdout.splitlines()]

        [dead_letter] = wait_until(listed, 30, "the rejected message never became a dead letter")
        assert dead_letter["reason"] == "api_rejected"
        assert dead_letter["coordinates"]["topic"] == topic

        requeue = run_cli("dead-letters", "requeue", str(dead_letter["id"]), "-f", str(db_file), api_key=None)
        assert requeue.returncode == 0, requeue.stderr
        wait_until(
            lambda: [user["id"] for user in emulator.level("powerplantthree50", 1)["users"]] == [ONCALL_USER_ID],
            30,
            f"the requeued message was never applied; output:\n{runner.output()[-3000:]}",
        )
        assert listed() == []


@pytest.mark.brokers
def test_sigint_exit_0_and_file_lock(emulator, tmp_path):
    require_mosquitto()
    db_file = tmp_path / "ilagent.db3"
    args = [
        "-m", "127.0.0.1", "-q", str(mqtt_port()), "-n", f"ilagent-{uuid.uuid4().hex[:10]}",
        "--policy_topic", "user/logins", "--policy_routing_keys", "location", "--ilert_url", emulator.url,
    ]  # fmt: skip
    with RunnerProcess(args, db_file, API_KEY) as first:
        first.wait_ready()
        with RunnerProcess(args, db_file, API_KEY) as second:
            wait_until(lambda: not second.is_running(), 30, "a second daemon on the same file kept running")
            assert second.stop() == 1
            assert "another local_runner daemon uses this SQLite file" in second.output()
        first.send_signal(signal.SIGINT)
        assert first.stop() == 0
