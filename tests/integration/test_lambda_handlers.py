"""The three Lambda handlers, invoked as `sam local invoke` would with the files in events/.

Each call runs in a fresh Python process (tests/lambda_harness.py) against
a moto server (SQS, DynamoDB, Secrets Manager) and the ilert emulator, both
on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from ilert_emulator.testing import EmulatorProcess
from tests import moto_server
from tests.lambda_harness import invoke
from tests.moto_server import create_resources, receive_all

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "events"
SEED = json.loads((REPO / "examples" / "demo-seed.json").read_text())
API_KEY = SEED["api_key"]
ONCALL_USER_ID = 1

# The settings the sample events are written for.
PARAMETERS = {"PolicyRoutingKeys": "location", "FilterKey": "eventType", "FilterVal": "active"}


@pytest.fixture(scope="module")
def endpoint_url():
    with moto_server.moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def emulator():
    with EmulatorProcess(SEED) as process:
        yield process


@pytest.fixture()
def ilert(emulator):
    """The emulator with the demo seed loaded afresh: no journal, no faults."""
    emulator.load_seed(SEED)
    return emulator


@pytest.fixture()
def resources(endpoint_url):
    return create_resources(endpoint_url, f"fn-{uuid.uuid4().hex[:8]}", f"Bearer {API_KEY}")


@pytest.fixture()
def environment(resources, ilert):
    return {**resources.environment(), "ILERT_API_URL": ilert.url}


def puts(ilert) -> list[dict]:
    return [entry for entry in ilert.journal() if entry["method"] == "PUT"]


def user_ids(level: dict) -> list[int]:
    return [user["id"] for user in level["users"]]


def dead_letters(resources) -> list[dict]:
    return receive_all(resources.endpoint_url, resources.dead_letter_queue_url)


# MQTT handler


def test_mqtt_seed_event_is_applied(environment, ilert):
    response = invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, PARAMETERS)

    assert response.error_type is None, response.stderr
    assert response.result["outcome"] == "applied"
    assert [entry["path"] for entry in puts(ilert)] == ["/api/escalation-policies/10/levels/1"]
    assert user_ids(ilert.level("powerplant", 1)) == [ONCALL_USER_ID]


def test_mqtt_outcome_is_one_cloudwatch_metric(environment, ilert):
    response = invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, PARAMETERS)

    metric_records = [record for record in response.log_records() if "_aws" in record]
    assert len(metric_records) == 1
    [directive] = metric_records[0]["_aws"]["CloudWatchMetrics"]
    assert [metric["Name"] for metric in directive["Metrics"]] == ["applied"]
    assert metric_records[0]["applied"] == [1.0]


def test_mqtt_seed_event_twice_is_unchanged(environment, ilert):
    invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, PARAMETERS)

    response = invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, PARAMETERS)

    assert response.result["outcome"] == "unchanged"
    assert len(puts(ilert)) == 1


def test_mqtt_older_event_after_newer_is_superseded(environment, ilert):
    event = json.loads((EVENTS / "mqtt_seed.json").read_text())
    invoke("MqttFunction", event, environment, PARAMETERS)
    older = {**event, "received_at_ms": event["received_at_ms"] - 1}

    response = invoke("MqttFunction", older, environment, PARAMETERS)

    assert response.result["outcome"] == "superseded"
    assert len(puts(ilert)) == 1


def test_mqtt_not_json_is_dead_lettered(environment, ilert, resources):
    event = json.loads((EVENTS / "mqtt_not_json.json").read_text())

    response = invoke("MqttFunction", event, environment, PARAMETERS)

    assert response.result == {"outcome": "rejected", "reason": "not_json"}
    assert ilert.journal() == []
    [message] = dead_letters(resources)
    assert message["MessageAttributes"]["reason"]["StringValue"] == "not_json"
    body = json.loads(message["Body"])
    assert body["payload_b64"] == event["payload_b64"]
    assert body["received_at_ms"] == event["received_at_ms"]
    assert body["topic"] == "user/logins"


def test_mqtt_api_outage_raises_retry_later(environment, ilert):
    ilert.add_fault(status=503, method="PUT")

    response = invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, PARAMETERS)

    assert response.error_type == "RetryLater"
    assert user_ids(ilert.level("powerplant", 1)) == [2]


def test_mqtt_missing_table_variable_fails_init(environment):
    environment = {key: value for key, value in environment.items() if key != "ORDERING_TABLE"}

    response = invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, PARAMETERS)

    assert response.error_type == "ConfigError"
    assert "ORDERING_TABLE" in response.error_message


def test_mqtt_dead_letter_redrive_is_processed(environment, ilert, resources):
    # A dead letter is a valid buffer envelope, so a DLQ redrive reprocesses it as is.
    invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, {**PARAMETERS, "FilterVal": "inactive"})
    assert dead_letters(resources) == []
    ilert.add_fault(status=422, method="PUT", count=1)
    invoke("MqttFunction", EVENTS / "mqtt_seed.json", environment, PARAMETERS)
    [message] = dead_letters(resources)
    assert message["MessageAttributes"]["reason"]["StringValue"] == "api_rejected"

    event = sqs_event_with_body(message["Body"])
    response = invoke("BufferFunction", event, environment, PARAMETERS)

    assert response.result == {"batchItemFailures": []}
    assert user_ids(ilert.level("powerplant", 1)) == [ONCALL_USER_ID]


# Kafka handler


def test_kafka_retry_holds_back_rest_of_partition(environment, ilert, resources):
    ilert.add_fault(status=503, method="PUT", path_prefix="/api/escalation-policies/10/levels/2")

    response = invoke("KafkaFunction", EVENTS / "kafka_two_partitions.json", environment, PARAMETERS)

    assert response.error_type is None, response.stderr
    assert response.result == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "user-logins-0", "offset": 102}},
            {"itemIdentifier": {"partition": "user-logins-0", "offset": 103}},
        ]
    }
    assert user_ids(ilert.level("powerplant", 0)) == [ONCALL_USER_ID]
    assert user_ids(ilert.level("powerplant", 1)) == [2]
    assert user_ids(ilert.level("powerplant", 2)) == [3]
    assert user_ids(ilert.level("powerplantthree50", 0)) == [ONCALL_USER_ID]
    assert user_ids(ilert.level("powerplantthree50", 1)) == [ONCALL_USER_ID]


def test_kafka_null_value_is_dead_lettered(environment, ilert, resources):
    invoke("KafkaFunction", EVENTS / "kafka_two_partitions.json", environment, PARAMETERS)

    [message] = dead_letters(resources)
    body = json.loads(message["Body"])
    assert body["payload_b64"] is None
    assert body["partition"] == 0
    assert body["offset"] == 101
    assert body["topic"] == "user-logins"


def test_kafka_all_good_reports_no_failures(environment, ilert):
    response = invoke("KafkaFunction", EVENTS / "kafka_two_partitions.json", environment, PARAMETERS)

    assert response.result == {"batchItemFailures": []}
    assert user_ids(ilert.level("powerplant", 2)) == [ONCALL_USER_ID]
    # Offset 103 comes after 102 on the same partition and sets level 1 to user 2, as the seed has it.
    assert user_ids(ilert.level("powerplant", 1)) == [2]


def test_kafka_without_time_left_fails_every_record(environment, ilert):
    response = invoke(
        "KafkaFunction", EVENTS / "kafka_two_partitions.json", environment, PARAMETERS, remaining_time_ms=5000
    )

    failures = response.result["batchItemFailures"]
    assert len(failures) == 6
    assert ilert.journal() == []


# Buffer handler


@pytest.mark.parametrize(
    ("event_file", "routing_key", "level", "policy_id"),
    [
        ("sqs_envelope.json", "powerplant", 0, 10),
        ("sqs_lambda_destination.json", "powerplant", 1, 10),
        ("sqs_iot_error_action.json", "powerplantthree50", 2, 11),
    ],
)
def test_buffer_shape_is_applied(environment, ilert, event_file, routing_key, level, policy_id):
    response = invoke("BufferFunction", EVENTS / event_file, environment, PARAMETERS)

    assert response.error_type is None, response.stderr
    assert response.result == {"batchItemFailures": []}
    assert [entry["path"] for entry in puts(ilert)] == [f"/api/escalation-policies/{policy_id}/levels/{level}"]
    assert user_ids(ilert.level(routing_key, level)) == [ONCALL_USER_ID]


def test_buffer_retry_reports_message_failed(environment, ilert):
    ilert.add_fault(status=503, method="PUT")
    event = json.loads((EVENTS / "sqs_envelope.json").read_text())

    response = invoke("BufferFunction", event, environment, PARAMETERS)

    message_id = event["Records"][0]["messageId"]
    assert response.result == {"batchItemFailures": [{"itemIdentifier": message_id}]}


def test_buffer_unknown_shape_is_dead_lettered(environment, ilert, resources):
    event = sqs_event_with_body(json.dumps({"hello": "world"}))

    response = invoke("BufferFunction", event, environment, PARAMETERS)

    assert response.result == {"batchItemFailures": []}
    [message] = dead_letters(resources)
    assert message["MessageAttributes"]["reason"]["StringValue"] == "bad_event"
    assert base64.b64decode(json.loads(message["Body"])["payload_b64"]) == b'{"hello": "world"}'


def sqs_event_with_body(body: str) -> dict:
    """Return the sample SQS event with its one record's body replaced."""
    event = json.loads((EVENTS / "sqs_envelope.json").read_text())
    event["Records"][0]["body"] = body
    return event
