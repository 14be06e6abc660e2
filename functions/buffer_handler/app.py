"""Lambda handler for the SQS buffer queue (ReportBatchItemFailures).

A *retry* stays on the queue with a visibility timeout that doubles per
receive up to 60 s. That is the same curve as local_runner's SQLite buffer,
and longer when the API sent Retry-After. After the queue's maxReceiveCount
receives, SQS moves the message to the dead-letter queue. A message that can never succeed is
written to the dead-letter queue with its reason at once and deleted.
"""

from __future__ import annotations

import os
import re

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from policy_sync import runtime as runtime_module
from policy_sync.backoff import backoff_delay_s
from policy_sync.envelope import decode_buffer_body
from policy_sync.outcomes import Outcome, RetryLater
from policy_sync.pipeline import count_outcome, log_outcome, process_payload, store_dead_letter

SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME", "policy-sync")
logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "PolicySync"), service=SERVICE_NAME)
tracer = Tracer(service=SERVICE_NAME)

QUEUE_ARN_PATTERN = re.compile(r"^arn:[^:]+:sqs:[^:]+:(?P<account>\d+):(?P<name>.+)$")
_sqs_client = None
_queue_urls: dict[str, str] = {}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context) -> dict:
    """Process a batch of buffered messages; return those to receive again as batchItemFailures."""
    runtime = runtime_module.current()

    def record_handler(record: SQSRecord) -> str:
        coordinates = {"source": "buffer", "queue_message_id": record.message_id}
        sent_at_ms = int(record.attributes.sent_timestamp or runtime.clock_ms())
        decoded = decode_buffer_body(record.body, sent_at_ms)
        if isinstance(decoded, Outcome):
            outcome = store_dead_letter(record.body.encode("utf-8"), sent_at_ms, coordinates, decoded, runtime)
        else:
            coordinates.update(decoded.coordinates)
            outcome = process_payload(decoded.payload, decoded.received_at_ms, coordinates, runtime, decoded.sequence)

        log_outcome(logger, outcome, coordinates)
        count_outcome(metrics, outcome.kind.value)
        if not outcome.is_acknowledged:
            delay_visibility(record, outcome)
            raise RetryLater(outcome)
        return outcome.kind.value

    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)


def delay_visibility(record: SQSRecord, outcome: Outcome) -> None:
    """Hide the message for the backoff delay of its receive count before SQS offers it again.

    A failure here is logged, not raised: the queue's own visibility timeout
    then applies, which only retries later than planned.
    """
    receive_count = int(record.attributes.approximate_receive_count or 1)
    delay_s = backoff_delay_s(receive_count, outcome.retry_after_s)
    try:
        sqs_client().change_message_visibility(
            QueueUrl=queue_url(record.event_source_arn),
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=int(round(delay_s)),
        )
    except Exception:
        logger.exception("could not change the message visibility", extra={"queue_message_id": record.message_id})


def sqs_client():
    """Return the SQS client, created once per container."""
    global _sqs_client
    if _sqs_client is None:
        # Imported here, not at module level: boto3 adds about 55 ms to a cold
        # start (python -X importtime, on top of Powertools), and only a retry
        # needs the client.
        import boto3

        _sqs_client = boto3.client("sqs")
    return _sqs_client


def queue_url(event_source_arn: str) -> str:
    """Return the buffer queue URL: BUFFER_QUEUE_URL, or looked up once from the record's queue ARN."""
    configured = os.environ.get("BUFFER_QUEUE_URL")
    if configured:
        return configured
    if event_source_arn not in _queue_urls:
        match = QUEUE_ARN_PATTERN.match(event_source_arn or "")
        if match is None:
            raise ValueError(f"cannot derive a queue URL from event source ARN {event_source_arn!r}")
        response = sqs_client().get_queue_url(QueueName=match["name"], QueueOwnerAWSAccountId=match["account"])
        _queue_urls[event_source_arn] = response["QueueUrl"]
    return _queue_urls[event_source_arn]
