"""local_runner with --concurrency: routing keys in parallel, each level strictly in order.

Several assignments per level are published in order while every API call
is slowed down and a share of them fails. At the end each level must have
the newest assignment, and the PUTs of each level must never go back to an
older one.
"""

from __future__ import annotations

import json
import uuid

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaProducer
from paho.mqtt.enums import CallbackAPIVersion

from ilert_emulator.testing import EmulatorProcess, make_seed
from local_runner.testing import RunnerProcess
from tests.services import create_topic, kafka_bootstrap, mqtt_port, require_kafka, require_mosquitto, wait_until

pytestmark = pytest.mark.brokers

API_KEY = "demo-key"
POLICIES = 6
ASSIGNMENTS_PER_LEVEL = 4
APPLY_TIMEOUT_S = 120.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def build_stream(seed: dict) -> list[tuple[str, int, dict]]:
    """Return (routing key, k, payload) in publish order: the k-th assignment of a level names user k."""
    emails = {user["id"]: user["email"] for user in seed["users"]}
    stream = []
    for k in range(1, ASSIGNMENTS_PER_LEVEL + 1):
        for policy in seed["policies"]:
            payload = {"location": policy["routingKey"], "data": {"email": emails[k], "shift": 0}}
            stream.append((policy["routingKey"], k, payload))
    return stream


def publish_mqtt(topic: str, stream) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=unique("publisher"))
    client.connect("127.0.0.1", mqtt_port())
    client.loop_start()
    try:
        for _, _, payload in stream:
            client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def publish_kafka(topic: str, stream) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap())
    try:
        for routing_key, _, payload in stream:
            # Keyed by routing key, so one level stays in one partition and in order.
            producer.send(topic, key=routing_key.encode(), value=json.dumps(payload).encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def put_user_sequences(emulator: EmulatorProcess) -> dict[str, list[int]]:
    """Return, per level path, the user ids of the successful PUTs in arrival order."""
    sequences: dict[str, list[int]] = {}
    for entry in emulator.journal():
        if entry["method"] == "PUT" and entry["status"] == 200:
            sequences.setdefault(entry["path"], []).append(entry["body"]["users"][0]["id"])
    return sequences


def levels_at_newest(emulator: EmulatorProcess) -> bool:
    return all(
        [user["id"] for user in policy["escalationRules"][0]["users"]] == [ASSIGNMENTS_PER_LEVEL]
        for policy in emulator.state()["policies"]
    )


@pytest.mark.parametrize("source", ["mqtt-buffered", "kafka"])
def test_concurrent_sync_keeps_each_level_in_order(tmp_path, source):
    seed = make_seed(policies=POLICIES, users=ASSIGNMENTS_PER_LEVEL + 2, levels=1, api_key=API_KEY)
    # Start every level at a user no assignment names, so each assignment is a change.
    for policy in seed["policies"]:
        policy["escalationRules"][0]["users"] = [{"id": ASSIGNMENTS_PER_LEVEL + 2}]
    stream = build_stream(seed)
    topic = unique("shifts")

    with EmulatorProcess(seed) as emulator:
        emulator.add_fault(latency_ms=50)
        emulator.add_fault(status=503, ratio=0.2, seed=7)
        args = ["-v", "--policy_topic", topic, "--policy_routing_keys", "location",
                "--ilert_url", emulator.url, "--concurrency", "4"]  # fmt: skip
        if source == "kafka":
            require_kafka()
            create_topic(topic, 2)
            args += ["--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", unique("group")]
        else:
            require_mosquitto()
            args += ["-m", "127.0.0.1", "-q", str(mqtt_port()), "-n", unique("runner"), "--mqtt_buffer"]

        with RunnerProcess(args, tmp_path / "runner.db3", API_KEY) as runner:
            runner.wait_ready()
            if source == "kafka":
                publish_kafka(topic, stream)
            else:
                publish_mqtt(topic, stream)
            wait_until(
                lambda: levels_at_newest(emulator),
                APPLY_TIMEOUT_S,
                f"not every level reached its newest assignment; output:\n{runner.output()[-3000:]}",
            )
            assert runner.stop() == 0

        sequences = put_user_sequences(emulator)
        assert len(sequences) == POLICIES
        for path, user_ids in sequences.items():
            assert user_ids == sorted(user_ids), f"{path} went back to an older assignment: {user_ids}"
            assert user_ids[-1] == ASSIGNMENTS_PER_LEVEL
