"""local_runner against the real Mosquitto and the ilert emulator: direct and buffered MQTT modes."""

from __future__ import annotations

import json
import sqlite3
import uuid

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from ilert_emulator.testing import EmulatorProcess, make_seed
from policy_sync.ilert import DEFAULT_CALL_ATTEMPTS
from local_runner.testing import RunnerProcess, free_port
from tests.services import (
    MQTT_PASSWORD,
    MQTT_USERNAME,
    certs_dir,
    mqtt_auth_port,
    mqtt_port,
    mqtt_tls_port,
    require_mosquitto,
    wait_until,
)

pytestmark = pytest.mark.brokers

API_KEY = "demo-key"
ONCALL_USER_ID = 1
APPLY_TIMEOUT_S = 30.0

# The first ilagent command line from the README, with the port, client id and
# topic made unique per test.
ILAGENT_MQTT_ARGS = [
    "-v", "-v", "-m", "127.0.0.1", "-q", "1883", "-n", "ilagent",
    "--policy_topic", "user/logins", "--policy_routing_keys", "location,slot",
    "--map_key_email", "data.email", "--map_key_shift", "data.shift", "--shift_offset=-1",
    "--filter_key", "eventType", "--filter_val", "active", "--mqtt_qos", "1", "--mqtt_buffer",
]  # fmt: skip

LOGIN_PAYLOAD = {
    "location": "powerplant",
    "slot": "three50",
    "eventType": "active",
    "data": {"email": "oncall@example.com", "shift": "2"},
}


@pytest.fixture(autouse=True)
def mosquitto():
    require_mosquitto()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ilagent_args(topic: str, client_id: str, ilert_url: str, buffered: bool) -> list[str]:
    """Return the README's command line with this test's port, client id, topic and emulator URL."""
    args = list(ILAGENT_MQTT_ARGS)
    args[args.index("1883")] = str(mqtt_port())
    args[args.index("ilagent")] = client_id
    args[args.index("user/logins")] = topic
    if not buffered:
        args.remove("--mqtt_buffer")
    return [*args, "--ilert_url", ilert_url]


def policy_args(topic: str, client_id: str, ilert_url: str, *extra: str) -> list[str]:
    """Return a daemon command line for make_seed policies: routing key `location`, shift offset 0."""
    return [
        "-v", "-m", "127.0.0.1", "-q", str(mqtt_port()), "-n", client_id,
        "--policy_topic", topic, "--policy_routing_keys", "location",
        "--ilert_url", ilert_url, *extra,
    ]  # fmt: skip


def publish(topic: str, payloads: list, port: int | None = None, qos: int = 1) -> None:
    """Publish JSON payloads (or raw bytes) in order and wait until the broker has them all."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=unique("publisher"))
    client.connect("127.0.0.1", port or mqtt_port())
    client.loop_start()
    try:
        for payload in payloads:
            body = payload if isinstance(payload, bytes) else json.dumps(payload)
            client.publish(topic, body, qos=qos).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def level_user_ids(emulator: EmulatorProcess, routing_key: str, level: int) -> list[int]:
    return [user["id"] for user in emulator.level(routing_key, level)["users"]]


def level_puts(emulator: EmulatorProcess, policy_id: int, level: int) -> list[dict]:
    """Return the successful PUTs of one level from the journal, in arrival order."""
    path = f"/api/escalation-policies/{policy_id}/levels/{level}"
    return [entry for entry in emulator.journal() if entry["method"] == "PUT" and entry["path"] == path]


def wait_for_level(emulator, routing_key: str, level: int, user_ids: list[int], runner: RunnerProcess) -> None:
    wait_until(
        lambda: level_user_ids(emulator, routing_key, level) == user_ids,
        APPLY_TIMEOUT_S,
        f"level {level} of {routing_key} never became {user_ids}; daemon output:\n{runner.output()[-3000:]}",
    )


def buffer_count(db_file) -> int:
    with sqlite3.connect(db_file) as connection:
        return connection.execute("SELECT count(*) FROM buffer").fetchone()[0]


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_ilagent_command_line_applies_assignment(emulator, tmp_path, buffered):
    topic, client_id = unique("user/logins"), unique("ilagent")
    assert level_user_ids(emulator, "powerplantthree50", 1) != [ONCALL_USER_ID]

    args = ilagent_args(topic, client_id, emulator.url, buffered)
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)
        assert runner.stop() == 0

    rule = emulator.level("powerplantthree50", 1)
    assert rule["escalationTimeout"] == 15
    assert rule["schedules"] == [{"id": 502}]
    assert rule["teams"] == [{"id": 8}]
    assert buffer_count(tmp_path / "ilagent.db3") == 0


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_filtered_message_changes_nothing(emulator, tmp_path, buffered):
    topic, client_id = unique("user/logins"), unique("ilagent")
    inactive = {**LOGIN_PAYLOAD, "eventType": "inactive"}
    args = ilagent_args(topic, client_id, emulator.url, buffered)
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [inactive, LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)

    assert len(level_puts(emulator, 11, 1)) == 1


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_retry_after_api_errors_succeeds(emulator, tmp_path, buffered):
    topic, client_id = unique("user/logins"), unique("ilagent")
    emulator.add_fault(status=503, count=3)
    args = ilagent_args(topic, client_id, emulator.url, buffered)
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)

    statuses = [entry["status"] for entry in emulator.journal()]
    assert statuses.count(503) == 3
    assert statuses[-1] == 200


def test_direct_retry_reconnects_for_redelivery(emulator, tmp_path):
    topic, client_id = unique("user/logins"), unique("ilagent")
    # Every attempt of the first call fails, so the message ends as retry.
    emulator.add_fault(status=503, count=DEFAULT_CALL_ATTEMPTS)
    args = ilagent_args(topic, client_id, emulator.url, buffered=False)
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)
        output = runner.output()

    assert "MQTT message not acknowledged" in output
    assert "MQTT reconnecting after a pause" in output


def test_rejected_message_becomes_dead_letter(emulator, tmp_path):
    topic, client_id = unique("user/logins"), unique("ilagent")
    db_file = tmp_path / "ilagent.db3"
    unknown_user = {**LOGIN_PAYLOAD, "data": {"email": "nobody@example.com", "shift": "2"}}
    args = ilagent_args(topic, client_id, emulator.url, buffered=True)
    with RunnerProcess(args, db_file, API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [b"not json", unknown_user, LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)
        wait_until(lambda: buffer_count(db_file) == 0, APPLY_TIMEOUT_S, "the buffer never emptied")

    with sqlite3.connect(db_file) as connection:
        rows = connection.execute("SELECT payload, reason, coordinates FROM dead_letters ORDER BY id").fetchall()
    assert [(row[0], row[1]) for row in rows] == [
        (b"not json", "not_json"),
        (json.dumps(unknown_user).encode(), "unknown_user"),
    ]
    assert json.loads(rows[0][2])["topic"] == topic


def make_stream_seed() -> dict:
    """Ten policies with three levels each: thirty levels, one message each."""
    return make_seed(policies=10, users=5, levels=3, api_key=API_KEY)


def stream_messages(seed: dict) -> list[tuple[str, int, int, dict]]:
    """Return (routing key, level, expected user id, payload) for every level of the seed.

    Each message moves the level to the next user, so every level changes.
    """
    emails = {user["id"]: user["email"] for user in seed["users"]}
    messages = []
    for policy in seed["policies"]:
        for level, rule in enumerate(policy["escalationRules"]):
            user_id = rule["users"][0]["id"] % len(emails) + 1
            payload = {"location": policy["routingKey"], "data": {"email": emails[user_id], "shift": level}}
            messages.append((policy["routingKey"], level, user_id, payload))
    return messages


def all_levels_applied(emulator: EmulatorProcess, messages) -> bool:
    policies = {policy["routingKey"]: policy for policy in emulator.state()["policies"]}
    return all(
        [user["id"] for user in policies[routing_key]["escalationRules"][level]["users"]] == [user_id]
        for routing_key, level, user_id, _ in messages
    )


def count_applied(emulator: EmulatorProcess) -> int:
    return sum(1 for entry in emulator.journal() if entry["method"] == "PUT" and entry["status"] == 200)


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_kill_mid_stream_loses_nothing(tmp_path, buffered):
    seed = make_stream_seed()
    messages = stream_messages(seed)
    topic, client_id = unique("shifts"), unique("runner")
    db_file = tmp_path / "runner.db3"
    extra = ["--mqtt_buffer"] if buffered else []

    with EmulatorProcess(seed) as emulator:
        # Every API call takes 50 ms, so the stream takes a few seconds and
        # the kill lands in the middle of it.
        emulator.add_fault(latency_ms=50)
        args = policy_args(topic, client_id, emulator.url, *extra)
        first = RunnerProcess(args, db_file, API_KEY).start()
        try:
            first.wait_ready()
            publish(topic, [payload for *_, payload in messages])
            wait_until(lambda: count_applied(emulator) >= 5, APPLY_TIMEOUT_S, "the first run applied nothing")
            first.kill()
        finally:
            first.close()
        applied_before_restart = count_applied(emulator)
        assert applied_before_restart < len(messages)

        with RunnerProcess(args, db_file, API_KEY) as second:
            wait_until(
                lambda: all_levels_applied(emulator, messages),
                APPLY_TIMEOUT_S * 2,
                f"not every level was applied after the restart; output:\n{second.output()[-3000:]}",
            )
            assert second.stop() == 0


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_older_assignment_never_overwrites_newer(emulator, tmp_path, buffered):
    topic, client_id = unique("user/logins"), unique("ilagent")
    older = {**LOGIN_PAYLOAD, "data": {"email": "plant.manager@example.com", "shift": "2"}}
    newer = LOGIN_PAYLOAD
    # The first two PUT retries fail: the older assignment must wait, and the
    # newer one behind it, until the older one is through.
    emulator.add_fault(status=503, count=2 * DEFAULT_CALL_ATTEMPTS, method="PUT")
    args = ilagent_args(topic, client_id, emulator.url, buffered)
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [older, newer])
        wait_until(
            lambda: [entry["status"] for entry in level_puts(emulator, 11, 1)][-1:] == [200]
            and level_user_ids(emulator, "powerplantthree50", 1) == [ONCALL_USER_ID],
            APPLY_TIMEOUT_S,
            f"the newer assignment was never applied; output:\n{runner.output()[-3000:]}",
        )

    puts = level_puts(emulator, 11, 1)
    applied_user_ids = [entry["body"]["users"][0]["id"] for entry in puts if entry["status"] == 200]
    assert applied_user_ids[-1] == ONCALL_USER_ID
    assert ONCALL_USER_ID not in applied_user_ids[:-1]
    assert level_user_ids(emulator, "powerplantthree50", 1) == [ONCALL_USER_ID]


def test_ready_reports_broker_connection(emulator, tmp_path):
    closed_port = free_port()
    args = policy_args(unique("shifts"), unique("runner"), emulator.url)
    args[args.index(str(mqtt_port()))] = str(closed_port)
    with RunnerProcess(args, tmp_path / "runner.db3", API_KEY) as runner:
        wait_until(lambda: runner.ready_status() == 503, 20, "/ready never answered 503")
        assert requests.get(runner.health_url, timeout=5).status_code == 200
        assert runner.is_running()


def test_ready_turns_on_when_subscribed(emulator, tmp_path):
    args = policy_args(unique("shifts"), unique("runner"), emulator.url)
    with RunnerProcess(args, tmp_path / "runner.db3", API_KEY) as runner:
        runner.wait_ready()
        body = requests.get(runner.ready_url, timeout=5).json()
        assert body == {"ready": True, "consumers": {"mqtt": True}}


def test_username_and_password_login(emulator, tmp_path):
    topic = unique("user/logins")
    args = ilagent_args(topic, unique("ilagent"), emulator.url, buffered=False)
    args[args.index(str(mqtt_port()))] = str(mqtt_auth_port())
    args += ["--mqtt_username", MQTT_USERNAME, "--mqtt_password", MQTT_PASSWORD]
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)
        assert MQTT_PASSWORD not in runner.output()


def test_tls_with_client_certificate(emulator, tmp_path):
    topic = unique("user/logins")
    certs = certs_dir()
    args = ilagent_args(topic, unique("ilagent"), emulator.url, buffered=False)
    args[args.index(str(mqtt_port()))] = str(mqtt_tls_port())
    args += [
        "--mqtt_tls",
        "--mqtt_ca", str(certs / "ca.crt"),
        "--mqtt_client_cert", str(certs / "client.crt"),
        "--mqtt_client_key", str(certs / "client.key"),
    ]  # fmt: skip
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)


def test_shared_subscription_receives_messages(emulator, tmp_path):
    topic = unique("user/logins")
    args = ilagent_args(topic, unique("ilagent"), emulator.url, buffered=True)
    args += ["--mqtt_shared_group", unique("group")]
    with RunnerProcess(args, tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)


def test_buffered_message_past_max_retries_becomes_dead_letter(emulator, tmp_path):
    topic, client_id = unique("user/logins"), unique("ilagent")
    db_file = tmp_path / "ilagent.db3"
    emulator.add_fault(status=503)
    args = [*ilagent_args(topic, client_id, emulator.url, buffered=True), "--max_retries", "2"]
    with RunnerProcess(args, db_file, API_KEY) as runner:
        runner.wait_ready()
        publish(topic, [LOGIN_PAYLOAD])

        def dead_letters() -> list:
            with sqlite3.connect(db_file) as connection:
                return connection.execute("SELECT reason, detail, payload FROM dead_letters").fetchall()

        [(reason, detail, payload)] = wait_until(
            dead_letters, APPLY_TIMEOUT_S, f"no dead letter after 2 attempts; output:\n{runner.output()[-3000:]}"
        )
        assert buffer_count(db_file) == 0

    assert reason == "retries_exhausted"
    assert "2 attempts" in detail
    assert "api_unavailable" in detail
    assert json.loads(payload) == LOGIN_PAYLOAD
    # Two attempts of the message, each repeating the first call DEFAULT_CALL_ATTEMPTS times.
    assert [entry["status"] for entry in emulator.journal()] == [503] * 2 * DEFAULT_CALL_ATTEMPTS


def test_failed_buffer_write_withholds_ack_until_it_succeeds(emulator, tmp_path):
    topic, client_id = unique("user/logins"), unique("ilagent")
    db_file = tmp_path / "ilagent.db3"
    args = ilagent_args(topic, client_id, emulator.url, buffered=True)
    with RunnerProcess(args, db_file, API_KEY) as runner:
        runner.wait_ready()
        # Another process holds the write lock longer than the daemon's busy
        # timeout, so the insert fails as it would on a full or read-only disk.
        blocker = sqlite3.connect(db_file, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            publish(topic, [LOGIN_PAYLOAD])
            wait_until(
                lambda: "could not write the MQTT message to the buffer" in runner.output(),
                APPLY_TIMEOUT_S,
                f"the failed insert was never reported; output:\n{runner.output()[-3000:]}",
            )
            assert level_user_ids(emulator, "powerplantthree50", 1) != [ONCALL_USER_ID]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        # The message was not acknowledged, so the broker delivers it again.
        wait_for_level(emulator, "powerplantthree50", 1, [ONCALL_USER_ID], runner)
        assert runner.stop() == 0
