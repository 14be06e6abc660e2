"""The buffer handler against a real SQS queue pair on the moto server and the emulator.

The handler runs in this process with the Lambda runtime built from the
environment (Secrets Manager, DynamoDB, SQS on moto), as in a container. Its
SQS events are built from messages really received from the queue, so the
receipt handles and receive counts are real.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from aws_lambda_powertools.utilities import parameters

import buffer_handler.app as buffer_app
import mqtt_handler.app as mqtt_app
from policy_sync import runtime as runtime_module
from policy_sync.outcomes import RetryLater
from tests import moto_server
from tests.moto_server import FAKE_CREDENTIALS, REGION, client
from tests.services import wait_until

API_KEY = "demo-key"
SEED_PAYLOAD = {"location": "powerplant", "eventType": "active", "data": {"email": "oncall@example.com", "shift": "1"}}
MAX_RECEIVE_COUNT = 3


class Context:
    function_name = "buffer-handler-test"
    memory_limit_in_mb = 256
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:buffer-handler-test"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self):
        return 30_000


@pytest.fixture(scope="module")
def endpoint_url():
    with moto_server.moto_server() as url:
        yield url


@pytest.fixture
def queues(endpoint_url):
    """A buffer queue (visibility 0, so only the handler's backoff hides a message) and its DLQ."""
    sqs = client("sqs", endpoint_url)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    dlq_url = sqs.create_queue(QueueName=f"{prefix}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
    buffer_url = sqs.create_queue(
        QueueName=f"{prefix}-buffer", Attributes={"VisibilityTimeout": "0", "RedrivePolicy": redrive}
    )["QueueUrl"]
    return prefix, buffer_url, dlq_url


@pytest.fixture
def lambda_environment(endpoint_url, queues, emulator, monkeypatch):
    prefix, buffer_url, dlq_url = queues
    table = moto_server.create_ordering_table(endpoint_url, f"{prefix}-ordering")
    secret = moto_server.create_secret(endpoint_url, f"{prefix}-api-key", API_KEY)
    variables = {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint_url,
        "ORDERING_TABLE": table,
        "BUFFER_QUEUE_URL": buffer_url,
        "DEAD_LETTER_QUEUE_URL": dlq_url,
        "ILERT_API_KEY_SECRET": secret,
        "ILERT_API_URL": emulator.url,
        "POLICY_ROUTING_KEYS": "location",
        "FILTER_KEY": "eventType",
        "FILTER_VAL": "active",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # A new container: no runtime, no cached secret, no SQS client yet.
    runtime_module.reset()
    parameters.clear_caches()
    monkeypatch.setattr(buffer_app, "_sqs_client", None)
    yield variables
    runtime_module.reset()
    parameters.clear_caches()


def envelope(payload: bytes, received_at_ms: int) -> str:
    return json.dumps(
        {"payload_b64": base64.b64encode(payload).decode(), "topic": "user/logins", "received_at_ms": received_at_ms}
    )


def receive(endpoint_url, queue_url) -> list[dict]:
    return client("sqs", endpoint_url).receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    ).get("Messages", [])


def sqs_event(messages, queue_url) -> dict:
    """Build the Lambda SQS event for messages received from `queue_url`."""
    queue_name = queue_url.rsplit("/", 1)[-1]
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message["Attributes"],
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:{queue_name}",
                "awsRegion": REGION,
            }
            for message in messages
        ]
    }


def test_retry_hides_message_for_doubling_backoff(endpoint_url, queues, lambda_environment, emulator):
    _, buffer_url, _ = queues
    client("sqs", endpoint_url).send_message(QueueUrl=buffer_url, MessageBody=envelope(json.dumps(SEED_PAYLOAD).encode(), 1))
    emulator.add_fault(status=503)

    hidden_for = []
    for expected_count in (1, 2):
        messages = receive(endpoint_url, buffer_url)
        assert [message["Attributes"]["ApproximateReceiveCount"] for message in messages] == [str(expected_count)]
        response = buffer_app.lambda_handler(sqs_event(messages, buffer_url), Context())
        hidden_at = time.monotonic()
        assert response == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
        # The queue's own visibility timeout is 0, so only the handler's backoff hides it.
        assert receive(endpoint_url, buffer_url) == []
        wait_until(lambda: bool(client("sqs", endpoint_url).get_queue_attributes(
            QueueUrl=buffer_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"] != "0"), 15.0, "the message never became visible again")
        hidden_for.append(time.monotonic() - hidden_at)

    # 1 s after the first receive, 2 s after the second (backoff_delay_s).
    assert hidden_for[0] >= 0.9
    assert hidden_for[1] >= 1.9


def test_exhausted_message_moves_to_dead_letter_queue(endpoint_url, queues, lambda_environment, emulator):
    _, buffer_url, dlq_url = queues
    body = envelope(json.dumps(SEED_PAYLOAD).encode(), 1)
    client("sqs", endpoint_url).send_message(QueueUrl=buffer_url, MessageBody=body)
    emulator.add_fault(status=503)

    handled = []

    def handle_visible_messages() -> bool:
        messages = receive(endpoint_url, buffer_url)
        if messages:
            handled.append(buffer_app.lambda_handler(sqs_event(messages, buffer_url), Context()))
        return bool(receive_dead_letters(endpoint_url, dlq_url, keep=True))

    wait_until(handle_visible_messages, 30.0, "the message never reached the dead-letter queue")

    assert len(handled) == MAX_RECEIVE_COUNT
    dead = receive_dead_letters(endpoint_url, dlq_url)
    assert [message["Body"] for message in dead] == [body]
    assert emulator.level("powerplant", 1)["users"][0]["id"] == 2


def receive_dead_letters(endpoint_url, dlq_url, keep=False) -> list[dict]:
    sqs = client("sqs", endpoint_url)
    messages = sqs.receive_message(
        QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=0 if keep else 30
    ).get("Messages", [])
    return messages


def test_rejected_message_goes_to_dead_letter_queue_at_once(endpoint_url, queues, lambda_environment, emulator):
    _, buffer_url, dlq_url = queues
    client("sqs", endpoint_url).send_message(QueueUrl=buffer_url, MessageBody=envelope(b"not json", 1))

    messages = receive(endpoint_url, buffer_url)
    response = buffer_app.lambda_handler(sqs_event(messages, buffer_url), Context())

    assert response == {"batchItemFailures": []}
    dead = receive_dead_letters(endpoint_url, dlq_url)
    assert len(dead) == 1
    assert dead[0]["MessageAttributes"]["reason"]["StringValue"] == "not_json"
    assert base64.b64decode(json.loads(dead[0]["Body"])["payload_b64"]) == b"not json"


def test_secret_is_read_once_per_container(endpoint_url, lambda_environment, emulator):
    event = {
        "payload_b64": base64.b64encode(json.dumps(SEED_PAYLOAD).encode()).decode(),
        "topic": "user/logins",
        "received_at_ms": 1,
    }
    assert mqtt_app.lambda_handler(event, Context())["outcome"] == "applied"

    # Rotate the key in both places: this container keeps the key it read at init.
    client("secretsmanager", endpoint_url).put_secret_value(
        SecretId=lambda_environment["ILERT_API_KEY_SECRET"], SecretString="rotated-key"
    )
    emulator.set_api_key("rotated-key")
    emulator.clear_journal()
    with pytest.raises(RetryLater):
        mqtt_app.lambda_handler({**event, "received_at_ms": 2}, Context())
    assert [entry["authorization_ok"] for entry in emulator.journal()] == [False]

    # A new container reads the rotated secret.
    runtime_module.reset()
    parameters.clear_caches()
    assert mqtt_app.lambda_handler({**event, "received_at_ms": 3}, Context())["outcome"] == "unchanged"
