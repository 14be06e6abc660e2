"""The Kafka consumer: polls batches, calls the Kafka handler with an MSK event, commits what is done.

Offsets are committed per partition only up to the first record the handler
reported as failed. A partition with a failure is sought back to that record
and paused for a backoff (doubling per failure, capped at 60 s), while the
loop keeps polling so the consumer stays in its group. A rebalance drops the
pause state, because the new owner starts from the committed offset, which is
the failed record.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from policy_sync.backoff import backoff_delay_s

from local_runner.cli import KafkaOptions
from local_runner.context import LocalContext
from local_runner.health import Readiness

logger = logging.getLogger(__name__)

READINESS_NAME = "kafka"

MAX_POLL_RECORDS = 100
MAX_POLL_INTERVAL_MS = 300_000
POLL_TIMEOUT_MS = 1_000
# kafka-python's default session timeout is 45 s: a daemon restarted after a
# crash would wait that long for the group to expire its old member. 10 s is
# above the broker's default group.min.session.timeout.ms (6 s).
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 3_000

# Budget of one handler call. The handler stops taking new records when less
# than its reserve (10 s by default) is left, so one batch ends well within
# MAX_POLL_INTERVAL_MS and the group does not evict the consumer.
BATCH_BUDGET_MS = MAX_POLL_INTERVAL_MS // 2

# Wait after an error in the poll loop (e.g. the consumer could not be created).
LOOP_ERROR_WAIT_S = 5.0

TIMESTAMP_TYPES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}


def encode_bytes(data: bytes | None) -> str | None:
    """Return base64 text, keeping None (a null key or a tombstone value) as None."""
    return None if data is None else base64.b64encode(data).decode("ascii")


def build_msk_record(record: Any) -> dict[str, Any]:
    """Convert a kafka-python ConsumerRecord to the record shape of an MSK event."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": TIMESTAMP_TYPES.get(record.timestamp_type, "CREATE_TIME"),
        "key": encode_bytes(record.key),
        "value": encode_bytes(record.value),
        "headers": [{name: list(value or b"")} for name, value in (record.headers or [])],
    }


def build_msk_event(batch: dict[TopicPartition, list], options: KafkaOptions) -> dict[str, Any]:
    """Build the MSK event Lambda would receive for this poll result, keyed by `<topic>-<partition>`."""
    records = {
        f"{partition.topic}-{partition.partition}": [build_msk_record(record) for record in partition_records]
        for partition, partition_records in batch.items()
        if partition_records
    }
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": f"arn:aws:kafka:local:000000000000:cluster/local-runner/{options.group_id}",
        "bootstrapServers": ",".join(options.brokers),
        "records": records,
    }


def first_failed_offsets(response: dict[str, Any]) -> dict[str, int]:
    """Return, per `<topic>-<partition>`, the lowest offset listed in batchItemFailures."""
    failed: dict[str, int] = {}
    for failure in response.get("batchItemFailures") or []:
        identifier = failure["itemIdentifier"]
        partition_id, offset = identifier["partition"], int(identifier["offset"])
        failed[partition_id] = min(offset, failed.get(partition_id, offset))
    return failed


class KafkaRunner(ConsumerRebalanceListener):
    """Consumes the policy topic in the consumer group and calls the Kafka handler per poll."""

    def __init__(
        self,
        options: KafkaOptions,
        readiness: Readiness,
        stop_event: threading.Event,
        invoke: Callable[[dict[str, Any], LocalContext], dict[str, Any]],
    ):
        self._options = options
        self._readiness = readiness
        self._stop_event = stop_event
        self._invoke = invoke
        self._consumer: KafkaConsumer | None = None
        # Paused partition -> monotonic time when it is resumed.
        self._paused_until: dict[TopicPartition, float] = {}
        # Partition -> consecutive batches that failed at the same offset, and that offset.
        self._failures: dict[TopicPartition, int] = {}
        self._failed_offsets: dict[TopicPartition, int] = {}
        self._thread = threading.Thread(target=self._run, name="kafka", daemon=True)
        readiness.register(READINESS_NAME)

    def start(self) -> None:
        """Consume in the background until the stop event is set."""
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the loop to finish its batch, commit and leave the group."""
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        """Return True while the loop runs."""
        return self._thread.is_alive()

    # ConsumerRebalanceListener

    def on_partitions_revoked(self, revoked) -> None:
        """Forget pause and backoff state of revoked partitions; their committed offsets stay."""
        try:
            for partition in revoked:
                self._paused_until.pop(partition, None)
                self._failures.pop(partition, None)
                self._failed_offsets.pop(partition, None)
            self._readiness.set(READINESS_NAME, False)
            logger.info("Kafka partitions revoked", extra={"partitions": format_partitions(revoked)})
        except Exception:
            logger.exception("error in Kafka rebalance callback on_partitions_revoked")

    def on_partitions_assigned(self, assigned) -> None:
        """Mark the consumer ready once the group has given it its partitions (possibly none)."""
        try:
            logger.info("Kafka partitions assigned", extra={"partitions": format_partitions(assigned)})
            self._readiness.set(READINESS_NAME, True)
        except Exception:
            logger.exception("error in Kafka rebalance callback on_partitions_assigned")

    # The loop

    def _run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._consume()
            except Exception:
                self._readiness.set(READINESS_NAME, False)
                logger.exception("Kafka consumer failed; starting it again")
                self._close()
                self._stop_event.wait(LOOP_ERROR_WAIT_S)
        self._close()
        logger.info("Kafka consumer stopped")

    def _consume(self) -> None:
        options = self._options
        logger.info(
            "Kafka consumer starting",
            extra={"brokers": ",".join(options.brokers), "group_id": options.group_id, "topic": options.topic},
        )
        self._consumer = KafkaConsumer(
            bootstrap_servers=list(options.brokers),
            group_id=options.group_id,
            client_id=f"local-runner-{options.group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        )
        self._paused_until.clear()
        self._failures.clear()
        self._failed_offsets.clear()
        self._consumer.subscribe([options.topic], listener=self)
        while not self._stop_event.is_set():
            self._resume_due_partitions()
            batch = self._consumer.poll(timeout_ms=self._poll_timeout_ms())
            if batch:
                self._process(batch)

    def _poll_timeout_ms(self) -> int:
        if not self._paused_until:
            return POLL_TIMEOUT_MS
        until_resume_ms = (min(self._paused_until.values()) - time.monotonic()) * 1000
        return int(min(max(until_resume_ms, 0), POLL_TIMEOUT_MS))

    def _resume_due_partitions(self) -> None:
        now = time.monotonic()
        due = [partition for partition, until in self._paused_until.items() if until <= now]
        if not due:
            return
        assigned = self._consumer.assignment()
        for partition in due:
            del self._paused_until[partition]
            if partition in assigned:
                self._consumer.resume(partition)
                drop_parked_records(self._consumer, partition)
        logger.info("Kafka partitions resumed", extra={"partitions": format_partitions(due)})

    def _process(self, batch: dict[TopicPartition, list]) -> None:
        """Call the handler with one poll's records, then commit and back off per partition."""
        event = build_msk_event(batch, self._options)
        context = LocalContext("kafka-handler", BATCH_BUDGET_MS, self._stop_event)
        response = self._invoke(event, context)
        failed = first_failed_offsets(response)

        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition, records in batch.items():
            if not records:
                continue
            partition_id = f"{partition.topic}-{partition.partition}"
            first_failed = failed.get(partition_id)
            if first_failed is None:
                offsets[partition] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
                self._failures.pop(partition, None)
                self._failed_offsets.pop(partition, None)
                continue
            if first_failed > records[0].offset:
                offsets[partition] = OffsetAndMetadata(first_failed, "", -1)
            self._back_off(partition, first_failed)

        self._commit(offsets)

    def _back_off(self, partition: TopicPartition, offset: int) -> None:
        """Seek back to the failed record and pause the partition for a backoff that doubles up to 60 s.

        The backoff doubles only while the partition keeps failing at the same
        offset. A failure further on means the records before it went
        through, so the count starts again and a flaky API does not park a
        partition that is making progress at the 60 s cap.
        A shutdown in the middle of a batch also reports the rest as failed.
        Then only the seek is needed, because the consumer closes after the commit.
        """
        self._consumer.seek(partition, offset)
        if self._stop_event.is_set():
            return
        if offset > self._failed_offsets.get(partition, -1):
            self._failures.pop(partition, None)
        self._failed_offsets[partition] = offset
        failures = self._failures.get(partition, 0) + 1
        self._failures[partition] = failures
        wait_s = backoff_delay_s(failures)
        self._consumer.pause(partition)
        self._paused_until[partition] = time.monotonic() + wait_s
        logger.info(
            "Kafka partition paused after a retry",
            extra={
                "partition": f"{partition.topic}-{partition.partition}",
                "offset": offset,
                "failures": failures,
                "wait_s": wait_s,
            },
        )

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as error:
            # Not fatal: the records after the last successful commit are
            # processed again (by us or the partition's next owner) and end as
            # unchanged or superseded.
            logger.warning(
                "Kafka offset commit failed; the records will be processed again",
                extra={"error": f"{type(error).__name__}: {error}", "offsets": format_offsets(offsets)},
            )
            return
        logger.debug("Kafka offsets committed", extra={"offsets": format_offsets(offsets)})

    def _close(self) -> None:
        """Close the consumer, which leaves the group; offsets were committed after each batch."""
        if self._consumer is None:
            return
        try:
            self._consumer.close(autocommit=False)
        except Exception:
            logger.exception("closing the Kafka consumer failed")
        self._consumer = None
        self._readiness.set(READINESS_NAME, False)


def drop_parked_records(consumer: KafkaConsumer, partition: TopicPartition) -> None:
    """Drop the fetched records kafka-python parked for `partition` while it was paused.

    NOTE: works around kafka-python 3.0.12 (consumer/fetcher.py). Records
    parked for a paused partition are restored only when no other records
    are in line, but the in-line slot is never reset to None once drained.
    The parked entry then stays, and the fetcher never fetches the resumed
    partition again: the fault suite saw partitions stop for good. The
    parked records are obsolete here, because the partition was sought back
    to its failed record before the pause, so dropping them loses nothing.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    if not isinstance(parked, dict):
        return
    records = parked.pop(partition, None)
    if records is not None:
        records.drain()
        logger.debug("dropped parked Kafka records of a resumed partition", extra={"partition": f"{partition.topic}-{partition.partition}"})


def format_partitions(partitions) -> str:
    """Return `topic-partition` names, comma separated, for log lines."""
    return ",".join(sorted(f"{partition.topic}-{partition.partition}" for partition in partitions))


def format_offsets(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    """Return `topic-partition:offset` pairs for log lines."""
    return ",".join(
        f"{partition.topic}-{partition.partition}:{meta.offset}" for partition, meta in sorted(offsets.items())
    )
