"""The same behavioural cases through both deployments: the Lambda MQTT function and local_runner.

Each case is one message with the demo settings (routing key `location`,
filter eventType=active). On the Lambda side the MQTT function runs as
`sam local invoke` would run it (tests/lambda_harness.py) against moto and
the emulator. On the local side a real daemon consumes the message from
Mosquitto. Both must end in the same outcome, the same dead-letter reason
and the same level in the emulator.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ilert_emulator.testing import EmulatorProcess
from local_runner.testing import RunnerProcess
from tests import moto_server
from tests.lambda_harness import invoke
from tests.moto_server import create_resources, receive_all
from tests.services import mqtt_port, require_mosquitto, wait_until

REPO = Path(__file__).resolve().parents[2]
SEED = json.loads((REPO / "examples" / "demo-seed.json").read_text())
API_KEY = SEED["api_key"]
OUTCOME_TIMEOUT_S = 30.0


def shift_message(email="oncall@example.com", shift="1", event_type="active") -> bytes:
    return json.dumps({"location": "powerplant", "eventType": event_type, "data": {"email": email, "shift": shift}}).encode()


@dataclass(frozen=True)
class Case:
    """One message, the outcome both deployments must reach, and level 1 of `powerplant` afterwards."""

    name: str
    payload: bytes
    outcome: str
    reason: str | None
    level_1_user_ids: list[int]
    fault: dict | None = None


# Level 1 of `powerplant` starts with user 2 (shift.lead@example.com).
CASES = [
    Case("applied", shift_message(), "applied", None, [1]),
    Case("unchanged", shift_message(email="shift.lead@example.com"), "unchanged", None, [2]),
    Case("filtered", shift_message(event_type="inactive"), "filtered", "filter_mismatch", [2]),
    Case("not_json", b"{oops", "rejected", "not_json", [2]),
    Case("bad_shift", shift_message(shift="1.5"), "rejected", "bad_shift", [2]),
    Case("unknown_user", shift_message(email="nobody@example.com"), "rejected", "unknown_user", [2]),
    Case("no_such_level", shift_message(shift="7"), "rejected", "no_such_level", [2]),
    Case("api_outage", shift_message(), "retry", "api_unavailable", [2], fault={"status": 503}),
]


@pytest.fixture(scope="module")
def emulator():
    with EmulatorProcess(SEED) as process:
        yield process


@pytest.fixture()
def ilert(emulator):
    emulator.load_seed(SEED)
    return emulator


@pytest.fixture(scope="module")
def endpoint_url():
    with moto_server.moto_server() as url:
        yield url


@dataclass(frozen=True)
class Observed:
    outcome: str
    reason: str | None
    dead_letter_reasons: list[str]


def run_in_lambda(case: Case, ilert: EmulatorProcess, endpoint_url: str) -> Observed:
    resources = create_resources(endpoint_url, f"parity-{uuid.uuid4().hex[:8]}", API_KEY)
    event = {"payload_b64": base64.b64encode(case.payload).decode(), "topic": "user/logins", "received_at_ms": 1}
    result = invoke(
        "MqttFunction",
        event,
        environment={**resources.environment(), "ILERT_API_URL": ilert.url},
        parameters={"PolicyRoutingKeys": "location", "FilterKey": "eventType", "FilterVal": "active"},
    )
    dead = receive_all(endpoint_url, resources.dead_letter_queue_url)
    reasons = [message["MessageAttributes"]["reason"]["StringValue"] for message in dead]
    if result.error_type is not None:
        assert result.error_type == "RetryLater", result.stderr[-2000:]
        outcome = next(record for record in result.log_records() if record.get("outcome") == "retry")
        return Observed("retry", outcome.get("reason"), reasons)
    return Observed(result.result["outcome"], result.result["reason"], reasons)


def run_in_local_runner(case: Case, ilert: EmulatorProcess, tmp_path: Path) -> Observed:
    require_mosquitto()
    topic = f"parity/{uuid.uuid4().hex[:10]}"
    db_file = tmp_path / "parity.db3"
    args = [
        # -vv, because a filtered outcome is logged at debug level.
        "-vv", "-m", "127.0.0.1", "-q", str(mqtt_port()), "-n", f"parity-{uuid.uuid4().hex[:10]}",
        "--policy_topic", topic, "--policy_routing_keys", "location",
        "--filter_key", "eventType", "--filter_val", "active", "--ilert_url", ilert.url,
    ]  # fmt: skip
    with RunnerProcess(args, db_file, API_KEY) as runner:
        runner.wait_ready()
        publish(topic, case.payload)
        record = wait_for_outcome_line(runner, topic)
        assert runner.stop() == 0
    with sqlite3.connect(db_file) as connection:
        reasons = [row[0] for row in connection.execute("SELECT reason FROM dead_letters ORDER BY id")]
    return Observed(record["outcome"], record.get("reason"), reasons)


def publish(topic: str, payload: bytes) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:10]}")
    client.connect("127.0.0.1", mqtt_port())
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def outcome_lines(output: str, topic: str) -> list[dict]:
    records = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("topic") == topic and "outcome" in record:
                records.append(record)
    return records


def wait_for_outcome_line(runner: RunnerProcess, topic: str) -> dict:
    found: list[dict] = []

    def has_outcome() -> bool:
        found[:] = outcome_lines(runner.output(), topic)
        return bool(found)

    wait_until(has_outcome, OUTCOME_TIMEOUT_S, f"no outcome logged for {topic}:\n{runner.output()[-3000:]}")
    return found[0]


@pytest.mark.brokers
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("deployment", ["lambda", "local_runner"])
def test_same_outcome_in_both_deployments(deployment, case, ilert, endpoint_url, tmp_path):
    if case.fault is not None:
        ilert.add_fault(**case.fault)

    if deployment == "lambda":
        observed = run_in_lambda(case, ilert, endpoint_url)
    else:
        observed = run_in_local_runner(case, ilert, tmp_path)

    assert observed.outcome == case.outcome
    assert observed.reason == case.reason
    expected_dead_letters = [case.reason] if case.outcome == "rejected" else []
    assert observed.dead_letter_reasons == expected_dead_letters
    ilert.clear_faults()
    assert [user["id"] for user in ilert.level("powerplant", 1)["users"]] == case.level_1_user_ids
