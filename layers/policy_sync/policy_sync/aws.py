"""The AWS side of the runtime: DynamoDB ordering store, SQS dead-letter sink, API key from Secrets Manager.

`build_lambda_runtime` is what `policy_sync.runtime.current()` calls on the
first handler call in a Lambda container. Every boto3 client here honours
`AWS_ENDPOINT_URL` by itself, which is how tests aim them at a local moto server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import boto3
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config

from policy_sync.dead_letters import DeadLetter
from policy_sync.ordering import CLAIM_TTL_S, ClaimResult
from policy_sync.runtime import Runtime, now_ms
from policy_sync.settings import ConfigError, Settings, normalize_api_key

# Environment variables the SAM template sets for every function.
API_KEY_SECRET_ENV = "ILERT_API_KEY_SECRET"
ORDERING_TABLE_ENV = "ORDERING_TABLE"
DEAD_LETTER_QUEUE_URL_ENV = "DEAD_LETTER_QUEUE_URL"

# A level untouched for this long drops out of the ordering table through
# DynamoDB's TTL. SQS keeps a message at most 14 days (the maximum
# MessageRetentionPeriod), so a buffered retry is gone long before that.
ORDERING_RECORD_TTL_S = 30 * 24 * 3600

# How long a fetched API key is reused before Secrets Manager is asked again,
# so that a rotated key takes effect within this time without a redeploy.
API_KEY_MAX_AGE_S = 300

# SQS rejects an empty message-attribute value and counts attributes against
# the message size limit, so the detail attribute is cut to this length.
# The full detail is always in the body.
DETAIL_ATTRIBUTE_MAX_CHARS = 1024

# Short timeouts with the SDK's standard retry mode: a stuck AWS call must not
# use up the function's whole timeout.
BOTO_CONFIG = Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})

# Attempts of the claim write when the item changes between the failed
# conditional write and the read that explains it.
CLAIM_ATTEMPTS = 3


# True when the position (:received, :sequence) is not before the last applied one.
NOT_BEFORE_LAST_APPLIED = (
    "(attribute_not_exists(last_applied_ms) OR last_applied_ms < :received"
    " OR (last_applied_ms = :received"
    " AND (attribute_not_exists(last_applied_seq) OR last_applied_seq <= :sequence)))"
)


class DynamoDbOrderingStore:
    """`OrderingStore` on a DynamoDB table keyed by `level_key` = "<routing key>#<level>".

    Attributes: `last_applied_ms` and `last_applied_seq` (position of the last
    applied assignment, see `policy_sync.ordering`), `claim_owner` and `claim_expires_ms` (the current claim) and
    `expires_at` (TTL, epoch seconds). Every decision is a conditional write,
    so concurrent invocations never both hold a level.

    Raises:
        botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError:
            for any failure other than a failed write condition.
    """

    def __init__(self, table_name: str, dynamodb_client, clock_ms: Callable[[], int] = now_ms):
        self.table_name = table_name
        self.client = dynamodb_client
        self.clock_ms = clock_ms

    def claim(self, routing_key: str, level: int, received_at_ms: int, owner: str, sequence: int = 0) -> ClaimResult:
        """Claim the level for `owner`; SUPERSEDED when a later position was applied, BUSY when held."""
        key = level_key(routing_key, level)
        for _ in range(CLAIM_ATTEMPTS):
            if self._try_claim(key, received_at_ms, sequence, owner):
                return ClaimResult.GRANTED

            # The condition failed. DynamoDB does not report which part of it
            # failed, so read the item to tell SUPERSEDED from BUSY.
            result = self._explain_refusal(key, received_at_ms, sequence, owner)
            if result is not None:
                return result

        # The item kept changing between write and read: someone else is working on this level.
        return ClaimResult.BUSY

    def release(
        self,
        routing_key: str,
        level: int,
        owner: str,
        applied_received_at_ms: int | None,
        applied_sequence: int = 0,
    ) -> None:
        """Record the applied position unless a later one is there, then drop `owner`'s claim."""
        key = level_key(routing_key, level)
        if applied_received_at_ms is not None:
            self._record_applied(key, applied_received_at_ms, applied_sequence)

        # Only the owner's own claim goes: after a takeover the claim belongs to someone else.
        self._update_if(
            key,
            "REMOVE claim_owner, claim_expires_ms",
            "claim_owner = :owner",
            {":owner": {"S": owner}},
        )

    def _try_claim(self, key: str, received_at_ms: int, sequence: int, owner: str) -> bool:
        now = self.clock_ms()
        return self._update_if(
            key,
            "SET claim_owner = :owner, claim_expires_ms = :claim_expires, expires_at = :expires_at",
            "(attribute_not_exists(claim_owner) OR claim_owner = :owner OR claim_expires_ms <= :now)"
            f" AND {NOT_BEFORE_LAST_APPLIED}",
            {
                ":owner": {"S": owner},
                ":claim_expires": {"N": str(now + CLAIM_TTL_S * 1000)},
                ":expires_at": {"N": str(self._expires_at())},
                ":now": {"N": str(now)},
                ":received": {"N": str(received_at_ms)},
                ":sequence": {"N": str(sequence)},
            },
        )

    def _explain_refusal(self, key: str, received_at_ms: int, sequence: int, owner: str) -> ClaimResult | None:
        """Return SUPERSEDED or BUSY from the item as it is now, or None when neither applies any more."""
        item = self.client.get_item(
            TableName=self.table_name, Key={"level_key": {"S": key}}, ConsistentRead=True
        ).get("Item", {})

        last_applied_ms = number(item, "last_applied_ms")
        last_applied_seq = number(item, "last_applied_seq") or 0
        if last_applied_ms is not None and (last_applied_ms, last_applied_seq) > (received_at_ms, sequence):
            return ClaimResult.SUPERSEDED

        claim_owner = item.get("claim_owner", {}).get("S")
        claim_expires_ms = number(item, "claim_expires_ms")
        if claim_owner not in (None, owner) and claim_expires_ms is not None and claim_expires_ms > self.clock_ms():
            return ClaimResult.BUSY
        return None

    def _record_applied(self, key: str, applied_received_at_ms: int, applied_sequence: int) -> None:
        # The condition keeps the position from going down: DynamoDB has no
        # max() in update expressions.
        self._update_if(
            key,
            "SET last_applied_ms = :received, last_applied_seq = :sequence, expires_at = :expires_at",
            NOT_BEFORE_LAST_APPLIED,
            {
                ":received": {"N": str(applied_received_at_ms)},
                ":sequence": {"N": str(applied_sequence)},
                ":expires_at": {"N": str(self._expires_at())},
            },
        )

    def _update_if(self, key: str, update: str, condition: str, values: dict) -> bool:
        """Run one conditional UpdateItem; return False when the condition failed."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key={"level_key": {"S": key}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _expires_at(self) -> int:
        return self.clock_ms() // 1000 + ORDERING_RECORD_TTL_S


def level_key(routing_key: str, level: int) -> str:
    """Return the ordering table key of one level of one routing key."""
    return f"{routing_key}#{level}"


def number(item: dict, name: str) -> int | None:
    """Return the integer value of a DynamoDB number attribute, or None when it is missing."""
    value = item.get(name, {}).get("N")
    return None if value is None else int(value)


# SQS takes messages up to 1 MiB (1,048,576 bytes, the queue's MaximumMessageSize
# maximum and default); the margin leaves room for the message attributes.
DEAD_LETTER_BODY_MAX_BYTES = 1_000_000


class SqsDeadLetterSink:
    """`DeadLetterSink` that sends each dead letter to the SQS dead-letter queue.

    The body is `DeadLetter.to_json()`, a valid buffer envelope, so a DLQ
    redrive to the buffer queue processes the message again. The `reason`
    and `detail` message attributes let an operator see why in the console
    without opening the body.
    """

    def __init__(self, queue_url: str, sqs_client):
        self.queue_url = queue_url
        self.client = sqs_client

    def put(self, dead_letter: DeadLetter) -> None:
        """Send the dead letter; raise botocore's ClientError or BotoCoreError when SQS did not take it."""
        attributes = {"reason": {"DataType": "String", "StringValue": dead_letter.reason}}
        if dead_letter.detail:
            attributes["detail"] = {
                "DataType": "String",
                "StringValue": dead_letter.detail[:DETAIL_ATTRIBUTE_MAX_CHARS],
            }

        self.client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=dead_letter.to_json(max_bytes=DEAD_LETTER_BODY_MAX_BYTES),
            MessageAttributes=attributes,
        )


def read_api_key(secret_id: str) -> str:
    """Fetch the ilert API key from the Secrets Manager secret `secret_id` (name or ARN), cached per container.

    The secret string is either the key itself or JSON `{"api_key": "..."}`.

    Raises:
        ConfigError: when the secret cannot be read or contains no usable key;
            the message names the secret, never the key.
    """
    try:
        secret = parameters.get_secret(secret_id, max_age=API_KEY_MAX_AGE_S)
    except parameters.exceptions.GetParameterError as error:
        raise ConfigError(
            f"failed to read the API key secret {secret_id!r} ({API_KEY_SECRET_ENV}): {error}; "
            "check the secret name and the function's secretsmanager:GetSecretValue permission"
        ) from None

    if isinstance(secret, bytes):
        secret = secret.decode("utf-8", errors="replace")
    if secret is None:
        secret = ""
    return normalize_api_key(api_key_from_secret(secret_id, secret))


def api_key_from_secret(secret_id: str, secret: str) -> str:
    """Return the key from a secret string that is the key itself or JSON with an "api_key" field."""
    if not secret.lstrip().startswith("{"):
        return secret

    try:
        fields = json.loads(secret)
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or not isinstance(fields.get("api_key"), str):
        raise ConfigError(
            f"invalid API key secret {secret_id!r} ({API_KEY_SECRET_ENV}): it is JSON without a string "
            '"api_key" field; store the key itself or {"api_key": "<key>"}'
        )
    return fields["api_key"]


def require_env(environ: Mapping[str, str], name: str, what: str) -> str:
    """Return the non-empty value of `name`, or raise ConfigError saying what it must name."""
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"missing environment variable {name}: set it to {what} (the SAM template sets it)")
    return value


def build_lambda_runtime(environ: Mapping[str, str] = os.environ) -> Runtime:
    """Build the Lambda `Runtime` from the environment: settings, ilert client, DynamoDB store, SQS sink.

    Raises:
        ConfigError: on an invalid setting, a missing variable or an unusable
            API key secret, which makes the Lambda init fail with that one line.
    """
    # Imported here so that the stores above can be used without the HTTP client's module.
    from policy_sync.ilert import IlertClient
    from policy_sync.user_cache import UserCache

    settings = Settings.from_env(environ)
    secret_id = require_env(environ, API_KEY_SECRET_ENV, "the name or ARN of the Secrets Manager secret with the ilert API key")
    table_name = require_env(environ, ORDERING_TABLE_ENV, "the name of the DynamoDB ordering table")
    queue_url = require_env(environ, DEAD_LETTER_QUEUE_URL_ENV, "the URL of the SQS dead-letter queue")

    api_key = read_api_key(secret_id)
    return Runtime(
        settings=settings,
        client=IlertClient(settings.ilert_url, api_key),
        user_cache=UserCache(),
        dead_letters=SqsDeadLetterSink(queue_url, boto3.client("sqs", config=BOTO_CONFIG)),
        ordering=DynamoDbOrderingStore(table_name, boto3.client("dynamodb", config=BOTO_CONFIG)),
    )
