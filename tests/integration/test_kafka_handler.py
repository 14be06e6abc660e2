"""The Kafka handler's partial batch response: partition rule, time rule and per-level lanes.

The handler runs in this process with a runtime installed the way local_runner
installs it (SQLite ordering store and dead-letter table) and talks to the
emulator over HTTP.
"""

from __future__ import annotations

import base64
import json

import pytest

import kafka_handler.app as kafka_app
from local_runner.store import Database, SqliteDeadLetterSink, SqliteOrderingStore
from policy_sync import runtime as runtime_module
from policy_sync.ilert import DEFAULT_CALL_ATTEMPTS, IlertClient
from policy_sync.runtime import Runtime
from policy_sync.settings import Settings
from policy_sync.user_cache import UserCache

TOPIC = "user-logins"


class Context:
    """A Lambda context whose remaining time counts down by `step_ms` per call."""

    function_name = "kafka-handler-test"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:kafka-handler-test"
    aws_request_id = "test-request"

    def __init__(self, remaining_ms=60_000, step_ms=0):
        self.remaining_ms = remaining_ms
        self.step_ms = step_ms

    def get_remaining_time_in_millis(self):
        remaining = self.remaining_ms
        self.remaining_ms -= self.step_ms
        return remaining


@pytest.fixture
def installed_runtime(emulator, tmp_path, monkeypatch):
    database = Database(tmp_path / "kafka.db3")
    settings = Settings.from_values(
        policy_topic=TOPIC,
        policy_routing_keys="location",
        map_key_email="user.info.email",
        map_key_shift="level",
        ilert_url=emulator.url,
    )
    runtime = Runtime(
        settings=settings,
        client=IlertClient(emulator.url, "demo-key"),
        user_cache=UserCache(),
        dead_letters=SqliteDeadLetterSink(database),
        ordering=SqliteOrderingStore(database),
    )
    runtime_module.install(runtime)
    monkeypatch.setenv("REMAINING_TIME_RESERVE_MS", "1000")
    yield runtime
    runtime_module.reset()
    database.close()


def record(partition, offset, value, timestamp=None):
    encoded = None
    if value is not None:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        encoded = base64.b64encode(raw).decode()
    return {
        "topic": TOPIC,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp if timestamp is not None else 1_700_000_000_000 + offset,
        "timestampType": "CREATE_TIME",
        "key": None,
        "value": encoded,
        "headers": [],
    }


def assignment(location, email, level):
    return {"location": location, "user": {"info": {"email": email}}, "level": level}


def msk_event(*records):
    grouped = {}
    for item in records:
        grouped.setdefault(f"{TOPIC}-{item['partition']}", []).append(item)
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abc",
        "bootstrapServers": "b-1.demo:9092",
        "records": grouped,
    }


def failures(response):
    return [(item["itemIdentifier"]["partition"], item["itemIdentifier"]["offset"]) for item in response["batchItemFailures"]]


def test_failure_identifier_is_topic_partition_and_offset(emulator, installed_runtime):
    emulator.add_fault(status=503, count=DEFAULT_CALL_ATTEMPTS)

    response = kafka_app.lambda_handler(msk_event(record(0, 41, assignment("powerplant", "oncall@example.com", 1))), Context())

    assert response == {"batchItemFailures": [{"itemIdentifier": {"partition": f"{TOPIC}-0", "offset": 41}}]}


def test_retry_holds_back_rest_of_partition_only(emulator, installed_runtime):
    emulator.add_fault(status=503, count=DEFAULT_CALL_ATTEMPTS, method="PUT")
    event = msk_event(
        record(0, 10, assignment("powerplant", "oncall@example.com", 0)),
        record(0, 11, assignment("powerplantthree50", "oncall@example.com", 0)),
        record(0, 12, None),
        record(1, 20, assignment("powerplantthree50", "oncall@example.com", 2)),
        record(1, 21, b"not json"),
    )

    response = kafka_app.lambda_handler(event, Context())

    assert failures(response) == [(f"{TOPIC}-0", 10), (f"{TOPIC}-0", 11), (f"{TOPIC}-0", 12)]
    assert [user["id"] for user in emulator.level("powerplant", 0)["users"]] == [3]
    assert [user["id"] for user in emulator.level("powerplantthree50", 2)["users"]] == [1]
    assert [entry.reason for entry in installed_runtime.dead_letters.list()] == ["not_json"]


def test_null_and_bad_values_are_rejected_not_retried(emulator, installed_runtime):
    event = msk_event(
        record(0, 1, None),
        record(0, 2, b"\xff\xfe"),
        record(0, 3, b"[1, 2]"),
        record(0, 4, assignment("powerplant", "oncall@example.com", 1)),
    )

    response = kafka_app.lambda_handler(event, Context())

    assert failures(response) == []
    reasons = [entry.reason for entry in installed_runtime.dead_letters.list()]
    assert reasons == ["not_json", "not_utf8", "not_an_object"]
    assert [user["id"] for user in emulator.level("powerplant", 1)["users"]] == [1]


def test_low_remaining_time_reports_rest_as_failed(emulator, installed_runtime):
    event = msk_event(
        record(0, 1, assignment("powerplant", "oncall@example.com", 0)),
        record(0, 2, assignment("powerplant", "oncall@example.com", 1)),
        record(1, 5, assignment("powerplantthree50", "oncall@example.com", 0)),
    )

    # 3,000 ms left at the first check, then 2,500 ms less per check: only the first record starts.
    response = kafka_app.lambda_handler(event, Context(remaining_ms=3_000, step_ms=2_500))

    assert failures(response) == [(f"{TOPIC}-0", 2), (f"{TOPIC}-1", 5)]
    assert [user["id"] for user in emulator.level("powerplant", 0)["users"]] == [1]
    assert [user["id"] for user in emulator.level("powerplant", 1)["users"]] == [2]


def test_records_out_of_offset_order_are_sorted(emulator, installed_runtime):
    event = msk_event(
        record(0, 8, assignment("powerplant", "plant.manager@example.com", 1), timestamp=2_000),
        record(0, 7, assignment("powerplant", "oncall@example.com", 1), timestamp=1_000),
    )

    response = kafka_app.lambda_handler(event, Context())

    assert failures(response) == []
    assert [user["id"] for user in emulator.level("powerplant", 1)["users"]] == [3]


def test_record_without_offset_fails_whole_invocation(emulator, installed_runtime):
    broken = record(0, 1, assignment("powerplant", "oncall@example.com", 1))
    del broken["offset"]

    with pytest.raises(ValueError, match="integer partition and offset"):
        kafka_app.lambda_handler(msk_event(broken), Context())


def test_same_batch_twice_changes_level_once(emulator, installed_runtime):
    event = msk_event(record(0, 1, assignment("powerplant", "oncall@example.com", 1)))

    first = kafka_app.lambda_handler(event, Context())
    second = kafka_app.lambda_handler(event, Context())

    assert failures(first) == failures(second) == []
    assert [entry["method"] for entry in emulator.journal()].count("PUT") == 1


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_lanes_keep_level_order_and_partition_rule(emulator, installed_runtime, monkeypatch, concurrency):
    monkeypatch.setenv("CONCURRENCY", concurrency)
    # The first PUT of level 0 fails on every attempt: its lane stops, the later assignment for the
    # same level is not started, and both are reported with the rest of partition 0.
    emulator.add_fault(status=503, count=DEFAULT_CALL_ATTEMPTS, method="PUT", path_prefix="/api/escalation-policies/10/levels/0")
    event = msk_event(
        record(0, 1, assignment("powerplant", "oncall@example.com", 0)),
        record(0, 2, assignment("powerplantthree50", "oncall@example.com", 1)),
        record(0, 3, assignment("powerplant", "shift.lead@example.com", 0)),
        record(1, 1, assignment("powerplantthree50", "plant.manager@example.com", 0)),
    )

    response = kafka_app.lambda_handler(event, Context())

    assert failures(response) == [(f"{TOPIC}-0", 1), (f"{TOPIC}-0", 2), (f"{TOPIC}-0", 3)]
    level_0_put_users = [
        entry["body"]["users"][0]["id"]
        for entry in emulator.journal()
        if entry["method"] == "PUT" and entry["path"] == "/api/escalation-policies/10/levels/0"
    ]
    # Only the first record's attempts: the later assignment for level 0 never started.
    assert level_0_put_users == [1] * DEFAULT_CALL_ATTEMPTS
    assert [user["id"] for user in emulator.level("powerplant", 0)["users"]] == [3]
    assert [user["id"] for user in emulator.level("powerplantthree50", 0)["users"]] == [3]

    emulator.clear_faults()
    redelivered = kafka_app.lambda_handler(msk_event(*[item for item in event["records"][f"{TOPIC}-0"]]), Context())

    assert failures(redelivered) == []
    assert [user["id"] for user in emulator.level("powerplant", 0)["users"]] == [2]
