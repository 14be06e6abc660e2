"""The MQTT consumer: a persistent session with manual acknowledgement (paho-mqtt 2.x, MQTT 3.1.1).

Direct mode calls the MQTT handler from `on_message` and acknowledges only an
acknowledged outcome. On *retry* it withholds the acknowledgement,
disconnects and reconnects after a backoff; the broker keeps the message in
the session and delivers it again.

Buffered mode (`--mqtt_buffer`) writes each message to the SQLite buffer and
acknowledges it once the write is committed; the drain loop calls the handler.

Every paho callback catches its own exceptions: an exception escaping a
callback would end paho's network loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from policy_sync.backoff import backoff_delay_s
from policy_sync.outcomes import RetryLater

from local_runner.cli import MqttOptions
from local_runner.handlers import build_mqtt_event
from local_runner.health import Readiness
from local_runner.store import SqliteBuffer, now_ms

logger = logging.getLogger(__name__)

READINESS_NAME = "mqtt"
KEEPALIVE_S = 60

# Reconnect backoff after a lost connection: paho doubles from 1 s up to 30 s.
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30


class MqttConsumer:
    """Subscribes to the policy topic and feeds messages to the handler or the buffer."""

    def __init__(
        self,
        options: MqttOptions,
        readiness: Readiness,
        stop_event: threading.Event,
        invoke: Callable[[dict[str, Any]], dict[str, Any]],
        buffer: SqliteBuffer | None = None,
        on_buffered: Callable[[], None] | None = None,
    ):
        if options.buffered and buffer is None:
            raise ValueError("buffered MQTT mode needs a buffer")
        self._options = options
        self._readiness = readiness
        self._stop_event = stop_event
        self._invoke = invoke
        self._buffer = buffer if options.buffered else None
        self._on_buffered = on_buffered or (lambda: None)

        # Set while a retry is pending: later messages are not processed, so
        # they come again after the reconnect, in order, behind the failed one.
        self._withholding = False
        self._failed_attempts = 0
        # Orders stop() against a new connect, so that a stop never misses a session.
        self._session_lock = threading.Lock()
        self._reconnect_wait_s = 0.0

        self._client = self._build_client()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        readiness.register(READINESS_NAME)

    def _build_client(self) -> mqtt.Client:
        options = self._options
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        if options.tls:
            client.tls_set(
                ca_certs=options.ca_file,
                certfile=options.client_cert_file,
                keyfile=options.client_key_file,
            )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect and consume in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Disconnect (the session and its unacknowledged messages stay on the broker).

        Call after setting the stop event, so that no new connection is started.
        """
        with self._session_lock:
            self._client.disconnect()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the network thread to end."""
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        """Return True while the network thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        mode = "buffered" if self._buffer is not None else "direct"
        logger.info(
            "MQTT consumer starting",
            extra={
                "host": self._options.host,
                "port": self._options.port,
                "client_id": self._options.client_id,
                "subscription": self._options.subscription,
                "qos": self._options.qos,
                "mode": mode,
                "tls": self._options.tls,
            },
        )
        while not self._stop_event.is_set():
            self._run_session()
            self._readiness.set(READINESS_NAME, False)
            if self._stop_event.is_set():
                break
            wait_s = self._reconnect_wait_s or RECONNECT_MIN_DELAY_S
            logger.info("MQTT reconnecting after a pause", extra={"wait_s": wait_s})
            self._stop_event.wait(wait_s)
            self._withholding = False
            self._reconnect_wait_s = 0.0
        logger.info("MQTT consumer stopped")

    def _run_session(self) -> None:
        """Connect and run paho's loop until a deliberate disconnect or an error in the loop."""
        try:
            with self._session_lock:
                if self._stop_event.is_set():
                    return
                self._client.connect_async(self._options.host, self._options.port, keepalive=KEEPALIVE_S)
            # loop_forever reconnects by itself after a lost connection and
            # returns only after disconnect(), which we call for a retry and on stop.
            self._client.loop_forever(retry_first_connection=True)
        except Exception:
            logger.exception("MQTT network loop failed; reconnecting")
            self._reconnect_wait_s = RECONNECT_MAX_DELAY_S

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                logger.error(
                    "MQTT broker rejected the connection",
                    extra={"reason_code": str(reason_code), "host": self._options.host, "port": self._options.port},
                )
                return
            logger.info(
                "MQTT connected",
                extra={"session_present": flags.session_present, "client_id": self._options.client_id},
            )
            # Subscribe on every connect: a broker that lost the session
            # (restart without persistence) would otherwise send nothing.
            result, _ = client.subscribe(self._options.subscription, qos=self._options.qos)
            if result != mqtt.MQTT_ERR_SUCCESS:
                logger.error("MQTT subscribe request failed", extra={"error": mqtt.error_string(result)})
        except Exception:
            self._fail_callback("on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata) -> None:
        try:
            # paho passes no reason to this callback; its own log (-vvv) has the socket error.
            logger.warning(
                "MQTT connection failed (broker down, refused or unreachable); paho retries with backoff",
                extra={"host": self._options.host, "port": self._options.port},
            )
            self._readiness.set(READINESS_NAME, False)
        except Exception:
            self._fail_callback("on_connect_fail")

    def _on_subscribe(self, client: mqtt.Client, userdata, mid, reason_code_list, properties) -> None:
        try:
            failed = [code for code in reason_code_list if code.is_failure]
            if failed:
                logger.error(
                    "MQTT broker rejected the subscription",
                    extra={"subscription": self._options.subscription, "reason_codes": [str(c) for c in failed]},
                )
                self._readiness.set(READINESS_NAME, False)
                return
            granted = [code.value for code in reason_code_list]
            if any(qos < self._options.qos for qos in granted):
                logger.warning(
                    "MQTT broker granted a lower QoS than requested",
                    extra={"requested_qos": self._options.qos, "granted_qos": granted},
                )
            logger.info("MQTT subscribed", extra={"subscription": self._options.subscription, "granted_qos": granted})
            self._readiness.set(READINESS_NAME, True)
        except Exception:
            self._fail_callback("on_subscribe")

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        try:
            self._readiness.set(READINESS_NAME, False)
            if self._stop_event.is_set() or self._withholding:
                logger.info("MQTT disconnected", extra={"reason_code": str(reason_code)})
            else:
                logger.warning("MQTT connection lost; reconnecting", extra={"reason_code": str(reason_code)})
        except Exception:
            self._fail_callback("on_disconnect")

    def _on_message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        try:
            if self._withholding or self._stop_event.is_set():
                return  # not acknowledged: the broker delivers it again after the reconnect
            if self._buffer is not None:
                self._buffer_message(client, message)
            else:
                self._handle_message(client, message)
        except Exception:
            self._fail_callback("on_message")
            self._withhold_and_reconnect(None)

    def _handle_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        event = build_mqtt_event(message.payload, message.topic, now_ms())
        try:
            self._invoke(event)
        except RetryLater as retry:
            logger.info(
                "MQTT message not acknowledged; the broker will deliver it again",
                extra={"topic": message.topic, "mid": message.mid, "reason": retry.outcome.reason},
            )
            self._withhold_and_reconnect(retry.outcome.retry_after_s)
            return
        client.ack(message.mid, message.qos)
        self._failed_attempts = 0

    def _buffer_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        try:
            item_id = self._buffer.enqueue("mqtt", message.topic, message.payload, now_ms())
        except sqlite3.Error:
            logger.exception(
                "could not write the MQTT message to the buffer; not acknowledged",
                extra={"topic": message.topic, "mid": message.mid},
            )
            self._withhold_and_reconnect(None)
            return
        client.ack(message.mid, message.qos)
        self._failed_attempts = 0
        logger.debug("MQTT message buffered", extra={"topic": message.topic, "buffer_id": item_id})
        self._on_buffered()

    def _withhold_and_reconnect(self, retry_after_s: float | None) -> None:
        """Stop processing, disconnect and schedule the reconnect after a backoff."""
        if self._withholding:
            return
        self._withholding = True
        self._failed_attempts += 1
        self._reconnect_wait_s = backoff_delay_s(self._failed_attempts, retry_after_s)
        self._readiness.set(READINESS_NAME, False)
        self._client.disconnect()

    def _fail_callback(self, name: str) -> None:
        logger.exception("error in MQTT callback %s", name)
        self._readiness.set(READINESS_NAME, False)
