"""Lambda handler for the MSK event source mapping (ReportBatchItemFailures).

Within a partition, records are processed in offset order. After the first
record whose outcome is *retry*, the rest of that partition is reported as
failed without being processed, so Lambda (or local_runner) never commits an
offset past it; other partitions go on. When the remaining invocation time
drops below REMAINING_TIME_RESERVE_MS, no new record is started and the rest
are reported as failed. The failure identifier is the one Powertools' Kafka
batch support builds: `{"partition": "<topic>-<partition>", "offset": N}`.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord

from policy_sync import outcomes
from policy_sync import runtime as runtime_module
from policy_sync.outcomes import RetryLater
from policy_sync.pipeline import log_outcome, process_payload

SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME", "policy-sync")
DEFAULT_REMAINING_TIME_RESERVE_MS = 10_000
logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "PolicySync"), service=SERVICE_NAME)
tracer = Tracer(service=SERVICE_NAME)


class RecordHeldBack(Exception):
    """A record not processed because an earlier one in its partition must be retried, or time ran out."""


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context) -> dict:
    """Process an MSK batch; return the records to redeliver as batchItemFailures."""
    runtime = runtime_module.current()
    ordered_event = sort_records_by_offset(event)
    reserve_ms = int(os.environ.get("REMAINING_TIME_RESERVE_MS") or DEFAULT_REMAINING_TIME_RESERVE_MS)
    # Partition id -> why its remaining records are held back.
    blocked_partitions: dict[str, str] = {}
    held_back: dict[str, list[int]] = {}

    def record_handler(record: KafkaEventRecord) -> str:
        partition_id = f"{record.topic}-{record.partition}"
        if partition_id not in blocked_partitions and context.get_remaining_time_in_millis() < reserve_ms:
            blocked_partitions[partition_id] = outcomes.OUT_OF_TIME
        if partition_id in blocked_partitions:
            held_back.setdefault(partition_id, []).append(record.offset)
            raise RecordHeldBack(partition_id)

        coordinates = {"source": "kafka", "topic": record.topic, "partition": record.partition, "offset": record.offset}
        payload = None if record.raw_event.get("value") is None else record.decoded_value
        outcome = process_payload(payload, record.timestamp, coordinates, runtime)
        log_outcome(logger, outcome, coordinates)
        metrics.add_metric(name=outcome.kind.value, unit=MetricUnit.Count, value=1)
        if not outcome.is_acknowledged:
            blocked_partitions[partition_id] = outcomes.BLOCKED_BY_EARLIER
            raise RetryLater(outcome)
        return outcome.kind.value

    processor = BatchProcessor(event_type=EventType.Kafka, raise_on_entire_batch_failure=False)
    response = process_partial_response(
        event=ordered_event,
        record_handler=record_handler,
        processor=processor,
        context=context,
    )
    log_held_back(held_back, blocked_partitions)
    return response


def sort_records_by_offset(event: dict) -> dict:
    """Return the event with each partition's records in offset order.

    Raises ValueError when a record has no integer partition and offset: its
    failure could not be reported, so the whole invocation must fail instead.
    """
    records = event.get("records")
    if not isinstance(records, dict):
        raise ValueError("the Kafka event has no records object keyed by topic-partition")
    ordered = {}
    for partition_id, partition_records in records.items():
        if not isinstance(partition_records, list):
            raise ValueError(f"records of {partition_id} are not a list")
        for record in partition_records:
            if not isinstance(record, dict) or not all(
                isinstance(record.get(name), int) and not isinstance(record.get(name), bool)
                for name in ("partition", "offset")
            ):
                raise ValueError(f"a record of {partition_id} has no integer partition and offset")
            if not isinstance(record.get("topic"), str):
                raise ValueError(f"a record of {partition_id} has no topic")
        ordered[partition_id] = sorted(partition_records, key=lambda record: record["offset"])
    return {**event, "records": ordered}


def log_held_back(held_back: dict[str, list[int]], reasons: dict[str, str]) -> None:
    """Log one line per partition whose later records were held back, instead of one per record."""
    for partition_id, offsets in held_back.items():
        logger.warning(
            "records held back for redelivery",
            extra={
                "outcome": "retry",
                "reason": reasons[partition_id],
                "partition_id": partition_id,
                "first_offset": min(offsets),
                "last_offset": max(offsets),
                "count": len(offsets),
            },
        )
        metrics.add_metric(name="retry", unit=MetricUnit.Count, value=len(offsets))
