"""Policy-sync configuration: parse and check the settings once, at startup.

The same settings come from ilagent-style command-line flags (`local_runner`)
or from the Lambda environment. Every problem raises `ConfigError` with one
line that names the flag, the environment variable, the invalid value and
the fix.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_EMAIL_PATH = "data.email"
DEFAULT_SHIFT_PATH = "data.shift"
DEFAULT_ILERT_URL = "https://api.ilert.com"
DEFAULT_MAX_RETRIES = 100
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024

# Levels are stored as SQLite INTEGER (signed 64 bit) by local_runner, so a
# shift offset and a level must stay inside that range.
MAX_LEVEL = 2**63 - 1

# A signed integer in ASCII digits with optional surrounding blanks. Python's
# int() would also take "3_0" and non-ASCII digits, which a person would not mean.
INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)

# Maximum length of a value quoted in an error message. Longer values are cut and end in "...".
QUOTE_MAX_CHARS = 60


class ConfigError(ValueError):
    """Invalid or missing configuration. The message is one line that names the setting and the fix."""


@dataclass(frozen=True)
class Setting:
    """One configuration setting: how an operator names it on each deployment."""

    description: str
    flag: str
    env: str

    def label(self) -> str:
        """Return the description with the flag and the environment variable, for error messages."""
        return f"{self.description} ({self.flag} / {self.env})"


POLICY_TOPIC = Setting("policy topic", "--policy_topic", "set by the event source")
ROUTING_KEYS = Setting("routing-key fields", "--policy_routing_keys", "POLICY_ROUTING_KEYS")
EMAIL_PATH = Setting("email path", "--map_key_email", "MAP_KEY_EMAIL")
SHIFT_PATH = Setting("shift path", "--map_key_shift", "MAP_KEY_SHIFT")
SHIFT_OFFSET = Setting("shift offset", "--shift_offset", "SHIFT_OFFSET")
FILTER_KEY = Setting("filter key", "--filter_key", "FILTER_KEY")
FILTER_VAL = Setting("filter value", "--filter_val", "FILTER_VAL")
ILERT_URL = Setting("ilert API base URL", "--ilert_url", "ILERT_API_URL")
MAX_RETRIES = Setting("retry limit", "--max_retries", "MAX_RETRIES")
MAX_PAYLOAD_BYTES = Setting("payload size limit", "--max_payload_bytes", "MAX_PAYLOAD_BYTES")


@dataclass(frozen=True)
class Settings:
    """Validated policy-sync settings; build them with `from_values` or `from_env`."""

    policy_topic: str | None
    routing_keys: tuple[str, ...]
    email_path: str = DEFAULT_EMAIL_PATH
    shift_path: str = DEFAULT_SHIFT_PATH
    shift_offset: int = 0
    filter_key: str | None = None
    filter_val: str | None = None
    ilert_url: str = DEFAULT_ILERT_URL
    max_retries: int = DEFAULT_MAX_RETRIES
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    @classmethod
    def from_values(
        cls,
        *,
        policy_topic: str | None = None,
        policy_routing_keys: str | None = None,
        map_key_email: str | None = None,
        map_key_shift: str | None = None,
        shift_offset: str | None = None,
        filter_key: str | None = None,
        filter_val: str | None = None,
        ilert_url: str | None = None,
        max_retries: str | None = None,
        max_payload_bytes: str | None = None,
        require_routing_keys: bool | None = None,
    ) -> Settings:
        """Check setting texts as they come from command-line flags and build `Settings`.

        None means "not given" and selects the default. Routing keys are
        required when a policy topic is set, or always with
        `require_routing_keys=True` (Lambda, where the event source sets the topic).

        Raises:
            ConfigError: on the first invalid or missing setting.
        """
        if policy_topic is not None and not policy_topic.strip():
            raise ConfigError(
                f"invalid {POLICY_TOPIC.label()}: the value is empty; give an MQTT topic filter or a Kafka topic name"
            )

        routing_keys = parse_routing_keys(policy_routing_keys)
        if not routing_keys and (policy_topic is not None or require_routing_keys):
            raise ConfigError(
                f"missing {ROUTING_KEYS.label()}: got {quote(policy_routing_keys)}; "
                "give one or more comma-separated top-level field names, e.g. location,slot"
            )

        if filter_val is not None and filter_key is None:
            raise ConfigError(
                f"invalid {FILTER_VAL.label()}: {quote(filter_val)} is set without a filter key; "
                f"also set {FILTER_KEY.flag} / {FILTER_KEY.env}"
            )

        return cls(
            policy_topic=policy_topic,
            routing_keys=routing_keys,
            email_path=parse_dot_path(EMAIL_PATH, map_key_email, DEFAULT_EMAIL_PATH),
            shift_path=parse_dot_path(SHIFT_PATH, map_key_shift, DEFAULT_SHIFT_PATH),
            shift_offset=parse_integer(SHIFT_OFFSET, shift_offset, 0, minimum=-MAX_LEVEL),
            filter_key=None if filter_key is None else parse_dot_path(FILTER_KEY, filter_key, ""),
            filter_val=filter_val,
            ilert_url=parse_ilert_url(ilert_url),
            max_retries=parse_integer(MAX_RETRIES, max_retries, DEFAULT_MAX_RETRIES, minimum=0),
            max_payload_bytes=parse_integer(
                MAX_PAYLOAD_BYTES, max_payload_bytes, DEFAULT_MAX_PAYLOAD_BYTES, minimum=1
            ),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build `Settings` from the Lambda environment; `POLICY_ROUTING_KEYS` is required.

        An empty variable counts as unset, because SAM template parameters
        default to "". The policy topic is None: the event source selects it.

        Raises:
            ConfigError: on the first invalid or missing setting.
        """

        def read(name: str) -> str | None:
            value = environ.get(name)
            return value if value else None

        return cls.from_values(
            policy_routing_keys=read(ROUTING_KEYS.env),
            map_key_email=read(EMAIL_PATH.env),
            map_key_shift=read(SHIFT_PATH.env),
            shift_offset=read(SHIFT_OFFSET.env),
            filter_key=read(FILTER_KEY.env),
            filter_val=read(FILTER_VAL.env),
            ilert_url=read(ILERT_URL.env),
            max_retries=read(MAX_RETRIES.env),
            max_payload_bytes=read(MAX_PAYLOAD_BYTES.env),
            require_routing_keys=True,
        )


def parse_routing_keys(text: str | None) -> tuple[str, ...]:
    """Split comma-separated field names, trimming blanks and dropping empty names."""
    if text is None:
        return ()
    names = (name.strip() for name in text.split(","))
    return tuple(name for name in names if name)


def parse_dot_path(setting: Setting, text: str | None, default: str) -> str:
    """Return the trimmed dot path, or `default` for None; reject empty paths and empty segments."""
    if text is None:
        return default
    path = text.strip()
    if not path or any(not segment for segment in path.split(".")):
        raise ConfigError(
            f"invalid {setting.label()}: {quote(text)} has an empty segment; "
            "give field names separated by dots, e.g. data.email"
        )
    return path


def parse_integer(setting: Setting, text: str | None, default: int, *, minimum: int) -> int:
    """Parse a signed integer in ASCII digits in the range minimum..MAX_LEVEL; None gives `default`."""
    if text is None:
        return default
    if not INTEGER_TEXT.fullmatch(text):
        raise ConfigError(
            f"invalid {setting.label()}: {quote(text)} is not an integer; "
            "give ASCII digits with an optional sign, e.g. -1 or 2"
        )

    # Cap the digit count before int() so that a huge value fails on the range
    # check below and not on Python's limit for int-from-text conversion.
    digits = text.strip().lstrip("+-").lstrip("0") or "0"
    sign = -1 if text.strip().startswith("-") else 1
    value = sign * int(digits) if len(digits) <= len(str(MAX_LEVEL)) else sign * (MAX_LEVEL + 1)
    if value < minimum or value > MAX_LEVEL:
        raise ConfigError(
            f"invalid {setting.label()}: {quote(text.strip())} is out of range; "
            f"give a value from {minimum} to {MAX_LEVEL}"
        )
    return value


def parse_ilert_url(text: str | None) -> str:
    """Return the http(s) base URL without trailing slashes; None gives the default."""
    if text is None:
        return DEFAULT_ILERT_URL
    url = text.strip().rstrip("/")

    problem = None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as error:
        problem = str(error)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "the scheme must be http or https"
        elif not parts.hostname:
            problem = "the host name is missing"
        elif parts.query or parts.fragment:
            problem = "a base URL takes no query or fragment"
        elif any(char.isspace() for char in url):
            problem = "the URL contains blanks"

    if problem is not None:
        raise ConfigError(
            f"invalid {ILERT_URL.label()}: {quote(text)}: {problem}; give a URL such as {DEFAULT_ILERT_URL}"
        )
    return url


def normalize_api_key(raw: str) -> str:
    """Return the ilert API key without surrounding blanks and without a leading "Bearer " prefix.

    Raises:
        ConfigError: when the key is empty or contains blanks or non-printable
            characters; the message never contains the key.
    """
    key = raw.strip()
    prefix = re.match(r"bearer(\s+|$)", key, re.IGNORECASE)
    if prefix:
        key = key[prefix.end() :]

    if not key:
        raise ConfigError(
            "missing API key: set ILERT_API_KEY (local_runner) or the Secrets Manager secret (Lambda) "
            "to an ilert API key"
        )
    if not (key.isascii() and key.isprintable()) or any(char.isspace() for char in key):
        raise ConfigError(
            "invalid API key: it contains blanks, control or non-ASCII characters; "
            "check ILERT_API_KEY or the Secrets Manager secret for a stray line break or quote"
        )
    return key


def quote(value: str | None) -> str:
    """Return `value` in quotes on one line, cut to QUOTE_MAX_CHARS characters."""
    if value is None:
        return "nothing"
    if len(value) > QUOTE_MAX_CHARS:
        return repr(value[:QUOTE_MAX_CHARS] + "...")
    return repr(value)
