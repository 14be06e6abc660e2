"""Log setup for local_runner: one key=value line per record on stderr.

The handlers log their outcomes themselves through Powertools Logger, as JSON
on stdout. These settings cover local_runner's own loops and the standard
`logging` loggers of the shared layer.
"""

from __future__ import annotations

import logging
import os
import sys

# Attributes every LogRecord has; anything else on a record came in through `extra`.
STANDARD_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def level_for_verbosity(verbosity: int) -> int:
    """Map the count of `-v` flags to a log level: none warning, one info, two or more debug."""
    if verbosity <= 0:
        return logging.WARNING
    if verbosity == 1:
        return logging.INFO
    return logging.DEBUG


class KeyValueFormatter(logging.Formatter):
    """Format a record as `time level logger message key=value ...`, with `extra` fields appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        fields = {key: value for key, value in vars(record).items() if key not in STANDARD_RECORD_FIELDS}
        if fields:
            line += " " + " ".join(f"{key}={format_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def format_value(value: object) -> str:
    """Return `value` bare when it has no blanks or quotes, else quoted as a Python string literal."""
    text = str(value)
    if text and not any(char.isspace() or char in "\"'=" for char in text):
        return text
    return repr(text)


def configure_logging(verbosity: int) -> None:
    """Set up stderr logging and the Powertools settings; call before importing the handlers.

    Powertools reads POWERTOOLS_* when a handler module is imported, so metrics
    and tracing (which need AWS) are switched off and its log level follows `-v`.
    """
    level = level_for_verbosity(verbosity)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = logging.getLevelName(level)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    # The client and AWS libraries are chatty at debug; keep them at info unless -vvv.
    library_level = logging.DEBUG if verbosity >= 3 else max(level, logging.INFO)
    for name in ("kafka", "urllib3", "paho", "botocore", "boto3", "aws_xray_sdk"):
        logging.getLogger(name).setLevel(library_level)
