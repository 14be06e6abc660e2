"""The drain loop: feeds buffered messages to the MQTT handler in order, with backoff on *retry*."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from policy_sync.mapping import Assignment, map_message
from policy_sync.outcomes import RETRIES_EXHAUSTED, RetryLater
from policy_sync.settings import Settings

from local_runner.handlers import build_mqtt_event
from local_runner.store import BufferItem, SqliteBuffer, make_level_key, now_ms

logger = logging.getLogger(__name__)

# Maximum sleep while nothing is due. It bounds how late the drain notices a
# dead letter requeued by another process, because that process cannot wake it.
IDLE_WAIT_MAX_S = 1.0

# Pause after a failed SQLite read or write before the drain tries again.
STORE_ERROR_WAIT_S = 5.0

INTERNAL_ERROR = "internal_error"


def level_key_function(settings: Settings) -> Callable[[bytes | None], str | None]:
    """Return the function that gives a payload's level key, or None when it maps to no assignment."""

    def level_key_of(payload: bytes | None) -> str | None:
        if payload is None:
            return None
        mapped = map_message(payload, settings)
        if isinstance(mapped, Assignment):
            return make_level_key(mapped.routing_key, mapped.level)
        return None

    return level_key_of


class BufferDrain:
    """Takes due items from the buffer and calls the MQTT handler with each.

    With `concurrency` above 1, up to that many items run at once on a thread
    pool, never two for the same routing key and level. An item in flight
    stays in the buffer until done, so later items for its level wait. Any acknowledged outcome deletes the item. *retry* schedules the next
    attempt with backoff. Once the attempts reach `max_retries` (0 means no
    limit), the item moves to the dead letters with reason `retries_exhausted`.
    """

    def __init__(
        self,
        buffer: SqliteBuffer,
        max_retries: int,
        stop_event: threading.Event,
        invoke: Callable[[dict[str, Any]], dict[str, Any]],
        concurrency: int = 1,
    ):
        self._buffer = buffer
        self._concurrency = concurrency
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="drain") if concurrency > 1 else None
        # Ids of the items the pool is working on.
        self._in_flight: set[int] = set()
        self._in_flight_lock = threading.Lock()
        self._max_retries = max_retries
        self._stop_event = stop_event
        self._invoke = invoke
        self.wake_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="buffer-drain", daemon=True)

    def start(self) -> None:
        """Start draining in the background."""
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the loop to end; it ends after the item in flight once the stop event is set."""
        self.wake_event.set()
        self._thread.join(timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def is_alive(self) -> bool:
        """Return True while the loop runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        logger.info("buffer drain started", extra={"buffered": self._buffer.count()})
        while not self._stop_event.is_set():
            try:
                self._drain_once()
            except sqlite3.Error:
                logger.exception("buffer drain could not use the SQLite file; trying again")
                self._stop_event.wait(STORE_ERROR_WAIT_S)
        logger.info("buffer drain stopped")

    def _drain_once(self) -> None:
        self._buffer.fill_level_keys()
        if self._pool is not None:
            self._dispatch_to_pool()
            return
        item = self._buffer.next_due(now_ms())
        if item is None:
            self._wait_for_next_item()
            return
        self.process(item)

    def _dispatch_to_pool(self) -> None:
        with self._in_flight_lock:
            in_flight = set(self._in_flight)
        free = self._concurrency - len(in_flight)
        items = self._buffer.next_due_items(free, in_flight, now_ms()) if free > 0 else []
        if not items:
            if in_flight:
                # A finishing item sets wake_event, which may free its level for the next one.
                self.wake_event.wait(IDLE_WAIT_MAX_S)
                self.wake_event.clear()
            else:
                self._wait_for_next_item()
            return
        with self._in_flight_lock:
            self._in_flight.update(item.id for item in items)
        for item in items:
            self._pool.submit(self._process_in_pool, item)

    def _process_in_pool(self, item: BufferItem) -> None:
        try:
            self.process(item)
        except Exception:
            # The item stays in the buffer (e.g. a failed SQLite write) and is taken again.
            logger.exception("buffer drain worker failed", extra={"buffer_id": item.id})
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(item.id)
            self.wake_event.set()

    def _wait_for_next_item(self) -> None:
        due_at_ms = self._buffer.next_due_at_ms()
        wait_s = IDLE_WAIT_MAX_S
        if due_at_ms is not None:
            wait_s = min(max((due_at_ms - now_ms()) / 1000, 0.0), IDLE_WAIT_MAX_S)
        self.wake_event.wait(wait_s)
        self.wake_event.clear()

    def process(self, item: BufferItem) -> None:
        """Call the handler with one item and record the result in the buffer."""
        event = build_mqtt_event(item.payload, item.topic, item.received_at_ms, sequence=item.id)
        try:
            self._invoke(event)
        except RetryLater as retry:
            self._record_retry(item, retry.outcome.reason, retry.outcome.detail, retry.outcome.retry_after_s)
            return
        except Exception as error:
            # A defect must not lose the message: keep it and retry, so that
            # --max_retries ends in a dead letter instead of a loop forever.
            logger.exception("MQTT handler failed on a buffer item", extra={"buffer_id": item.id})
            self._record_retry(item, INTERNAL_ERROR, f"{type(error).__name__}: {error}", None)
            return
        self._buffer.delete(item.id)

    def _record_retry(self, item: BufferItem, reason: str | None, detail: str, retry_after_s: float | None) -> None:
        attempts = self._buffer.mark_retry(item.id, reason, retry_after_s)
        fields = {"buffer_id": item.id, "attempts": attempts, "reason": reason, "topic": item.topic}
        if self._max_retries and attempts >= self._max_retries:
            detail = f"gave up after {attempts} attempts; last reason {reason}: {detail}"
            dead_letter_id = self._buffer.move_to_dead_letters(item.id, RETRIES_EXHAUSTED, detail)
            logger.warning("buffer item moved to dead letters", extra={**fields, "dead_letter_id": dead_letter_id})
            return
        logger.info("buffer item scheduled for retry", extra=fields)
