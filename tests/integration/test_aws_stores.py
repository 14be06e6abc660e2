"""The DynamoDB ordering store, the SQS dead-letter sink and the Lambda runtime builder against a moto server."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ClientError

from policy_sync import runtime as runtime_module
from policy_sync.aws import (
    ORDERING_RECORD_TTL_S,
    DynamoDbOrderingStore,
    SqsDeadLetterSink,
    build_lambda_runtime,
    read_api_key,
)
from policy_sync.dead_letters import DeadLetter
from policy_sync.ordering import CLAIM_TTL_S, ClaimResult
from policy_sync.settings import ConfigError
from tests import moto_server
from tests.moto_server import FAKE_CREDENTIALS, client, create_queues, create_resources, receive_all

START_MS = 1_764_871_200_000
CLAIM_TTL_MS = CLAIM_TTL_S * 1000


@pytest.fixture(scope="module")
def endpoint_url():
    with moto_server.moto_server() as url:
        yield url


@pytest.fixture()
def aws_env(endpoint_url, monkeypatch):
    """Aim every boto3 client of this process at the moto server, with fake credentials."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)
    # Powertools keeps one Secrets Manager client and its cache per process; start each test afresh.
    parameters.clear_caches()
    yield endpoint_url
    parameters.clear_caches()


class FakeClock:
    """A settable millisecond clock, so claim expiry is tested without waiting."""

    def __init__(self, now_ms: int):
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture()
def clock():
    return FakeClock(START_MS)


@pytest.fixture()
def store(endpoint_url, clock):
    table = moto_server.create_ordering_table(endpoint_url, f"ordering-{uuid.uuid4().hex[:8]}")
    return DynamoDbOrderingStore(table, client("dynamodb", endpoint_url), clock_ms=clock)


def read_item(store: DynamoDbOrderingStore, key: str) -> dict:
    return store.client.get_item(TableName=store.table_name, Key={"level_key": {"S": key}}, ConsistentRead=True).get(
        "Item", {}
    )


# DynamoDbOrderingStore


def test_claim_on_new_level_is_granted(store):
    assert store.claim("powerplant", 1, START_MS, "owner-a") is ClaimResult.GRANTED

    item = read_item(store, "powerplant#1")
    assert item["claim_owner"] == {"S": "owner-a"}
    assert int(item["claim_expires_ms"]["N"]) == START_MS + CLAIM_TTL_MS
    assert "last_applied_ms" not in item


def test_claim_sets_ttl_thirty_days_ahead(store):
    store.claim("powerplant", 1, START_MS, "owner-a")

    item = read_item(store, "powerplant#1")
    assert int(item["expires_at"]["N"]) == START_MS // 1000 + ORDERING_RECORD_TTL_S
    assert ORDERING_RECORD_TTL_S == 30 * 24 * 3600


def test_claim_held_by_other_owner_is_busy(store):
    assert store.claim("powerplant", 1, START_MS, "owner-a") is ClaimResult.GRANTED

    assert store.claim("powerplant", 1, START_MS + 5, "owner-b") is ClaimResult.BUSY
    assert read_item(store, "powerplant#1")["claim_owner"] == {"S": "owner-a"}


def test_claim_older_than_last_applied_is_superseded(store):
    store.claim("powerplant", 1, START_MS + 2000, "owner-a")
    store.release("powerplant", 1, "owner-a", START_MS + 2000)

    assert store.claim("powerplant", 1, START_MS + 1000, "owner-b") is ClaimResult.SUPERSEDED
    assert "claim_owner" not in read_item(store, "powerplant#1")


def test_claim_older_than_last_applied_is_superseded_while_level_is_busy(store):
    store.claim("powerplant", 1, START_MS + 2000, "owner-a")
    store.release("powerplant", 1, "owner-a", START_MS + 2000)
    store.claim("powerplant", 1, START_MS + 3000, "owner-b")

    # An older message can never succeed, so it must not wait behind the claim.
    assert store.claim("powerplant", 1, START_MS + 1000, "owner-c") is ClaimResult.SUPERSEDED


def test_claim_at_same_ms_as_last_applied_is_granted(store):
    store.claim("powerplant", 1, START_MS, "owner-a")
    store.release("powerplant", 1, "owner-a", START_MS)

    assert store.claim("powerplant", 1, START_MS, "owner-b") is ClaimResult.GRANTED


def test_claim_newer_than_last_applied_is_granted(store):
    store.claim("powerplant", 1, START_MS, "owner-a")
    store.release("powerplant", 1, "owner-a", START_MS)

    assert store.claim("powerplant", 1, START_MS + 1, "owner-b") is ClaimResult.GRANTED


def test_expired_claim_is_taken_over(store, clock):
    store.claim("powerplant", 1, START_MS, "owner-a")

    clock.now_ms += CLAIM_TTL_MS - 1
    assert store.claim("powerplant", 1, START_MS + 1, "owner-b") is ClaimResult.BUSY

    clock.now_ms += 1
    assert store.claim("powerplant", 1, START_MS + 1, "owner-b") is ClaimResult.GRANTED
    assert read_item(store, "powerplant#1")["claim_owner"] == {"S": "owner-b"}


def test_release_after_takeover_keeps_new_owners_claim(store, clock):
    store.claim("powerplant", 1, START_MS, "owner-a")
    clock.now_ms += CLAIM_TTL_MS
    store.claim("powerplant", 1, START_MS + 1, "owner-b")

    store.release("powerplant", 1, "owner-a", None)

    assert read_item(store, "powerplant#1")["claim_owner"] == {"S": "owner-b"}
    assert store.claim("powerplant", 1, START_MS + 2, "owner-c") is ClaimResult.BUSY


def test_release_records_last_applied_and_drops_claim(store):
    store.claim("powerplant", 2, START_MS, "owner-a")

    store.release("powerplant", 2, "owner-a", START_MS)

    item = read_item(store, "powerplant#2")
    assert item["last_applied_ms"] == {"N": str(START_MS)}
    assert "claim_owner" not in item
    assert "claim_expires_ms" not in item


def test_release_without_applied_time_keeps_last_applied(store):
    store.claim("powerplant", 2, START_MS, "owner-a")
    store.release("powerplant", 2, "owner-a", START_MS)
    store.claim("powerplant", 2, START_MS + 10, "owner-b")

    store.release("powerplant", 2, "owner-b", None)

    item = read_item(store, "powerplant#2")
    assert item["last_applied_ms"] == {"N": str(START_MS)}
    assert "claim_owner" not in item


def test_release_never_lowers_last_applied(store, clock):
    store.claim("powerplant", 2, START_MS + 5000, "owner-a")
    store.release("powerplant", 2, "owner-a", START_MS + 5000)

    # An owner whose claim expired and who applied an older assignment meanwhile.
    store.release("powerplant", 2, "owner-b", START_MS + 3000)

    assert read_item(store, "powerplant#2")["last_applied_ms"] == {"N": str(START_MS + 5000)}


def test_levels_and_routing_keys_are_independent(store):
    assert store.claim("powerplant", 1, START_MS, "owner-a") is ClaimResult.GRANTED
    assert store.claim("powerplant", 2, START_MS, "owner-b") is ClaimResult.GRANTED
    assert store.claim("powerplantthree50", 1, START_MS, "owner-c") is ClaimResult.GRANTED


def test_claim_on_missing_table_raises(endpoint_url, clock):
    store = DynamoDbOrderingStore("no-such-table", client("dynamodb", endpoint_url), clock_ms=clock)

    with pytest.raises(ClientError):
        store.claim("powerplant", 1, START_MS, "owner-a")


# SqsDeadLetterSink


@pytest.fixture()
def dead_letter_queue(endpoint_url):
    _, dlq_url = create_queues(endpoint_url, f"sink-{uuid.uuid4().hex[:8]}")
    return dlq_url


def test_dead_letter_body_is_a_buffer_envelope(endpoint_url, dead_letter_queue):
    sink = SqsDeadLetterSink(dead_letter_queue, client("sqs", endpoint_url))
    payload = b"not json at all"
    dead_letter = DeadLetter(
        payload=payload,
        reason="not_json",
        detail="Expecting value: line 1 column 1 (char 0)",
        received_at_ms=START_MS,
        coordinates={"topic": "user/logins"},
    )

    sink.put(dead_letter)

    [message] = receive_all(endpoint_url, dead_letter_queue)
    body = json.loads(message["Body"])
    assert base64.b64decode(body["payload_b64"]) == payload
    assert body["received_at_ms"] == START_MS
    assert body["topic"] == "user/logins"
    assert body["reason"] == "not_json"
    assert message["MessageAttributes"]["reason"]["StringValue"] == "not_json"
    assert message["MessageAttributes"]["detail"]["StringValue"] == dead_letter.detail


def test_dead_letter_of_kafka_tombstone_keeps_coordinates(endpoint_url, dead_letter_queue):
    sink = SqsDeadLetterSink(dead_letter_queue, client("sqs", endpoint_url))
    coordinates = {"source": "kafka", "topic": "user-logins", "partition": 0, "offset": 7}

    sink.put(DeadLetter(None, "bad_event", "", START_MS, coordinates))

    [message] = receive_all(endpoint_url, dead_letter_queue)
    body = json.loads(message["Body"])
    assert body["payload_b64"] is None
    assert body["partition"] == 0
    assert body["offset"] == 7
    assert body["source"] == "kafka"
    # SQS takes no empty attribute value, so an empty detail has no attribute.
    assert "detail" not in message["MessageAttributes"]


def test_dead_letter_to_missing_queue_raises(endpoint_url):
    queue_url = f"{endpoint_url}/123456789012/no-such-queue"
    sink = SqsDeadLetterSink(queue_url, client("sqs", endpoint_url))

    with pytest.raises(ClientError):
        sink.put(DeadLetter(b"{}", "not_json", "x", START_MS))


# read_api_key


def new_secret(endpoint_url: str, secret_string: str) -> str:
    name = f"ilert-api-key-{uuid.uuid4().hex[:8]}"
    moto_server.create_secret(endpoint_url, name, secret_string)
    return name


@pytest.mark.parametrize(
    "secret_string",
    [
        "il1api0123456789",
        "  il1api0123456789\n",
        "Bearer il1api0123456789",
        '{"api_key": "il1api0123456789"}',
        '{"api_key": "Bearer il1api0123456789", "note": "rotated by ops"}',
    ],
)
def test_read_api_key_accepts_plain_json_and_bearer(aws_env, secret_string):
    assert read_api_key(new_secret(aws_env, secret_string)) == "il1api0123456789"


def test_read_api_key_by_arn(aws_env):
    arn = moto_server.create_secret(aws_env, f"by-arn-{uuid.uuid4().hex[:8]}", "il1api0123456789")

    assert read_api_key(arn) == "il1api0123456789"


def test_read_api_key_json_without_field_raises(aws_env):
    name = new_secret(aws_env, '{"key": "il1api0123456789"}')

    with pytest.raises(ConfigError, match="api_key") as raised:
        read_api_key(name)
    assert "il1api0123456789" not in str(raised.value)


def test_read_api_key_empty_key_raises(aws_env):
    with pytest.raises(ConfigError, match="missing API key"):
        read_api_key(new_secret(aws_env, '{"api_key": "Bearer  "}'))


def test_read_api_key_missing_secret_names_it(aws_env):
    with pytest.raises(ConfigError, match="no-such-secret"):
        read_api_key("no-such-secret")


# build_lambda_runtime


@pytest.fixture()
def lambda_environ(aws_env):
    resources = create_resources(aws_env, f"rt-{uuid.uuid4().hex[:8]}", "il1api0123456789")
    return {**resources.environment(), "POLICY_ROUTING_KEYS": "location", "ILERT_API_URL": "http://127.0.0.1:9"}


def test_build_lambda_runtime_wires_aws_stores(lambda_environ):
    runtime = build_lambda_runtime(lambda_environ)

    assert runtime.settings.routing_keys == ("location",)
    assert runtime.settings.ilert_url == "http://127.0.0.1:9"
    assert isinstance(runtime.ordering, DynamoDbOrderingStore)
    assert runtime.ordering.table_name == lambda_environ["ORDERING_TABLE"]
    assert isinstance(runtime.dead_letters, SqsDeadLetterSink)
    assert runtime.dead_letters.queue_url == lambda_environ["DEAD_LETTER_QUEUE_URL"]
    assert "il1api0123456789" not in repr(runtime.client)


def test_build_lambda_runtime_stores_reach_moto(lambda_environ):
    runtime = build_lambda_runtime(lambda_environ)

    assert runtime.ordering.claim("powerplant", 0, START_MS, "owner-a") is ClaimResult.GRANTED
    runtime.dead_letters.put(DeadLetter(b"x", "not_json", "x", START_MS))
    assert len(receive_all(lambda_environ["AWS_ENDPOINT_URL"], lambda_environ["DEAD_LETTER_QUEUE_URL"])) == 1


@pytest.mark.parametrize("name", ["ILERT_API_KEY_SECRET", "ORDERING_TABLE", "DEAD_LETTER_QUEUE_URL"])
def test_build_lambda_runtime_missing_variable_names_it(lambda_environ, name):
    environ = {key: value for key, value in lambda_environ.items() if key != name}

    with pytest.raises(ConfigError, match=f"missing environment variable {name}"):
        build_lambda_runtime(environ)


def test_build_lambda_runtime_empty_variable_counts_as_missing(lambda_environ):
    with pytest.raises(ConfigError, match="ORDERING_TABLE"):
        build_lambda_runtime({**lambda_environ, "ORDERING_TABLE": " "})


def test_build_lambda_runtime_without_routing_keys_raises(lambda_environ):
    environ = {key: value for key, value in lambda_environ.items() if key != "POLICY_ROUTING_KEYS"}

    with pytest.raises(ConfigError, match="POLICY_ROUTING_KEYS"):
        build_lambda_runtime(environ)


def test_runtime_current_builds_from_os_environ(lambda_environ, monkeypatch):
    for name, value in lambda_environ.items():
        monkeypatch.setenv(name, value)
    runtime_module.reset()
    try:
        assert isinstance(runtime_module.current().ordering, DynamoDbOrderingStore)
    finally:
        runtime_module.reset()
