"""A moto server in its own process on 127.0.0.1, and the AWS resources the SAM template defines.

Tests aim boto3 at it through `AWS_ENDPOINT_URL` with fake credentials, so
no test can reach real AWS.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# Environment for boto3 clients, in this process or in a handler subprocess.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}

RUNNING_ON = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto_server on a free loopback port, yield its URL, and stop it by PID afterwards."""
    if not MOTO_SERVER.exists():
        raise RuntimeError(f"{MOTO_SERVER} not found; install the dev extras: pip install -e '.[dev]'")

    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **FAKE_CREDENTIALS},
    )
    try:
        url = wait_for_url(process)
        wait_until_answering(url)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_url(process: subprocess.Popen) -> str:
    """Return the URL moto_server prints once it listens; raise when it exits or stays silent."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read_output() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    # The reader keeps draining the pipe after startup, so a chatty server never blocks on a full pipe.
    threading.Thread(target=read_output, daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"moto_server printed no URL within {START_TIMEOUT_S} s: {''.join(seen)}") from None
        if line is None:
            raise RuntimeError(f"moto_server exited with {process.wait()} before listening: {''.join(seen)}")
        seen.append(line)
        match = RUNNING_ON.search(line)
        if match:
            return match.group(1)


def wait_until_answering(url: str) -> None:
    """Send one request to moto's own API, which responds as soon as the server listens."""
    with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=START_TIMEOUT_S) as response:
        response.read()


def client(service: str, endpoint_url: str):
    """Return a boto3 client for `service` aimed at the moto server with fake credentials."""
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
    )


@dataclass(frozen=True)
class AwsResources:
    """Names and URLs of the resources the template defines, created on the moto server."""

    endpoint_url: str
    ordering_table: str
    buffer_queue_url: str
    dead_letter_queue_url: str
    api_key_secret: str

    def environment(self) -> dict[str, str]:
        """Return the Lambda environment variables that point a handler at these resources."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "ORDERING_TABLE": self.ordering_table,
            "BUFFER_QUEUE_URL": self.buffer_queue_url,
            "DEAD_LETTER_QUEUE_URL": self.dead_letter_queue_url,
            "ILERT_API_KEY_SECRET": self.api_key_secret,
        }


def create_ordering_table(endpoint_url: str, name: str) -> str:
    """Create the ordering table as the template does: key `level_key`, on-demand, TTL on `expires_at`."""
    dynamodb = client("dynamodb", endpoint_url)
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "level_key", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "level_key", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    return name


def create_queues(endpoint_url: str, prefix: str, max_receive_count: int = 100) -> tuple[str, str]:
    """Create the buffer queue and its DLQ as the template does; return (buffer URL, DLQ URL)."""
    sqs = client("sqs", endpoint_url)
    dlq_url = sqs.create_queue(
        QueueName=f"{prefix}-dead-letters", Attributes={"MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": {max_receive_count}}}'
    buffer_url = sqs.create_queue(
        QueueName=f"{prefix}-buffer", Attributes={"VisibilityTimeout": "180", "RedrivePolicy": redrive}
    )["QueueUrl"]
    return buffer_url, dlq_url


def create_secret(endpoint_url: str, name: str, secret_string: str) -> str:
    """Create a Secrets Manager secret with `secret_string`; return its ARN."""
    return client("secretsmanager", endpoint_url).create_secret(Name=name, SecretString=secret_string)["ARN"]


def create_resources(endpoint_url: str, prefix: str, api_key: str) -> AwsResources:
    """Create table, queues and API key secret named after `prefix`, so tests sharing a server stay apart."""
    buffer_url, dlq_url = create_queues(endpoint_url, prefix)
    return AwsResources(
        endpoint_url=endpoint_url,
        ordering_table=create_ordering_table(endpoint_url, f"{prefix}-ordering"),
        buffer_queue_url=buffer_url,
        dead_letter_queue_url=dlq_url,
        api_key_secret=create_secret(endpoint_url, f"{prefix}-api-key", api_key),
    )


def receive_all(endpoint_url: str, queue_url: str, max_messages: int = 10) -> list[dict]:
    """Receive up to `max_messages` messages with their attributes, without waiting for more."""
    response = client("sqs", endpoint_url).receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=max_messages,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
        WaitTimeSeconds=0,
    )
    return response.get("Messages", [])
