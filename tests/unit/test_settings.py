"""Settings parsing from flag values and from the Lambda environment."""

import pytest

from policy_sync.settings import MAX_LEVEL, ConfigError, Settings, normalize_api_key

SECRET_KEY = "il1api-secret-0123456789"


def test_defaults_without_policy_topic():
    settings = Settings.from_values()

    assert settings.policy_topic is None
    assert settings.routing_keys == ()
    assert settings.email_path == "data.email"
    assert settings.shift_path == "data.shift"
    assert settings.shift_offset == 0
    assert settings.filter_key is None
    assert settings.filter_val is None
    assert settings.ilert_url == "https://api.ilert.com"
    assert settings.max_retries == 100
    assert settings.max_payload_bytes == 262144


def test_all_flags_are_parsed():
    settings = Settings.from_values(
        policy_topic="shifts/+/changed",
        policy_routing_keys="location,slot",
        map_key_email="user.info.email",
        map_key_shift="user.shift",
        shift_offset="-1",
        filter_key="eventType",
        filter_val="active",
        ilert_url="http://127.0.0.1:8080/",
        max_retries="0",
        max_payload_bytes="1024",
    )

    assert settings == Settings(
        policy_topic="shifts/+/changed",
        routing_keys=("location", "slot"),
        email_path="user.info.email",
        shift_path="user.shift",
        shift_offset=-1,
        filter_key="eventType",
        filter_val="active",
        ilert_url="http://127.0.0.1:8080",
        max_retries=0,
        max_payload_bytes=1024,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("location", ("location",)),
        ("location,slot", ("location", "slot")),
        (" location , slot ", ("location", "slot")),
        ("location,,slot,", ("location", "slot")),
        (",location", ("location",)),
    ],
    ids=["one", "two", "blanks-trimmed", "empty-names-dropped", "leading-comma"],
)
def test_routing_keys_text_gives_field_names(text, expected):
    settings = Settings.from_values(policy_topic="t", policy_routing_keys=text)

    assert settings.routing_keys == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("-1", -1),
        ("+2", 2),
        (" 3 ", 3),
        ("007", 7),
        (str(-MAX_LEVEL), -MAX_LEVEL),
        (str(MAX_LEVEL), MAX_LEVEL),
    ],
    ids=["zero", "negative", "plus-sign", "blanks", "leading-zeros", "min", "max"],
)
def test_shift_offset_text_gives_integer(text, expected):
    assert Settings.from_values(shift_offset=text).shift_offset == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://api.ilert.com", "https://api.ilert.com"),
        ("https://api.ilert.com/", "https://api.ilert.com"),
        ("http://localhost:8080//", "http://localhost:8080"),
        (" https://proxy.example.com/ilert/ ", "https://proxy.example.com/ilert"),
    ],
    ids=["plain", "trailing-slash", "two-slashes-and-port", "blanks-and-path"],
)
def test_ilert_url_loses_trailing_slash(text, expected):
    assert Settings.from_values(ilert_url=text).ilert_url == expected


def _config_error(**values) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(**values)
    return str(caught.value)


# Each case: the flag values, then words the one-line message must contain
# (the flag, the environment variable and the invalid value).
CONFIG_ERROR_CASES = [
    ({"policy_topic": "t"}, ["--policy_routing_keys", "POLICY_ROUTING_KEYS", "nothing"]),
    ({"policy_topic": "t", "policy_routing_keys": " , "}, ["--policy_routing_keys", "' , '"]),
    ({"require_routing_keys": True}, ["--policy_routing_keys", "POLICY_ROUTING_KEYS"]),
    ({"policy_topic": "  "}, ["--policy_topic", "empty"]),
    ({"shift_offset": "abc"}, ["--shift_offset", "SHIFT_OFFSET", "'abc'"]),
    ({"shift_offset": "1.5"}, ["--shift_offset", "'1.5'"]),
    ({"shift_offset": "3_0"}, ["--shift_offset", "'3_0'"]),
    ({"shift_offset": "\u0663"}, ["--shift_offset", "'\u0663'"]),
    ({"shift_offset": ""}, ["--shift_offset", "''"]),
    ({"shift_offset": "- 1"}, ["--shift_offset", "'- 1'"]),
    ({"shift_offset": "9" * 5000}, ["--shift_offset", "out of range"]),
    ({"shift_offset": str(-MAX_LEVEL - 1)}, ["--shift_offset", "out of range"]),
    ({"filter_val": "active"}, ["--filter_val", "FILTER_VAL", "'active'", "--filter_key"]),
    ({"filter_key": ""}, ["--filter_key", "FILTER_KEY", "''"]),
    ({"map_key_email": "data..email"}, ["--map_key_email", "MAP_KEY_EMAIL", "'data..email'"]),
    ({"map_key_email": ""}, ["--map_key_email", "''"]),
    ({"map_key_shift": ".shift"}, ["--map_key_shift", "MAP_KEY_SHIFT", "'.shift'"]),
    ({"map_key_shift": "data."}, ["--map_key_shift", "'data.'"]),
    ({"ilert_url": "ftp://api.ilert.com"}, ["--ilert_url", "ILERT_API_URL", "'ftp://api.ilert.com'", "http"]),
    ({"ilert_url": "api.ilert.com"}, ["--ilert_url", "'api.ilert.com'"]),
    ({"ilert_url": "https://"}, ["--ilert_url", "host"]),
    ({"ilert_url": "https://api.ilert.com?x=1"}, ["--ilert_url", "query"]),
    ({"ilert_url": "https://api.ilert.com:99999"}, ["--ilert_url", "Port out of range"]),
    ({"ilert_url": "http://[::1"}, ["--ilert_url", "'http://[::1'"]),
    ({"ilert_url": "https://api ilert.com"}, ["--ilert_url", "blanks"]),
    ({"max_retries": "-1"}, ["--max_retries", "MAX_RETRIES", "'-1'", "from 0"]),
    ({"max_retries": "many"}, ["--max_retries", "'many'"]),
    ({"max_payload_bytes": "0"}, ["--max_payload_bytes", "MAX_PAYLOAD_BYTES", "'0'", "from 1"]),
    ({"max_payload_bytes": "256k"}, ["--max_payload_bytes", "'256k'"]),
]


@pytest.mark.parametrize(
    ("values", "words"),
    CONFIG_ERROR_CASES,
    ids=[
        "topic-without-routing-keys",
        "topic-with-only-commas",
        "required-routing-keys-missing",
        "blank-topic",
        "offset-word",
        "offset-fraction",
        "offset-underscore",
        "offset-arabic-digit",
        "offset-empty",
        "offset-sign-apart",
        "offset-huge",
        "offset-below-min",
        "filter-value-without-key",
        "filter-key-empty",
        "email-path-empty-segment",
        "email-path-empty",
        "shift-path-leading-dot",
        "shift-path-trailing-dot",
        "url-ftp",
        "url-no-scheme",
        "url-no-host",
        "url-query",
        "url-bad-port",
        "url-bad-ipv6",
        "url-blank-inside",
        "retries-negative",
        "retries-word",
        "payload-limit-zero",
        "payload-limit-unit",
    ],
)
def test_invalid_value_raises_config_error_naming_it(values, words):
    message = _config_error(**values)

    for word in words:
        assert word in message
    assert "\n" not in message


def test_long_invalid_value_is_cut_in_message():
    message = _config_error(shift_offset="x" * 500)

    assert len(message) < 300
    assert "..." in message


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_env_gives_settings_with_defaults():
    settings = Settings.from_env({"POLICY_ROUTING_KEYS": "location"})

    assert settings == Settings(policy_topic=None, routing_keys=("location",))


def test_env_reads_every_variable():
    environ = {
        "POLICY_ROUTING_KEYS": "location, slot",
        "MAP_KEY_EMAIL": "user.email",
        "MAP_KEY_SHIFT": "user.shift",
        "SHIFT_OFFSET": "-1",
        "FILTER_KEY": "eventType",
        "FILTER_VAL": "active",
        "ILERT_API_URL": "http://localhost:8080/",
        "MAX_RETRIES": "5",
        "MAX_PAYLOAD_BYTES": "4096",
        "UNRELATED": "ignored",
    }

    settings = Settings.from_env(environ)

    assert settings == Settings(
        policy_topic=None,
        routing_keys=("location", "slot"),
        email_path="user.email",
        shift_path="user.shift",
        shift_offset=-1,
        filter_key="eventType",
        filter_val="active",
        ilert_url="http://localhost:8080",
        max_retries=5,
        max_payload_bytes=4096,
    )


def test_env_empty_strings_count_as_unset():
    environ = {
        "POLICY_ROUTING_KEYS": "location",
        "MAP_KEY_EMAIL": "",
        "MAP_KEY_SHIFT": "",
        "SHIFT_OFFSET": "",
        "FILTER_KEY": "",
        "FILTER_VAL": "",
        "ILERT_API_URL": "",
        "MAX_RETRIES": "",
        "MAX_PAYLOAD_BYTES": "",
    }

    assert Settings.from_env(environ) == Settings(policy_topic=None, routing_keys=("location",))


@pytest.mark.parametrize(
    "environ",
    [{}, {"POLICY_ROUTING_KEYS": ""}, {"POLICY_ROUTING_KEYS": ","}],
    ids=["absent", "empty", "only-comma"],
)
def test_env_without_routing_keys_raises(environ):
    with pytest.raises(ConfigError, match="POLICY_ROUTING_KEYS"):
        Settings.from_env(environ)


def test_env_invalid_offset_raises_naming_variable():
    with pytest.raises(ConfigError, match="SHIFT_OFFSET.*'one'"):
        Settings.from_env({"POLICY_ROUTING_KEYS": "location", "SHIFT_OFFSET": "one"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (SECRET_KEY, SECRET_KEY),
        (f"  {SECRET_KEY}\n", SECRET_KEY),
        (f"Bearer {SECRET_KEY}", SECRET_KEY),
        (f"bearer {SECRET_KEY}", SECRET_KEY),
        (f"BEARER   {SECRET_KEY}", SECRET_KEY),
        (f" Bearer {SECRET_KEY} ", SECRET_KEY),
        ("BearerToken123", "BearerToken123"),
    ],
    ids=["plain", "blanks", "bearer", "lower-bearer", "upper-bearer-spaces", "bearer-and-blanks", "bearer-in-key"],
)
def test_api_key_is_normalized(raw, expected):
    assert normalize_api_key(raw) == expected


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "missing API key"),
        ("   ", "missing API key"),
        ("Bearer ", "missing API key"),
        ("Bearer", "missing API key"),
        (f"{SECRET_KEY}\nX-Injected: 1", "invalid API key"),
        (f"{SECRET_KEY} extra", "invalid API key"),
        (f"{SECRET_KEY}\u00e9", "invalid API key"),
        (f'"{SECRET_KEY}\x00"', "invalid API key"),
    ],
    ids=["empty", "blanks", "bearer-only", "bearer-no-space", "line-break", "inner-space", "non-ascii", "control"],
)
def test_unusable_api_key_raises_without_key(raw, words):
    with pytest.raises(ConfigError) as caught:
        normalize_api_key(raw)

    assert words in str(caught.value)
    assert SECRET_KEY not in str(caught.value)
    assert "ILERT_API_KEY" in str(caught.value)
