"""A Lambda-like context object for calling the handlers outside Lambda."""

from __future__ import annotations

import threading
import time
import uuid

FUNCTION_NAME_PREFIX = "local-runner"

# local_runner has no memory limit of its own. It reports the MemorySize of
# the functions in template.yaml, so code that reads the limit gets a number.
MEMORY_LIMIT_IN_MB = 256


class LocalContext:
    """The subset of `LambdaContext` that the handlers and Powertools read.

    `get_remaining_time_in_millis` counts down from `budget_ms` and drops to 0
    as soon as `stop_event` is set, so a handler stops taking new records when
    the daemon is asked to shut down.
    """

    def __init__(self, function_name: str, budget_ms: int, stop_event: threading.Event | None = None):
        self.function_name = f"{FUNCTION_NAME_PREFIX}-{function_name}"
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        self.memory_limit_in_mb = MEMORY_LIMIT_IN_MB
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/local/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline_s = time.monotonic() + budget_ms / 1000
        self._stop_event = stop_event

    def get_remaining_time_in_millis(self) -> int:
        """Return the milliseconds left in the budget, or 0 once a shutdown was requested."""
        if self._stop_event is not None and self._stop_event.is_set():
            return 0
        return max(int((self._deadline_s - time.monotonic()) * 1000), 0)
