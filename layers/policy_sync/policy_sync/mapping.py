"""Map one raw shift message to an assignment, or to the outcome that explains why there is none.

Pure: no I/O and no logging. The steps are decode, filter, email, shift and
routing key; the first step that fails decides the outcome.

Decisions where the message format leaves room:

- A UTF-8 byte order mark before the JSON text is ignored.
- `NaN`, `Infinity` and `-Infinity` literals parse (Python's json accepts
  them), but such a number is never a valid shift.
- When an object repeats a key, the last value wins.
- A shift string is ASCII digits with an optional sign and ASCII blanks
  around them. So `"1.0"`, `"3_0"`, `"٣"` and `""` are rejected, although
  the JSON number `1.0` is accepted.
- A shift or level outside the signed 64-bit range is rejected, because
  local_runner stores levels as SQLite INTEGER.
- A routing-key value counts when it is a string of length > 0, so `"  "`
  counts as is: values are not trimmed, as in ilagent.
- A filter key whose value is JSON null is present.
- A string holding a lone surrogate escape (`"\\ud800"`) cannot be sent to
  ilert, so it is not a usable email and is skipped as a routing-key value.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from policy_sync.outcomes import (
    BAD_SHIFT,
    MISSING_EMAIL,
    NO_ROUTING_KEY,
    NOT_AN_OBJECT,
    NOT_JSON,
    NOT_UTF8,
    TOO_LARGE,
    Outcome,
    filtered,
    rejected,
)
from policy_sync.settings import MAX_LEVEL, Settings

SHIFT_TEXT = re.compile(r"\s*([+-]?)([0-9]+)\s*", re.ASCII)

# Maximum length of a shift or filter value quoted in an outcome's detail.
DETAIL_VALUE_MAX_CHARS = 40


class _Missing(enum.Enum):
    MISSING = "MISSING"


MISSING = _Missing.MISSING
"""Result of `get_path` for a missing key or a path through a non-object."""


@dataclass(frozen=True)
class Assignment:
    """One change to make in ilert: `level` of the policy behind `routing_key` is covered by `email`."""

    email: str
    routing_key: str
    level: int


class _Rejected(Exception):
    """A step found the message unusable; carries the rejection reason and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def map_message(payload: bytes | bytearray | memoryview, settings: Settings) -> Assignment | Outcome:
    """Map raw message bytes to an `Assignment`, or to a *rejected* or *filtered* `Outcome`.

    The outcome carries the routing key and level when they could be read,
    so that its log line can name them. Details never contain the email.

    Raises:
        TypeError: when `payload` is not bytes-like; every byte sequence maps
            to a result.
    """
    try:
        message = decode_message(payload, settings.max_payload_bytes)
    except _Rejected as problem:
        return rejected(problem.reason, problem.detail)

    # Read the routing key and level up front so that every outcome below can
    # name them. A problem with either is still reported in its own step.
    routing_key = extract_routing_key(message, settings.routing_keys)
    try:
        level: int | None = extract_level(message, settings.shift_path, settings.shift_offset)
        shift_problem = None
    except _Rejected as problem:
        level, shift_problem = None, problem
    context = {"routing_key": routing_key, "level": level}

    mismatch = check_filter(message, settings.filter_key, settings.filter_val)
    if mismatch is not None:
        return filtered(mismatch, **context)

    try:
        email = extract_email(message, settings.email_path)
    except _Rejected as problem:
        return rejected(problem.reason, problem.detail, **context)

    if shift_problem is not None:
        return rejected(shift_problem.reason, shift_problem.detail, **context)

    if routing_key is None:
        fields = ", ".join(settings.routing_keys) or "(none configured)"
        detail = f"no routing-key field holds a non-empty string or an integer; fields: {fields}"
        return rejected(NO_ROUTING_KEY, detail, **context)

    return Assignment(email=email, routing_key=routing_key, level=level)


def decode_message(payload: bytes | bytearray | memoryview, max_payload_bytes: int) -> dict[str, Any]:
    """Check the size, decode UTF-8 and parse the JSON object; raise `_Rejected` otherwise."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, bytearray or memoryview, not {type(payload).__name__}")

    # Checked before anything is copied or parsed, so an oversized payload costs nothing.
    size = memoryview(payload).nbytes
    if size > max_payload_bytes:
        raise _Rejected(TOO_LARGE, f"payload is {size} bytes, over the limit of {max_payload_bytes} bytes")

    try:
        text = bytes(payload).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _Rejected(NOT_UTF8, f"payload is not valid UTF-8: {error.reason} at byte {error.start}") from None

    try:
        message = json.loads(text)
    except RecursionError:
        raise _Rejected(NOT_JSON, "payload is not usable JSON: nested too deeply to parse") from None
    except json.JSONDecodeError as error:
        raise _Rejected(NOT_JSON, f"payload is not valid JSON: {error}") from None
    except ValueError:
        # Python 3.11 raises ValueError for integers of more than 4300 digits (sys.get_int_max_str_digits).
        raise _Rejected(NOT_JSON, "payload is not usable JSON: a number has too many digits to parse") from None

    if not isinstance(message, dict):
        raise _Rejected(NOT_AN_OBJECT, f"payload is a JSON {json_type(message)}, not an object")
    return message


def get_path(obj: Any, dotted: str) -> Any:
    """Return the value at a dot path (`user.info.email`), or MISSING for a missing key or a non-object on the way."""
    value = obj
    for segment in dotted.split("."):
        if not isinstance(value, dict) or segment not in value:
            return MISSING
        value = value[segment]
    return value


def check_filter(message: dict[str, Any], filter_key: str | None, filter_val: str | None) -> str | None:
    """Return why the message does not pass the filter, or None when it passes or no filter is set."""
    if filter_key is None:
        return None

    value = get_path(message, filter_key)
    if value is MISSING:
        return f"filter key {filter_key} is missing"
    if filter_val is None:
        return None

    if not isinstance(value, str):
        return f"filter key {filter_key} is a JSON {json_type(value)}, expected the string {quote(filter_val)}"
    if value != filter_val:
        return f"filter key {filter_key} is {quote(value)}, expected {quote(filter_val)}"
    return None


def extract_email(message: dict[str, Any], path: str) -> str:
    """Return the trimmed email at `path`; raise `_Rejected` (missing_email) without quoting it."""
    value = get_path(message, path)
    if value is MISSING:
        raise _Rejected(MISSING_EMAIL, f"no email at {path}")
    if not isinstance(value, str):
        raise _Rejected(MISSING_EMAIL, f"email at {path} is a JSON {json_type(value)}, not a string")

    email = value.strip()
    if not email:
        raise _Rejected(MISSING_EMAIL, f"email at {path} is empty")
    if not is_encodable(email):
        raise _Rejected(MISSING_EMAIL, f"email at {path} contains a lone surrogate escape")
    return email


def extract_level(message: dict[str, Any], path: str, offset: int) -> int:
    """Return the level: the shift at `path` (missing means 0) plus `offset`, clamped at 0.

    Raises `_Rejected` (bad_shift) for a shift that is not an integer or a
    shift or level outside the signed 64-bit range.
    """
    value = get_path(message, path)
    shift = 0 if value is MISSING else parse_shift(value, path)

    level = max(0, shift + offset)
    if level > MAX_LEVEL:
        raise _Rejected(BAD_SHIFT, f"shift at {path} plus offset {offset} is out of range: level above {MAX_LEVEL}")
    return level


def parse_shift(value: Any, path: str) -> int:
    """Return the shift as an int; raise `_Rejected` (bad_shift) for anything a person would not mean as one."""
    shift: int | None = None
    if isinstance(value, bool):
        shift = None
    elif isinstance(value, int):
        shift = value
    elif isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            shift = int(value)
    elif isinstance(value, str):
        shift = parse_shift_text(value)

    if shift is None:
        raise _Rejected(BAD_SHIFT, f"shift at {path} is not an integer: {describe(value)}")
    if not -MAX_LEVEL - 1 <= shift <= MAX_LEVEL:
        raise _Rejected(BAD_SHIFT, f"shift at {path} is out of the signed 64-bit range: {describe(value)}")
    return shift


def parse_shift_text(text: str) -> int | None:
    """Parse ASCII digits with an optional sign and blanks; return None for any other text."""
    match = SHIFT_TEXT.fullmatch(text)
    if match is None:
        return None

    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(MAX_LEVEL)):
        # Out of range anyway; stay clear of int()'s limit on long digit strings.
        return MAX_LEVEL + 1
    return -int(digits) if sign == "-" else int(digits)


def extract_routing_key(message: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """Join the usable top-level field values in configured order; return None when none is usable."""
    parts = []
    for name in fields:
        value = message.get(name, MISSING)
        if isinstance(value, str) and value and is_encodable(value):
            parts.append(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(str(value))
    return "".join(parts) if parts else None


def is_encodable(text: str) -> bool:
    """Return True when `text` encodes as UTF-8, that is, contains no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type(value: Any) -> str:
    """Return the JSON type name of a parsed value (object, array, string, number, boolean, null)."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def describe(value: Any) -> str:
    """Return a short, one-line rendering of a parsed value for an outcome's detail."""
    if isinstance(value, (dict, list)):
        return f"a JSON {json_type(value)}"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return shorten(repr(value))


def quote(text: str) -> str:
    """Return `text` quoted on one line, cut to DETAIL_VALUE_MAX_CHARS characters."""
    if len(text) > DETAIL_VALUE_MAX_CHARS:
        return repr(text[:DETAIL_VALUE_MAX_CHARS]) + "..."
    return repr(text)


def shorten(text: str) -> str:
    """Cut `text` to DETAIL_VALUE_MAX_CHARS characters, marking the cut with "..."."""
    if len(text) > DETAIL_VALUE_MAX_CHARS:
        return text[:DETAIL_VALUE_MAX_CHARS] + "..."
    return text
