"""Invoke a function of template.yaml the way `sam local invoke` would, in a fresh Python process.

The child process runs this file with `python -I`, so neither the working
directory nor PYTHONPATH leaks in. Its sys.path starts with the function's
CodeUri folder (where `app` lives) and the layer's ContentUri folder, as
/var/task and /opt/python do in Lambda. The editable install's finder is
removed, so the other functions' packages are not importable. The
virtualenv's site-packages (Powertools, boto3) stay on the path, much like
the layer's packages and the runtime's boto3.

The child's environment is built from nothing: the template's Globals and
function variables with parameter defaults, the variables Lambda sets, fake
AWS credentials, and the test's overrides. AWS_ENDPOINT_URL defaults to a
closed loopback port, so no call can reach real AWS.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "template.yaml"
INVOKE_TIMEOUT_S = 120

BASE_ENVIRONMENT = {
    "LANG": "C.UTF-8",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Port 9 (discard) on loopback: an AWS call the test did not aim at moto fails at once.
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    # `sam local invoke` sets AWS_SAM_LOCAL, which makes Powertools' Tracer a no-op.
    "AWS_SAM_LOCAL": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
}


@dataclass(frozen=True)
class FunctionSpec:
    """One function as the template defines it: code folder, handler, layer folders, environment, timeout."""

    logical_id: str
    code_dir: Path
    handler: str
    layer_dirs: tuple[Path, ...]
    environment: dict[str, str]
    timeout_s: int
    memory_mb: int


@dataclass(frozen=True)
class InvokeResult:
    """The handler's JSON result, or the type and message of the exception it raised, with the process output."""

    result: Any
    error_type: str | None
    error_message: str | None
    stdout: str
    stderr: str

    def log_records(self) -> list[dict]:
        """Return the JSON lines the function printed (Powertools log lines and EMF metrics)."""
        records = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records


def load_template(path: Path = TEMPLATE) -> dict:
    """Load a CloudFormation YAML template, turning tags such as !Ref into their JSON forms."""
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.load(str(path))


def resolve_value(value: Any, parameters: dict[str, Any]) -> str | None:
    """Return an environment value as a string, or None when it refers to a resource only a deploy creates."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
        return str(parameters[value["Ref"]])
    return None


def function_spec(logical_id: str, parameters: dict[str, Any] | None = None, template_path: Path = TEMPLATE) -> FunctionSpec:
    """Read one function's settings from the template, with Globals applied and parameters resolved.

    `parameters` overrides the template's parameter defaults. A variable that
    refers to a resource (a queue URL, the table name) is left out, so the
    test sets it from the moto resources.
    """
    template = load_template(template_path)
    base_dir = template_path.parent
    globals_function = template.get("Globals", {}).get("Function", {})
    resource = template["Resources"][logical_id]
    if resource["Type"] != "AWS::Serverless::Function":
        raise ValueError(f"{logical_id} is a {resource['Type']}, not an AWS::Serverless::Function")
    properties = {**globals_function, **resource["Properties"]}

    parameter_values = {
        name: definition["Default"]
        for name, definition in template.get("Parameters", {}).items()
        if "Default" in definition
    }
    parameter_values.update(parameters or {})

    variables = {
        **globals_function.get("Environment", {}).get("Variables", {}),
        **resource["Properties"].get("Environment", {}).get("Variables", {}),
    }
    environment = {}
    for name, value in variables.items():
        resolved = resolve_value(value, parameter_values)
        if resolved is not None:
            environment[name] = resolved

    layer_dirs = []
    for layer in properties.get("Layers", []):
        layer_id = layer["Ref"] if isinstance(layer, dict) else layer
        layer_dirs.append(base_dir / template["Resources"][layer_id]["Properties"]["ContentUri"])

    return FunctionSpec(
        logical_id=logical_id,
        code_dir=base_dir / properties["CodeUri"],
        handler=properties["Handler"],
        layer_dirs=tuple(layer_dirs),
        environment=environment,
        timeout_s=int(properties.get("Timeout", 3)),
        memory_mb=int(properties.get("MemorySize", 128)),
    )


def invoke(
    logical_id: str,
    event: str | Path | dict,
    environment: dict[str, str] | None = None,
    parameters: dict[str, Any] | None = None,
    remaining_time_ms: int | None = None,
) -> InvokeResult:
    """Invoke function `logical_id` with an event (a dict, or the path of a JSON file as `sam local invoke -e` takes).

    `environment` overrides variables last. `remaining_time_ms` sets what
    `context.get_remaining_time_in_millis()` starts from, by default the
    function's timeout.
    """
    spec = function_spec(logical_id, parameters)
    if not isinstance(event, dict):
        event = json.loads(Path(event).read_text())
    function_name = f"policy-sync-{logical_id}"

    child_environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **BASE_ENVIRONMENT,
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(spec.timeout_s),
        **spec.environment,
        **(environment or {}),
    }

    with tempfile.TemporaryDirectory(prefix="lambda-harness-") as work_dir:
        request_path = Path(work_dir) / "request.json"
        response_path = Path(work_dir) / "response.json"
        request_path.write_text(
            json.dumps(
                {
                    "sys_path": [str(spec.code_dir), *(str(path) for path in spec.layer_dirs)],
                    "handler": spec.handler,
                    "event": event,
                    "function_name": function_name,
                    "memory_mb": spec.memory_mb,
                    "remaining_time_ms": remaining_time_ms if remaining_time_ms is not None else spec.timeout_s * 1000,
                    "response_path": str(response_path),
                }
            )
        )
        completed = subprocess.run(
            [sys.executable, "-I", str(Path(__file__).resolve()), str(request_path)],
            env=child_environment,
            cwd=work_dir,
            capture_output=True,
            text=True,
            timeout=INVOKE_TIMEOUT_S,
        )
        if not response_path.exists():
            raise RuntimeError(
                f"the function process exited with {completed.returncode} without a response:\n{completed.stderr}"
            )
        response = json.loads(response_path.read_text())

    return InvokeResult(
        result=response.get("result"),
        error_type=response.get("errorType"),
        error_message=response.get("errorMessage"),
        stdout=completed.stdout,
        stderr=completed.stderr,
    )


# What follows runs in the child process, started with `python -I`.


class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    def __init__(self, function_name: str, memory_mb: int, remaining_time_ms: int):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "harness"
        self._deadline_s = time.monotonic() + remaining_time_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline_s - time.monotonic()) * 1000))


def drop_editable_finders() -> None:
    """Remove setuptools' editable-install finders, so only sys.path decides what can be imported."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]


def run_request(request_path: str) -> None:
    """Import the handler, call it with the event and a context, and write the result or error as JSON."""
    request = json.loads(Path(request_path).read_text())
    drop_editable_finders()
    sys.path[0:0] = request["sys_path"]

    module_name, function_name = request["handler"].rsplit(".", 1)
    context = LambdaContext(request["function_name"], request["memory_mb"], request["remaining_time_ms"])
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        response = {"result": handler(request["event"], context)}
    except Exception as error:  # the test inspects the error like Lambda's errorType and errorMessage
        response = {"errorType": type(error).__name__, "errorMessage": str(error)}
    Path(request["response_path"]).write_text(json.dumps(response))


if __name__ == "__main__":
    run_request(sys.argv[1])
