"""local_runner against the real Kafka broker and the ilert emulator."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from ilert_emulator.testing import EmulatorProcess, make_seed
from policy_sync.ilert import DEFAULT_CALL_ATTEMPTS
from local_runner.testing import RunnerProcess
from tests.services import create_topic, kafka_bootstrap, require_kafka, wait_until

pytestmark = pytest.mark.brokers

API_KEY = "demo-key"
ONCALL_USER_ID = 1
APPLY_TIMEOUT_S = 60.0

# The second ilagent command line from the README; the brokers, group id and
# topic are replaced per test.
ILAGENT_KAFKA_ARGS = [
    "-v", "-v", "--kafka_brokers", "localhost:9092", "--kafka_group_id", "ilagent",
    "--policy_topic", "user-logins", "--policy_routing_keys", "location",
    "--map_key_email", "user.info.email", "--map_key_shift", "level", "--shift_offset=-1",
]  # fmt: skip

LOGIN_PAYLOAD = {"location": "powerplant", "user": {"info": {"email": "oncall@example.com"}}, "level": 2}


@pytest.fixture(autouse=True)
def kafka():
    require_kafka()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ilagent_args(topic: str, group_id: str, ilert_url: str) -> list[str]:
    args = list(ILAGENT_KAFKA_ARGS)
    args[args.index("localhost:9092")] = kafka_bootstrap()
    args[args.index("ilagent")] = group_id
    args[args.index("user-logins")] = topic
    return [*args, "--ilert_url", ilert_url]


def produce(topic: str, payloads: list, partition: int | None = None, key: bytes | None = None) -> None:
    """Send JSON payloads (bytes as they are, None as a tombstone) in order and flush."""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap(), acks="all")
    try:
        for payload in payloads:
            if payload is None or isinstance(payload, bytes):
                value = payload
            else:
                value = json.dumps(payload).encode()
            producer.send(topic, value=value, key=key, partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close()


def committed_offset(group_id: str, topic: str, partition: int = 0) -> int | None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap(), client_id=unique("offsets"))
    try:
        offsets = admin.list_group_offsets({group_id: None})
    finally:
        admin.close()
    meta = offsets.get(group_id, {}).get(TopicPartition(topic, partition))
    return None if meta is None else meta.offset


def level_user_ids(emulator: EmulatorProcess, routing_key: str, level: int) -> list[int]:
    return [user["id"] for user in emulator.level(routing_key, level)["users"]]


def level_puts(emulator: EmulatorProcess, policy_id: int, level: int) -> list[dict]:
    path = f"/api/escalation-policies/{policy_id}/levels/{level}"
    return [entry for entry in emulator.journal() if entry["method"] == "PUT" and entry["path"] == path]


def test_ilagent_command_line_applies_assignment(emulator, tmp_path):
    topic, group_id = unique("user-logins"), unique("ilagent")
    create_topic(topic, partitions=1)
    assert level_user_ids(emulator, "powerplant", 1) != [ONCALL_USER_ID]

    with RunnerProcess(ilagent_args(topic, group_id, emulator.url), tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        produce(topic, [LOGIN_PAYLOAD])
        wait_until(
            lambda: level_user_ids(emulator, "powerplant", 1) == [ONCALL_USER_ID],
            APPLY_TIMEOUT_S,
            f"level 1 of powerplant was never applied; output:\n{runner.output()[-3000:]}",
        )
        wait_until(lambda: committed_offset(group_id, topic) == 1, APPLY_TIMEOUT_S, "offset 1 was never committed")
        assert runner.stop() == 0

    rule = emulator.level("powerplant", 1)
    assert rule["escalationTimeout"] == 15
    assert rule["schedules"] == [{"id": 501}]


def test_rejected_records_become_dead_letters(emulator, tmp_path):
    topic, group_id = unique("user-logins"), unique("ilagent")
    db_file = tmp_path / "ilagent.db3"
    create_topic(topic, partitions=1)
    with RunnerProcess(ilagent_args(topic, group_id, emulator.url), db_file, API_KEY) as runner:
        runner.wait_ready()
        produce(topic, [b"{broken", None, LOGIN_PAYLOAD], key=b"powerplant")
        wait_until(lambda: committed_offset(group_id, topic) == 3, APPLY_TIMEOUT_S, "offset 3 was never committed")

    with sqlite3.connect(db_file) as connection:
        rows = connection.execute("SELECT payload, reason, coordinates FROM dead_letters ORDER BY id").fetchall()
    assert [(row[0], row[1]) for row in rows] == [(b"{broken", "not_json"), (None, "not_json")]
    coordinates = json.loads(rows[0][2])
    assert coordinates["topic"] == topic
    assert coordinates["partition"] == 0
    assert coordinates["offset"] == 0
    assert level_user_ids(emulator, "powerplant", 1) == [ONCALL_USER_ID]


def test_retry_holds_offset_until_success(emulator, tmp_path):
    topic, group_id = unique("user-logins"), unique("ilagent")
    create_topic(topic, partitions=1)
    emulator.add_fault(status=503, count=3)
    with RunnerProcess(ilagent_args(topic, group_id, emulator.url), tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        produce(topic, [LOGIN_PAYLOAD])
        wait_until(
            lambda: "Kafka partition paused after a retry" in runner.output(),
            APPLY_TIMEOUT_S,
            "the partition was never paused",
        )
        assert committed_offset(group_id, topic) in (None, 0)
        wait_until(
            lambda: level_user_ids(emulator, "powerplant", 1) == [ONCALL_USER_ID],
            APPLY_TIMEOUT_S,
            f"the record was never applied after the retries; output:\n{runner.output()[-3000:]}",
        )
        wait_until(lambda: committed_offset(group_id, topic) == 1, APPLY_TIMEOUT_S, "offset 1 was never committed")

    statuses = [entry["status"] for entry in emulator.journal()]
    assert statuses.count(503) == 3


def test_older_record_never_overwrites_newer(emulator, tmp_path):
    topic, group_id = unique("user-logins"), unique("ilagent")
    create_topic(topic, partitions=1)
    older = {**LOGIN_PAYLOAD, "user": {"info": {"email": "plant.manager@example.com"}}}
    emulator.add_fault(status=503, count=2 * DEFAULT_CALL_ATTEMPTS, method="PUT")
    with RunnerProcess(ilagent_args(topic, group_id, emulator.url), tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        produce(topic, [older, LOGIN_PAYLOAD])
        wait_until(lambda: committed_offset(group_id, topic) == 2, APPLY_TIMEOUT_S, "offset 2 was never committed")

    applied = [entry["body"]["users"][0]["id"] for entry in level_puts(emulator, 10, 1) if entry["status"] == 200]
    assert applied[-1] == ONCALL_USER_ID
    assert ONCALL_USER_ID not in applied[:-1]
    assert level_user_ids(emulator, "powerplant", 1) == [ONCALL_USER_ID]


def test_other_partition_goes_on_while_one_retries(tmp_path):
    seed = make_seed(policies=2, users=3, levels=1, api_key=API_KEY)
    topic, group_id = unique("shifts"), unique("runner")
    create_topic(topic, partitions=2)
    args = ["-v", "--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", group_id,
            "--policy_topic", topic, "--policy_routing_keys", "location"]  # fmt: skip
    with EmulatorProcess(seed) as emulator:
        # key-000 always fails on its PUT; key-001 on the other partition must still be applied.
        emulator.add_fault(status=503, method="PUT", path_prefix="/api/escalation-policies/1000/")
        with RunnerProcess([*args, "--ilert_url", emulator.url], tmp_path / "runner.db3", API_KEY) as runner:
            runner.wait_ready()
            produce(topic, [{"location": "key-000", "data": {"email": "user-02@example.com"}}], partition=0)
            produce(topic, [{"location": "key-001", "data": {"email": "user-00@example.com"}}], partition=1)
            wait_until(
                lambda: level_user_ids(emulator, "key-001", 0) == [1],
                APPLY_TIMEOUT_S,
                f"the other partition was not processed; output:\n{runner.output()[-3000:]}",
            )
            wait_until(lambda: committed_offset(group_id, topic, 1) == 1, APPLY_TIMEOUT_S, "partition 1 not committed")
            assert committed_offset(group_id, topic, 0) in (None, 0)
            emulator.clear_faults()
            wait_until(
                lambda: level_user_ids(emulator, "key-000", 0) == [3],
                APPLY_TIMEOUT_S,
                f"the retried partition never caught up; output:\n{runner.output()[-3000:]}",
            )
            wait_until(lambda: committed_offset(group_id, topic, 0) == 1, APPLY_TIMEOUT_S, "partition 0 not committed")


def test_kill_mid_stream_loses_nothing(tmp_path):
    seed = make_seed(policies=10, users=5, levels=3, api_key=API_KEY)
    emails = {user["id"]: user["email"] for user in seed["users"]}
    expected = {}
    payloads = []
    for policy in seed["policies"]:
        for level, rule in enumerate(policy["escalationRules"]):
            user_id = rule["users"][0]["id"] % len(emails) + 1
            expected[(policy["routingKey"], level)] = user_id
            payloads.append({"location": policy["routingKey"], "data": {"email": emails[user_id], "shift": level}})

    topic, group_id = unique("shifts"), unique("runner")
    create_topic(topic, partitions=1)
    db_file = tmp_path / "runner.db3"
    args = ["-v", "--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", group_id,
            "--policy_topic", topic, "--policy_routing_keys", "location"]  # fmt: skip

    def applied_count(emulator) -> int:
        return sum(1 for entry in emulator.journal() if entry["method"] == "PUT" and entry["status"] == 200)

    def all_applied(emulator) -> bool:
        policies = {policy["routingKey"]: policy for policy in emulator.state()["policies"]}
        return all(
            [user["id"] for user in policies[key]["escalationRules"][level]["users"]] == [user_id]
            for (key, level), user_id in expected.items()
        )

    with EmulatorProcess(seed) as emulator:
        emulator.add_fault(latency_ms=50)
        full_args = [*args, "--ilert_url", emulator.url]
        first = RunnerProcess(full_args, db_file, API_KEY).start()
        try:
            first.wait_ready()
            produce(topic, payloads)
            wait_until(lambda: applied_count(emulator) >= 5, APPLY_TIMEOUT_S, "the first run applied nothing")
            first.kill()
        finally:
            first.close()
        assert applied_count(emulator) < len(payloads)

        with RunnerProcess(full_args, db_file, API_KEY) as second:
            wait_until(
                lambda: all_applied(emulator),
                APPLY_TIMEOUT_S * 2,
                f"not every level was applied after the restart; output:\n{second.output()[-3000:]}",
            )
            wait_until(
                lambda: committed_offset(group_id, topic) == len(payloads),
                APPLY_TIMEOUT_S,
                "the last offset was never committed",
            )
            assert second.stop() == 0


def test_sigterm_leaves_group_and_exits_0(emulator, tmp_path):
    topic, group_id = unique("user-logins"), unique("ilagent")
    create_topic(topic, partitions=1)
    with RunnerProcess(ilagent_args(topic, group_id, emulator.url), tmp_path / "ilagent.db3", API_KEY) as runner:
        runner.wait_ready()
        produce(topic, [LOGIN_PAYLOAD])
        wait_until(lambda: committed_offset(group_id, topic) == 1, APPLY_TIMEOUT_S, "offset 1 was never committed")
        assert runner.stop() == 0
        assert "Kafka consumer stopped" in runner.output()

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap(), client_id=unique("groups"))
    try:
        descriptions = admin.describe_groups([group_id])
    finally:
        admin.close()
    assert descriptions[group_id]["members"] == []


def test_sigterm_mid_batch_commits_finished_records(tmp_path):
    seed = make_seed(policies=10, users=5, levels=3, api_key=API_KEY)
    emails = {user["id"]: user["email"] for user in seed["users"]}
    payloads = [
        {"location": policy["routingKey"], "data": {"email": emails[rule["users"][0]["id"] % 5 + 1], "shift": level}}
        for policy in seed["policies"]
        for level, rule in enumerate(policy["escalationRules"])
    ]
    topic, group_id = unique("shifts"), unique("runner")
    create_topic(topic, partitions=1)
    args = ["-v", "--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", group_id,
            "--policy_topic", topic, "--policy_routing_keys", "location"]  # fmt: skip

    def applied_count(emulator) -> int:
        return sum(1 for entry in emulator.journal() if entry["method"] == "PUT" and entry["status"] == 200)

    with EmulatorProcess(seed) as emulator:
        emulator.add_fault(latency_ms=50)
        with RunnerProcess([*args, "--ilert_url", emulator.url], tmp_path / "runner.db3", API_KEY) as runner:
            runner.wait_ready()
            produce(topic, payloads)
            wait_until(lambda: applied_count(emulator) >= 3, APPLY_TIMEOUT_S, "nothing was applied")
            assert runner.stop() == 0

        # Every record applied before the stop is committed, and nothing after it.
        applied = applied_count(emulator)
        assert 3 <= applied < len(payloads)
        assert committed_offset(group_id, topic) == applied


def test_resumed_partition_is_fetched_again_while_others_flow(tmp_path):
    # Many records on two partitions, so that fetched records wait in kafka-python's
    # buffer while a partition is paused. kafka-python 3.0.12 then parked them and
    # never fetched the resumed partition again unless the runner drops them.
    records_per_partition = 300
    seed = make_seed(policies=20, users=4, levels=1, api_key=API_KEY)
    emails = {user["id"]: user["email"] for user in seed["users"]}
    topic, group_id = unique("shifts"), unique("runner")
    create_topic(topic, partitions=2)
    args = ["-v", "--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", group_id,
            "--policy_topic", topic, "--policy_routing_keys", "location"]  # fmt: skip

    def stream(first_policy: int) -> list[dict]:
        # Ten policies per partition, each assignment naming the next user in turn; the last round names user 4.
        rounds = records_per_partition // 10
        return [
            {"location": f"key-{first_policy + index:03d}", "data": {"email": emails[(round_number - rounds) % 4 + 1]}}
            for round_number in range(rounds)
            for index in range(10)
        ]

    with EmulatorProcess(seed) as emulator:
        # Partition 0 fails now and then, so it is sought back and paused many times.
        emulator.add_fault(status=503, method="PUT", ratio=0.5, seed=3, path_prefix="/api/escalation-policies/100")
        with RunnerProcess([*args, "--ilert_url", emulator.url], tmp_path / "runner.db3", API_KEY) as runner:
            runner.wait_ready()
            produce(topic, stream(0), partition=0)
            produce(topic, stream(10), partition=1)
            wait_until(
                lambda: committed_offset(group_id, topic, 0) == records_per_partition
                and committed_offset(group_id, topic, 1) == records_per_partition,
                APPLY_TIMEOUT_S * 3,
                f"a partition stopped short of its end; output:\n{runner.output()[-3000:]}",
            )

        for index in range(20):
            assert level_user_ids(emulator, f"key-{index:03d}", 0) == [4]
