"""The SAM template: SAM CLI validates and builds it, and its CloudFormation keeps the delivery guarantees.

The translate-and-lint checks run offline with aws-sam-translator and
cfn-lint. The SAM CLI checks need .venv-sam (scripts/install-sam.sh) and
a Python 3.12 interpreter for `sam build`. `sam build` downloads the layer's
packages from PyPI.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import cfnlint.api
import pytest
from cfnlint.decode import cfn_yaml
from samtranslator.translator.transform import transform

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
SAM = REPO / ".venv-sam" / "bin" / "sam"
SAM_TIMEOUT_S = 600

# Parameters without a default, and the optional sources switched on, so every resource is present.
PARAMETERS = {
    "ApiKeySecret": "policy-sync/ilert-api-key",
    "PolicyRoutingKeys": "location",
    "PolicyTopic": "user/logins",
    "KafkaClusterArn": "arn:aws:kafka:us-east-1:123456789012:cluster/demo/0000-1",
    "KafkaTopic": "user-logins",
}

# The AWS managed policies SAM attaches for tracing and event sources, so translation needs no IAM call.
MANAGED_POLICIES = {
    name: f"arn:aws:iam::aws:policy/{path}{name}"
    for path, name in [
        ("service-role/", "AWSLambdaBasicExecutionRole"),
        ("service-role/", "AWSLambdaSQSQueueExecutionRole"),
        ("service-role/", "AWSLambdaMSKExecutionRole"),
        ("", "AWSXrayWriteOnlyAccess"),
    ]
}

SCOPED_SERVICES = ("sqs:", "dynamodb:", "secretsmanager:")


class OfflinePolicyLoader:
    """Managed-policy loader for the translator that maps policy names to ARNs without calling IAM."""

    def load(self) -> dict[str, str]:
        return dict(MANAGED_POLICIES)


def load_template(path: Path = TEMPLATE) -> dict:
    return cfn_yaml.load(str(path))


def translate(template: dict) -> dict:
    """Transform the SAM template to plain CloudFormation, as CloudFormation's SAM transform does."""
    template = copy.deepcopy(template)
    # The transform takes code locations in S3 only, so stand in for `sam package`'s upload.
    for name, resource in template["Resources"].items():
        for uri_property in ("CodeUri", "ContentUri"):
            if uri_property in resource.get("Properties", {}):
                resource["Properties"][uri_property] = f"s3://policy-sync-artifacts/{name}.zip"

    # The translator reads the region from boto3's default session and fails without one.
    with mock.patch.dict(os.environ, {"AWS_DEFAULT_REGION": "us-east-1"}):
        return transform(template, dict(PARAMETERS), OfflinePolicyLoader())


def lint_errors(cloudformation: dict) -> list[str]:
    """Return cfn-lint's errors (not warnings or informational matches) for a CloudFormation template."""
    matches = cfnlint.api.lint(json.dumps(cloudformation), regions=["us-east-1"])
    return [str(match) for match in matches if match.rule.id.startswith("E")]


@pytest.fixture(scope="module")
def cloudformation() -> dict:
    return translate(load_template())


def resources_of_type(cloudformation: dict, resource_type: str) -> dict[str, dict]:
    return {
        name: resource
        for name, resource in cloudformation["Resources"].items()
        if resource["Type"] == resource_type
    }


def properties(cloudformation: dict, logical_id: str) -> dict:
    return cloudformation["Resources"][logical_id]["Properties"]


# SAM CLI


def offline_environment() -> dict[str, str]:
    """Return an environment for SAM CLI with fake credentials, AWS aimed at a closed loopback port, no telemetry."""
    python312_dirs = [os.path.dirname(path) for path in sorted(glob.glob("/root/.pyenv/versions/3.12*/bin/python3.12"))]
    return {
        **os.environ,
        "PATH": os.pathsep.join([*python312_dirs, os.environ.get("PATH", "")]),
        "SAM_CLI_TELEMETRY": "0",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # Port 9 (discard) on loopback: any AWS call SAM CLI might make fails at once.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }


def run_sam(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    if not SAM.exists():
        pytest.fail(f"SAM CLI not found at {SAM}; run scripts/install-sam.sh to install it into .venv-sam")
    return subprocess.run(
        [str(SAM), *arguments],
        cwd=cwd,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=SAM_TIMEOUT_S,
    )


@pytest.mark.sam
def test_sam_validate_lint_passes():
    result = run_sam("validate", "--lint", "--template-file", str(TEMPLATE), cwd=REPO)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.mark.sam
def test_sam_build_succeeds(tmp_path):
    if shutil.which("python3.12", path=offline_environment()["PATH"]) is None:
        pytest.fail("python3.12 not found on PATH; sam build needs the interpreter of the template's runtime")
    build_dir = tmp_path / "build"

    # cwd is the temp dir, so that SAM's dependency cache (.aws-sam/deps) lands there too.
    result = run_sam(
        "build",
        "--template-file",
        str(TEMPLATE),
        "--config-file",
        str(REPO / "samconfig.toml"),
        "--build-dir",
        str(build_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    layer = build_dir / "PolicySyncLayer" / "python"
    assert (layer / "policy_sync" / "aws.py").exists()
    assert (layer / "aws_lambda_powertools").is_dir()
    assert (layer / "requests").is_dir()
    for function in ("MqttFunction", "KafkaFunction", "BufferFunction"):
        assert (build_dir / function).is_dir(), function


# Translation and lint


def test_translated_template_passes_cfn_lint(cloudformation):
    assert lint_errors(cloudformation) == []


def test_misspelt_property_is_caught_by_lint():
    template = load_template()
    queue = template["Resources"]["BufferQueue"]["Properties"]
    queue["VisibiltyTimeout"] = queue.pop("VisibilityTimeout")

    errors = lint_errors(translate(template))

    assert any("VisibiltyTimeout" in error for error in errors), errors


def test_misspelt_function_property_is_caught_by_translator():
    template = load_template()
    function = template["Resources"]["BufferFunction"]["Properties"]
    function["Handlr"] = function.pop("Handler")

    with pytest.raises(Exception, match="Handlr"):
        translate(template)


# Delivery guarantees of the translated template


def test_event_source_mappings_report_batch_item_failures(cloudformation):
    mappings = resources_of_type(cloudformation, "AWS::Lambda::EventSourceMapping")

    assert len(mappings) == 2
    for name, mapping in mappings.items():
        assert "ReportBatchItemFailures" in mapping["Properties"].get("FunctionResponseTypes", []), name


def test_buffer_event_source_takes_batches_of_ten(cloudformation):
    [sqs_mapping] = [
        mapping["Properties"]
        for mapping in resources_of_type(cloudformation, "AWS::Lambda::EventSourceMapping").values()
        if mapping["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["BufferQueue", "Arn"]}
    ]

    assert sqs_mapping["BatchSize"] == 10
    assert sqs_mapping["FunctionName"] == {"Ref": "BufferFunction"}


def test_msk_event_source_starts_at_trim_horizon(cloudformation):
    [msk_mapping] = [
        mapping["Properties"]
        for mapping in resources_of_type(cloudformation, "AWS::Lambda::EventSourceMapping").values()
        if mapping["Properties"]["EventSourceArn"] == {"Ref": "KafkaClusterArn"}
    ]

    assert msk_mapping["StartingPosition"] == "TRIM_HORIZON"
    assert msk_mapping["Topics"] == [{"Ref": "KafkaTopic"}]
    assert msk_mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_buffer_queue_redrives_to_dlq_after_max_retries(cloudformation):
    redrive = properties(cloudformation, "BufferQueue")["RedrivePolicy"]

    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "MaxRetries"}
    assert load_template()["Parameters"]["MaxRetries"]["Default"] == 100


def test_buffer_visibility_is_six_function_timeouts(cloudformation):
    visibility_timeout_s = properties(cloudformation, "BufferQueue")["VisibilityTimeout"]
    function_timeout_s = properties(cloudformation, "BufferFunction")["Timeout"]

    assert visibility_timeout_s >= 6 * function_timeout_s


def test_dead_letter_queue_keeps_messages_14_days(cloudformation):
    dlq = properties(cloudformation, "DeadLetterQueue")
    buffer = properties(cloudformation, "BufferQueue")

    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert buffer["MessageRetentionPeriod"] < dlq["MessageRetentionPeriod"]


def test_topic_rule_sql_and_error_action(cloudformation):
    rule = properties(cloudformation, "MqttTopicRule")["TopicRulePayload"]
    sql = rule["Sql"]["Fn::Sub"]

    assert "encode(*, 'base64') AS payload_b64" in sql
    assert "topic() AS topic" in sql
    assert "timestamp() AS received_at_ms" in sql
    assert "FROM '${PolicyTopic}'" in sql
    assert rule["AwsIotSqlVersion"] == "2016-03-23"
    assert rule["ErrorAction"]["Sqs"]["QueueUrl"] == {"Ref": "BufferQueue"}


def test_topic_rule_action_follows_mqtt_buffer(cloudformation):
    condition, buffered, direct = properties(cloudformation, "MqttTopicRule")["TopicRulePayload"]["Actions"]["Fn::If"]

    assert condition == "MqttBuffered"
    assert buffered[0]["Sqs"]["QueueUrl"] == {"Ref": "BufferQueue"}
    assert direct[0]["Lambda"]["FunctionArn"] == {"Fn::GetAtt": ["MqttFunction", "Arn"]}


def test_iot_may_invoke_mqtt_function(cloudformation):
    permission = properties(cloudformation, "MqttInvokePermission")

    assert permission["Principal"] == "iot.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["MqttTopicRule", "Arn"]}


def test_mqtt_async_failures_go_to_buffer(cloudformation):
    [config] = resources_of_type(cloudformation, "AWS::Lambda::EventInvokeConfig").values()

    assert config["Properties"]["MaximumRetryAttempts"] == 2
    assert config["Properties"]["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["BufferQueue", "Arn"]
    }


def test_ordering_table_has_ttl_and_key(cloudformation):
    table = properties(cloudformation, "OrderingTable")

    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "level_key", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_dead_letter_alarm_fires_on_first_message(cloudformation):
    alarm = properties(cloudformation, "DeadLetterAlarm")

    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}]
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_functions_get_every_handler_variable(cloudformation):
    expected = {
        "POLICY_ROUTING_KEYS", "MAP_KEY_EMAIL", "MAP_KEY_SHIFT", "SHIFT_OFFSET", "FILTER_KEY", "FILTER_VAL",
        "ILERT_API_URL", "MAX_RETRIES", "MAX_PAYLOAD_BYTES", "ILERT_API_KEY_SECRET", "ORDERING_TABLE",
        "DEAD_LETTER_QUEUE_URL", "BUFFER_QUEUE_URL", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
    }  # fmt: skip
    functions = resources_of_type(cloudformation, "AWS::Lambda::Function")

    assert len(functions) == 3
    for name, function in functions.items():
        variables = set(function["Properties"]["Environment"]["Variables"])
        assert expected <= variables, (name, expected - variables)
        assert function["Properties"]["TracingConfig"] == {"Mode": "Active"}, name
    kafka_variables = properties(cloudformation, "KafkaFunction")["Environment"]["Variables"]
    assert kafka_variables["REMAINING_TIME_RESERVE_MS"] == "10000"


def iam_statements(cloudformation: dict):
    """Yield (role, statement) for every inline statement of every IAM role."""
    for name, role in resources_of_type(cloudformation, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                yield name, statement


def test_no_wildcard_resource_for_data_services(cloudformation):
    checked = 0
    for role, statement in iam_statements(cloudformation):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if any(action.startswith(SCOPED_SERVICES) for action in actions):
            checked += 1
            assert "*" not in resources, (role, statement)

    assert checked >= 10


def test_buffer_function_may_change_visibility(cloudformation):
    statements = [statement for role, statement in iam_statements(cloudformation) if role == "BufferFunctionRole"]

    assert {
        "Sid": "BackOffBufferedMessages",
        "Effect": "Allow",
        "Action": "sqs:ChangeMessageVisibility",
        "Resource": {"Fn::GetAtt": ["BufferQueue", "Arn"]},
    } in statements
