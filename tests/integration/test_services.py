"""Checks that the brokers started by scripts/services.sh work as the other tests expect."""

from __future__ import annotations

import queue
import ssl
import threading
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer, KafkaProducer

from tests import services

pytestmark = pytest.mark.brokers

TIMEOUT_S = 20.0


@dataclass
class ConnectResult:
    """First connection event of an MQTT client: CONNACK, disconnect or exception."""

    connected: bool
    detail: str
    session_present: bool = False


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_client(client_id: str, clean_session: bool = True) -> mqtt.Client:
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )


def connect_and_wait(client: mqtt.Client, port: int) -> ConnectResult:
    """Connect `client`, start its network loop and wait for the first connection event.

    The loop keeps running after a successful connection; the caller stops it.
    """
    events: queue.Queue[ConnectResult] = queue.Queue()

    def on_connect(client, userdata, flags, reason_code, properties):
        events.put(
            ConnectResult(not reason_code.is_failure, f"CONNACK {reason_code}", flags.session_present)
        )

    def on_disconnect(client, userdata, flags, reason_code, properties):
        events.put(ConnectResult(False, f"disconnected: {reason_code}"))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(services.mqtt_host(), port, keepalive=30)
    except (OSError, ssl.SSLError) as error:
        return ConnectResult(False, f"connect raised {error!r}")
    client.loop_start()
    try:
        return events.get(timeout=TIMEOUT_S)
    except queue.Empty:
        client.loop_stop()
        pytest.fail(f"no CONNACK or disconnect from 127.0.0.1:{port} within {TIMEOUT_S}s")


def stop_client(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def subscribe_and_wait(client: mqtt.Client, topic: str, qos: int) -> None:
    subscribed = threading.Event()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if all(not code.is_failure for code in reason_codes):
            subscribed.set()

    client.on_subscribe = on_subscribe
    client.subscribe(topic, qos=qos)
    assert subscribed.wait(TIMEOUT_S), f"SUBACK for {topic!r} missing or a failure"


def collect_messages(client: mqtt.Client) -> queue.Queue[mqtt.MQTTMessage]:
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client.on_message = lambda client, userdata, message: received.put(message)
    return received


def publish_qos1(port: int, topic: str, payload: bytes) -> None:
    publisher = new_client(unique_name("publisher"))
    result = connect_and_wait(publisher, port)
    assert result.connected, result.detail
    try:
        info = publisher.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT_S)
        assert info.is_published(), f"PUBACK for {topic!r} not received within {TIMEOUT_S}s"
    finally:
        stop_client(publisher)


@pytest.fixture(scope="module", autouse=True)
def brokers_running():
    services.require_mosquitto()
    services.require_kafka()


def test_mqtt_plain_publish_reaches_subscriber():
    topic = unique_name("policy-sync/test/plain")
    subscriber = new_client(unique_name("subscriber"))
    received = collect_messages(subscriber)
    result = connect_and_wait(subscriber, services.mqtt_port())
    assert result.connected, result.detail
    try:
        subscribe_and_wait(subscriber, topic, qos=1)
        publish_qos1(services.mqtt_port(), topic, b'{"data": {"shift": 1}}')

        message = received.get(timeout=TIMEOUT_S)
        assert message.topic == topic
        assert message.payload == b'{"data": {"shift": 1}}'
    finally:
        stop_client(subscriber)


def test_mqtt_plain_accepts_10_mb_payload():
    topic = unique_name("policy-sync/test/large")
    payload = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    subscriber = new_client(unique_name("subscriber"))
    received = collect_messages(subscriber)
    result = connect_and_wait(subscriber, services.mqtt_port())
    assert result.connected, result.detail
    try:
        subscribe_and_wait(subscriber, topic, qos=1)
        publish_qos1(services.mqtt_port(), topic, payload)

        message = received.get(timeout=TIMEOUT_S)
        assert len(message.payload) == len(payload)
        assert message.payload == payload
    finally:
        stop_client(subscriber)


def test_mqtt_tls_with_client_certificate_connects():
    certs = services.certs_dir()
    client = new_client(unique_name("tls-client"))
    client.tls_set(
        ca_certs=str(certs / "ca.crt"),
        certfile=str(certs / "client.crt"),
        keyfile=str(certs / "client.key"),
    )
    result = connect_and_wait(client, services.mqtt_tls_port())
    try:
        assert result.connected, result.detail
    finally:
        stop_client(client)


def test_mqtt_tls_verifies_server_with_strict_default_context():
    # ssl.create_default_context checks the certificate chain and the
    # 127.0.0.1 subject alternative name, as a careful client would.
    certs = services.certs_dir()
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    client = new_client(unique_name("tls-strict-client"))
    client.tls_set_context(context)
    result = connect_and_wait(client, services.mqtt_tls_port())
    try:
        assert result.connected, result.detail
    finally:
        stop_client(client)


def test_mqtt_tls_without_client_certificate_rejected():
    client = new_client(unique_name("tls-no-cert"))
    client.tls_set(ca_certs=str(services.certs_dir() / "ca.crt"))
    result = connect_and_wait(client, services.mqtt_tls_port())
    try:
        assert not result.connected, f"connection without a client certificate succeeded: {result.detail}"
    finally:
        client.loop_stop()


def test_mqtt_password_listener_accepts_valid_credentials():
    client = new_client(unique_name("auth-client"))
    client.username_pw_set(services.MQTT_USERNAME, services.MQTT_PASSWORD)
    result = connect_and_wait(client, services.mqtt_auth_port())
    try:
        assert result.connected, result.detail
    finally:
        stop_client(client)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (services.MQTT_USERNAME, "wrong-password"),
        ("unknown-user", services.MQTT_PASSWORD),
        (None, None),
    ],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_mqtt_password_listener_rejects_bad_credentials(username, password):
    client = new_client(unique_name("auth-bad"))
    if username is not None:
        client.username_pw_set(username, password)
    client.reconnect_delay_set(min_delay=30, max_delay=30)
    result = connect_and_wait(client, services.mqtt_auth_port())
    try:
        assert not result.connected, f"connection with bad credentials succeeded: {result.detail}"
        assert "Not authorized" in result.detail, f"expected CONNACK 'Not authorized', got {result.detail}"
    finally:
        stop_client(client)


def test_kafka_record_round_trip_on_new_topic():
    topic = unique_name("policy-sync-test")
    services.create_topic(topic, partitions=2)

    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap(), acks="all")
    try:
        metadata = producer.send(topic, key=b"routing-key-1", value=b'{"data": {"shift": 2}}').get(
            timeout=TIMEOUT_S
        )
    finally:
        producer.close()
    assert metadata.topic == topic

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap(),
        group_id=unique_name("policy-sync-test-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        records = services.wait_until(
            lambda: [record for batch in consumer.poll(timeout_ms=500).values() for record in batch],
            timeout_s=30.0,
            message=f"no record consumed from {topic}",
        )
    finally:
        consumer.close()

    assert len(records) == 1
    assert records[0].key == b"routing-key-1"
    assert records[0].value == b'{"data": {"shift": 2}}'
    assert records[0].partition == metadata.partition
    assert records[0].offset == metadata.offset


def test_kafka_accepts_5_mb_record():
    topic = unique_name("policy-sync-test-large")
    services.create_topic(topic, partitions=1)
    value = bytes(range(256)) * (5 * 1024 * 1024 // 256)

    producer = KafkaProducer(
        bootstrap_servers=services.kafka_bootstrap(),
        acks="all",
        max_request_size=8 * 1024 * 1024,
    )
    try:
        producer.send(topic, value=value).get(timeout=TIMEOUT_S)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap(),
        group_id=unique_name("policy-sync-test-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        records = services.wait_until(
            lambda: [record for batch in consumer.poll(timeout_ms=500).values() for record in batch],
            timeout_s=30.0,
            message=f"no record consumed from {topic}",
        )
    finally:
        consumer.close()

    assert len(records) == 1
    assert records[0].value == value


def test_mosquitto_restart_keeps_queued_qos1_message():
    topic = unique_name("policy-sync/test/persistent")
    client_id = unique_name("persistent-subscriber")

    # Create a persistent session with a QoS 1 subscription, then go offline.
    subscriber = new_client(client_id, clean_session=False)
    result = connect_and_wait(subscriber, services.mqtt_port())
    assert result.connected, result.detail
    subscribe_and_wait(subscriber, topic, qos=1)
    stop_client(subscriber)

    # The broker queues this message for the offline session.
    publish_qos1(services.mqtt_port(), topic, b"queued-before-restart")

    services.restart_service("mosquitto")
    services.require_mosquitto()

    subscriber = new_client(client_id, clean_session=False)
    received = collect_messages(subscriber)
    result = connect_and_wait(subscriber, services.mqtt_port())
    assert result.connected, result.detail
    try:
        assert result.session_present, "the broker lost the persistent session in the restart"
        message = received.get(timeout=TIMEOUT_S)
        assert message.topic == topic
        assert message.payload == b"queued-before-restart"
        assert message.qos == 1
    finally:
        stop_client(subscriber)
