"""Lambda handler for the MSK event source mapping (ReportBatchItemFailures).

Within a partition, records are processed in offset order. After the first
record whose outcome is *retry*, the rest of that partition is reported as
failed without being processed. Lambda (or local_runner) thus never commits
an offset past it. Other partitions go on. When the remaining invocation time
drops below REMAINING_TIME_RESERVE_MS, no new record is started and the rest
are reported as failed. The failure identifier is the one Powertools' Kafka
batch support builds: `{"partition": "<topic>-<partition>", "offset": N}`.

With CONCURRENCY above 1, the batch is first split into per-level lanes
(see `policy_sync.lanes`) that run in parallel. A later record of a
partition may then already be done when an earlier one must be retried. It is still
reported as failed, so the committed offset never passes the retried record,
and its redelivery ends as *unchanged* or *superseded*.
"""

from __future__ import annotations

import base64
import binascii
import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord

from policy_sync import outcomes
from policy_sync import runtime as runtime_module
from policy_sync.lanes import lane_key, plan_lanes, run_lanes
from policy_sync.outcomes import Outcome, RetryLater
from policy_sync.pipeline import count_outcome, log_outcome, process_payload

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
    concurrency = int(os.environ.get("CONCURRENCY") or 1)

    def has_time() -> bool:
        return context.get_remaining_time_in_millis() >= reserve_ms

    # Outcomes by (partition id, offset), computed up front when lanes run in parallel.
    parallel_results = process_in_lanes(ordered_event, runtime, concurrency, has_time) if concurrency > 1 else None
    # Partition id -> why its remaining records are held back.
    blocked_partitions: dict[str, str] = {}
    held_back: dict[str, list[int]] = {}

    def record_handler(record: KafkaEventRecord) -> str:
        partition_id = f"{record.topic}-{record.partition}"
        if parallel_results is None:
            if partition_id not in blocked_partitions and not has_time():
                blocked_partitions[partition_id] = outcomes.OUT_OF_TIME
            outcome = None if partition_id in blocked_partitions else process_record(record.raw_event, runtime)
        else:
            outcome = parallel_results.get((partition_id, record.offset))
            if outcome is None and partition_id not in blocked_partitions:
                blocked_partitions[partition_id] = outcomes.OUT_OF_TIME
        if partition_id in blocked_partitions:
            held_back.setdefault(partition_id, []).append(record.offset)
            raise RecordHeldBack(partition_id)

        count_outcome(metrics, outcome.kind.value)
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


def process_record(record: dict, runtime) -> Outcome:
    """Run one Kafka record through the pipeline and log its outcome."""
    coordinates = {"source": "kafka", "topic": record["topic"], "partition": record["partition"], "offset": record["offset"]}
    # The offset orders records of one partition received in the same millisecond.
    outcome = process_payload(decode_value(record), record.get("timestamp") or 0, coordinates, runtime, record["offset"])
    log_outcome(logger, outcome, coordinates)
    return outcome


def decode_value(record: dict) -> bytes | None:
    """Return the record value as bytes, None for a tombstone; invalid base64 reads as no value."""
    value = record.get("value")
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None


def process_in_lanes(event: dict, runtime, concurrency: int, has_time) -> dict[tuple[str, int], Outcome]:
    """Process the batch in per-level lanes on `concurrency` threads; return outcomes by (partition id, offset).

    A record missing from the result was not started: its lane stopped at a
    *retry*, or time ran out.
    """
    records = [
        (partition_id, record)
        for partition_id, partition_records in event["records"].items()
        for record in partition_records
    ]
    lanes = plan_lanes(
        records,
        lambda item: lane_key(decode_value(item[1]), runtime.settings, (item[0], item[1]["offset"])),
    )
    outcomes_by_item = run_lanes(lanes, lambda item: process_record(item[1], runtime), concurrency, has_time)
    results = {}
    for item in records:
        if id(item) in outcomes_by_item:
            partition_id, record = item
            results[(partition_id, record["offset"])] = outcomes_by_item[id(item)]
    return results


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
        count_outcome(metrics, "retry", len(offsets))
