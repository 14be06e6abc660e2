"""Mapping of raw shift messages to assignments or outcomes, rule by rule."""

import json

import pytest

from policy_sync.mapping import MISSING, Assignment, get_path, map_message
from policy_sync.outcomes import (
    BAD_SHIFT,
    FILTER_MISMATCH,
    MISSING_EMAIL,
    NO_ROUTING_KEY,
    NOT_AN_OBJECT,
    NOT_JSON,
    NOT_UTF8,
    TOO_LARGE,
    Outcome,
    OutcomeKind,
)
from policy_sync.settings import MAX_LEVEL, Settings

EMAIL = "oncall@example.com"


def make_settings(**values) -> Settings:
    values.setdefault("policy_topic", "shifts")
    values.setdefault("policy_routing_keys", "location")
    return Settings.from_values(**values)


def encode(message) -> bytes:
    return json.dumps(message).encode()


def message_with(shift=MISSING, email=EMAIL, **top_level) -> dict:
    """Build a message with `location` "powerplant", the email and, unless MISSING, the shift."""
    data = {"email": email}
    if shift is not MISSING:
        data["shift"] = shift
    return {"location": "powerplant", **top_level, "data": data}


def assert_rejected(result, reason: str) -> Outcome:
    assert isinstance(result, Outcome), result
    assert result.kind is OutcomeKind.REJECTED
    assert result.reason == reason
    return result


# Examples


def test_active_shift_message_gives_assignment():
    payload = (
        b'{"location": "powerplant", "eventType": "active",'
        b' "data": {"email": "oncall@example.com", "shift": "1"}}'
    )
    settings = make_settings(policy_routing_keys="location", filter_key="eventType", filter_val="active")

    assert map_message(payload, settings) == Assignment("oncall@example.com", "powerplant", 1)


def test_two_routing_key_fields_are_joined():
    payload = encode({"location": "powerplant", "slot": "three50", "data": {"email": EMAIL}})

    result = map_message(payload, make_settings(policy_routing_keys="location,slot"))

    assert result == Assignment(EMAIL, "powerplantthree50", 0)


def test_offset_below_zero_clamps_level():
    result = map_message(encode(message_with(shift="0")), make_settings(shift_offset="-1"))

    assert result == Assignment(EMAIL, "powerplant", 0)


# Decode


def test_payload_over_limit_is_too_large():
    payload = encode(message_with(shift=1))

    result = map_message(payload, make_settings(max_payload_bytes=str(len(payload) - 1)))

    assert_rejected(result, TOO_LARGE)
    assert str(len(payload)) in result.detail


def test_payload_at_limit_is_mapped():
    payload = encode(message_with(shift=1))

    result = map_message(payload, make_settings(max_payload_bytes=str(len(payload))))

    assert result == Assignment(EMAIL, "powerplant", 1)


def test_size_is_checked_before_decoding():
    payload = b"\xff" * 100

    assert_rejected(map_message(payload, make_settings(max_payload_bytes="10")), TOO_LARGE)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", NOT_UTF8),
        (b'{"location": "caf\xe9"}', NOT_UTF8),
        (b'{"a": "\xed\xa0\x80"}', NOT_UTF8),
        (b"", NOT_JSON),
        (b"   ", NOT_JSON),
        (b"not json", NOT_JSON),
        (b'{"location": "powerplant"', NOT_JSON),
        (b"{'location': 'powerplant'}", NOT_JSON),
        (b'{"a": 1} {"b": 2}', NOT_JSON),
        (b"[" * 100_000 + b"]" * 100_000, NOT_JSON),
        (b'{"a":' * 30_000 + b"1" + b"}" * 30_000, NOT_JSON),
        (b'{"n": ' + b"9" * 5000 + b"}", NOT_JSON),
        (b"[]", NOT_AN_OBJECT),
        (b'[{"location": "powerplant"}]', NOT_AN_OBJECT),
        (b'"text"', NOT_AN_OBJECT),
        (b"42", NOT_AN_OBJECT),
        (b"null", NOT_AN_OBJECT),
        (b"true", NOT_AN_OBJECT),
    ],
    ids=[
        "invalid-start-byte",
        "latin1-text",
        "encoded-surrogate",
        "empty",
        "blanks",
        "plain-text",
        "truncated",
        "single-quotes",
        "two-documents",
        "deep-arrays",
        "deep-objects",
        "number-too-long",
        "empty-array",
        "array-of-object",
        "string",
        "number",
        "null",
        "boolean",
    ],
)
def test_undecodable_payload_is_rejected(payload, reason):
    result = assert_rejected(map_message(payload, make_settings()), reason)

    assert result.detail
    assert result.routing_key is None
    assert result.level is None


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview],
    ids=["bytes", "bytearray", "memoryview"],
)
def test_bytes_like_payload_is_mapped(wrap):
    payload = wrap(encode(message_with(shift=2)))

    assert map_message(payload, make_settings()) == Assignment(EMAIL, "powerplant", 2)


def test_str_payload_raises_type_error():
    with pytest.raises(TypeError, match="str"):
        map_message(json.dumps(message_with()), make_settings())


def test_utf8_byte_order_mark_is_ignored():
    payload = b"\xef\xbb\xbf" + encode(message_with(shift=1))

    assert map_message(payload, make_settings()) == Assignment(EMAIL, "powerplant", 1)


def test_repeated_key_last_value_wins():
    payload = (
        b'{"location": "first", "location": "powerplant",'
        b' "data": {"email": "old@example.com", "shift": 1, "email": "oncall@example.com", "shift": 3}}'
    )

    assert map_message(payload, make_settings()) == Assignment(EMAIL, "powerplant", 3)


def test_non_ascii_text_is_mapped():
    payload = encode({"location": "Kraftwerk Süd", "data": {"email": "bärbel@example.com"}})

    assert map_message(payload, make_settings()) == Assignment("bärbel@example.com", "Kraftwerk Süd", 0)


# Filter


@pytest.mark.parametrize(
    ("filter_key", "filter_val", "top_level"),
    [
        (None, None, {}),
        ("eventType", None, {"eventType": "anything"}),
        ("eventType", None, {"eventType": None}),
        ("eventType", None, {"eventType": {}}),
        ("eventType", "active", {"eventType": "active"}),
        ("event.type", "active", {"event": {"type": "active"}}),
        ("eventType", "", {"eventType": ""}),
    ],
    ids=["no-filter", "key-present", "key-null", "key-object", "value-equal", "nested-key", "empty-value-equal"],
)
def test_matching_filter_lets_message_through(filter_key, filter_val, top_level):
    settings = make_settings(filter_key=filter_key, filter_val=filter_val)

    result = map_message(encode(message_with(shift=1, **top_level)), settings)

    assert result == Assignment(EMAIL, "powerplant", 1)


@pytest.mark.parametrize(
    ("filter_key", "filter_val", "top_level", "detail_words"),
    [
        ("eventType", None, {}, ["eventType", "missing"]),
        ("eventType", "active", {}, ["eventType", "missing"]),
        ("eventType", "active", {"eventType": "inactive"}, ["'inactive'", "'active'"]),
        ("eventType", "active", {"eventType": "Active"}, ["'Active'"]),
        ("eventType", "active", {"eventType": " active"}, ["' active'"]),
        ("eventType", "1", {"eventType": 1}, ["number"]),
        ("eventType", "true", {"eventType": True}, ["boolean"]),
        ("eventType", "null", {"eventType": None}, ["null"]),
        ("event.type", "active", {"event": "active"}, ["event.type", "missing"]),
        ("eventType", "active", {"eventType": "x" * 100}, ["..."]),
    ],
    ids=[
        "key-missing",
        "key-missing-with-value",
        "other-value",
        "case-differs",
        "blanks-differ",
        "number-not-string",
        "boolean-not-string",
        "null-not-string",
        "path-through-string",
        "long-value-cut",
    ],
)
def test_unmatched_filter_gives_filtered(filter_key, filter_val, top_level, detail_words):
    settings = make_settings(filter_key=filter_key, filter_val=filter_val)

    result = map_message(encode(message_with(shift=1, **top_level)), settings)

    assert isinstance(result, Outcome)
    assert result.kind is OutcomeKind.FILTERED
    assert result.reason == FILTER_MISMATCH
    for word in detail_words:
        assert word in result.detail
    assert len(result.detail) < 200


def test_filtered_outcome_names_routing_key_and_level():
    settings = make_settings(filter_key="eventType", filter_val="active")

    result = map_message(encode(message_with(shift=2, eventType="inactive")), settings)

    assert result.kind is OutcomeKind.FILTERED
    assert result.routing_key == "powerplant"
    assert result.level == 2


def test_filter_is_checked_before_email():
    settings = make_settings(filter_key="eventType")

    result = map_message(encode({"location": "powerplant"}), settings)

    assert result.kind is OutcomeKind.FILTERED


# Email


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("oncall@example.com", "oncall@example.com"),
        ("  oncall@example.com\t\n", "oncall@example.com"),
        ("OnCall@Example.COM", "OnCall@Example.COM"),
        ("not-an-address", "not-an-address"),
    ],
    ids=["plain", "blanks-trimmed", "case-kept", "format-not-checked"],
)
def test_email_string_is_used_trimmed(value, expected):
    result = map_message(encode(message_with(email=value)), make_settings())

    assert result == Assignment(expected, "powerplant", 0)


@pytest.mark.parametrize(
    ("data", "detail_words"),
    [
        ({}, ["no email", "data.email"]),
        ({"email": None}, ["data.email", "null"]),
        ({"email": 5}, ["data.email", "number"]),
        ({"email": True}, ["data.email", "boolean"]),
        ({"email": ["oncall@example.com"]}, ["data.email", "array"]),
        ({"email": {"address": "oncall@example.com"}}, ["data.email", "object"]),
        ({"email": ""}, ["data.email", "empty"]),
        ({"email": " \t "}, ["data.email", "empty"]),
        ({"email": "oncall\ud800@example.com"}, ["data.email", "surrogate"]),
    ],
    ids=["missing", "null", "number", "boolean", "array", "object", "empty", "blanks", "lone-surrogate"],
)
def test_unusable_email_is_missing_email(data, detail_words):
    payload = encode({"location": "powerplant", "data": data})

    result = assert_rejected(map_message(payload, make_settings()), MISSING_EMAIL)

    for word in detail_words:
        assert word in result.detail
    assert "oncall" not in result.detail


def test_email_path_through_string_is_missing_email():
    payload = encode({"location": "powerplant", "data": "oncall@example.com"})

    result = assert_rejected(map_message(payload, make_settings()), MISSING_EMAIL)

    assert "oncall" not in result.detail


def test_custom_email_path_is_walked():
    payload = encode({"location": "powerplant", "user": {"info": {"email": EMAIL}}})

    result = map_message(payload, make_settings(map_key_email="user.info.email"))

    assert result == Assignment(EMAIL, "powerplant", 0)


def test_missing_email_outcome_names_routing_key_and_level():
    payload = encode({"location": "powerplant", "data": {"shift": 2}})

    result = assert_rejected(map_message(payload, make_settings()), MISSING_EMAIL)

    assert result.routing_key == "powerplant"
    assert result.level == 2


def test_email_is_checked_before_shift():
    payload = encode({"location": "powerplant", "data": {"shift": "x"}})

    assert_rejected(map_message(payload, make_settings()), MISSING_EMAIL)


# Shift


@pytest.mark.parametrize(
    ("shift", "level"),
    [
        (MISSING, 0),
        (0, 0),
        (2, 2),
        (2.0, 2),
        (-0.0, 0),
        (1e3, 1000),
        ("1", 1),
        ("+2", 2),
        (" 3 ", 3),
        ("\t4\n", 4),
        ("007", 7),
        ("-0", 0),
        (-1, 0),
        ("-3", 0),
        (10**6, 10**6),
        (str(MAX_LEVEL), MAX_LEVEL),
        ("0" * 50 + "5", 5),
    ],
    ids=[
        "missing",
        "int-zero",
        "int",
        "float-whole",
        "negative-zero-float",
        "exponent-whole",
        "string",
        "string-plus",
        "string-blanks",
        "string-tab-newline",
        "string-leading-zeros",
        "string-minus-zero",
        "negative-int-clamped",
        "negative-string-clamped",
        "million",
        "max-level",
        "long-leading-zeros",
    ],
)
def test_integer_shift_gives_level(shift, level):
    result = map_message(encode(message_with(shift=shift)), make_settings())

    assert result == Assignment(EMAIL, "powerplant", level)


@pytest.mark.parametrize(
    ("raw_shift", "detail_words"),
    [
        (b"1.5", ["1.5"]),
        (b"0.0001", ["0.0001"]),
        (b"true", ["true"]),
        (b"false", ["false"]),
        (b"null", ["null"]),
        (b"{}", ["object"]),
        (b"[1]", ["array"]),
        (b'""', ["''"]),
        (b'"  "', ["'  '"]),
        (b'"abc"', ["'abc'"]),
        (b'"1.0"', ["'1.0'"]),
        (b'"1.5"', ["'1.5'"]),
        (b'"3_0"', ["'3_0'"]),
        ('"\u0663"'.encode(), ["'\u0663'"]),
        ('"\uff11"'.encode(), ["'\uff11'"]),
        ('"\u00a01"'.encode(), ["1"]),
        (b'"1e3"', ["'1e3'"]),
        (b'"0x10"', ["'0x10'"]),
        (b'"- 1"', ["'- 1'"]),
        (b'"+-1"', ["'+-1'"]),
        (b'"1 2"', ["'1 2'"]),
        (b"NaN", ["nan"]),
        (b"Infinity", ["inf"]),
        (b"-Infinity", ["-inf"]),
        (b"1e400", ["inf"]),
        (str(MAX_LEVEL + 1).encode(), ["out of", "range"]),
        (str(-MAX_LEVEL - 2).encode(), ["out of", "range"]),
        (b"1e300", ["out of", "range"]),
        (b'"' + b"9" * 5000 + b'"', ["out of", "range", "..."]),
        (b'"' + b"x" * 100 + b'"', ["..."]),
    ],
    ids=[
        "fraction",
        "small-fraction",
        "true",
        "false",
        "null",
        "object",
        "array",
        "empty-string",
        "blank-string",
        "word",
        "string-whole-fraction",
        "string-fraction",
        "string-underscore",
        "arabic-indic-digit",
        "fullwidth-digit",
        "non-ascii-blank",
        "string-exponent",
        "string-hex",
        "sign-apart",
        "two-signs",
        "two-numbers",
        "nan",
        "infinity",
        "minus-infinity",
        "float-overflow",
        "int-above-64-bit",
        "int-below-64-bit",
        "huge-float",
        "huge-digit-string",
        "long-string-cut",
    ],
)
def test_non_integer_shift_is_bad_shift(raw_shift, detail_words):
    payload = b'{"location": "powerplant", "data": {"email": "oncall@example.com", "shift": ' + raw_shift + b"}}"

    result = assert_rejected(map_message(payload, make_settings()), BAD_SHIFT)

    assert "data.shift" in result.detail
    for word in detail_words:
        assert word in result.detail
    assert len(result.detail) < 200
    assert EMAIL not in result.detail
    assert result.routing_key == "powerplant"
    assert result.level is None


@pytest.mark.parametrize(
    ("shift", "offset", "level"),
    [
        ("0", "-1", 0),
        ("1", "-1", 0),
        ("2", "-1", 1),
        (MISSING, "2", 2),
        (1, "+1", 2),
        (5, "-10", 0),
        (-2, "3", 1),
    ],
    ids=["zero-minus-one", "one-minus-one", "two-minus-one", "missing-plus-two", "int-plus-one", "clamped", "negative-shift"],
)
def test_offset_is_added_then_clamped(shift, offset, level):
    result = map_message(encode(message_with(shift=shift)), make_settings(shift_offset=offset))

    assert result == Assignment(EMAIL, "powerplant", level)


def test_level_above_64_bit_range_is_bad_shift():
    result = map_message(encode(message_with(shift=MAX_LEVEL)), make_settings(shift_offset="1"))

    assert_rejected(result, BAD_SHIFT)


def test_custom_shift_path_is_walked():
    payload = encode({"location": "powerplant", "data": {"email": EMAIL}, "roster": {"slot": "4"}})

    result = map_message(payload, make_settings(map_key_shift="roster.slot"))

    assert result == Assignment(EMAIL, "powerplant", 4)


def test_shift_path_through_string_means_missing_shift():
    payload = encode({"location": "powerplant", "data": {"email": EMAIL}, "roster": "4"})

    result = map_message(payload, make_settings(map_key_shift="roster.slot"))

    assert result == Assignment(EMAIL, "powerplant", 0)


def test_shift_is_checked_before_routing_key():
    payload = encode({"data": {"email": EMAIL, "shift": "x"}})

    assert_rejected(map_message(payload, make_settings()), BAD_SHIFT)


# Routing key


@pytest.mark.parametrize(
    ("fields", "top_level", "routing_key"),
    [
        ("location", {"location": "powerplant"}, "powerplant"),
        ("location", {"location": 42}, "42"),
        ("location", {"location": -7}, "-7"),
        ("location", {"location": 0}, "0"),
        ("location", {"location": "  "}, "  "),
        ("location", {"location": " powerplant "}, " powerplant "),
        ("location,slot", {"location": "powerplant", "slot": 350}, "powerplant350"),
        ("slot,location", {"location": "powerplant", "slot": "three50"}, "three50powerplant"),
        ("location,slot", {"location": "powerplant"}, "powerplant"),
        ("location,slot", {"slot": "three50"}, "three50"),
        ("location,slot", {"location": True, "slot": "three50"}, "three50"),
        ("location,slot", {"location": 1.0, "slot": "three50"}, "three50"),
        ("location,slot", {"location": None, "slot": "three50"}, "three50"),
        ("location,slot", {"location": "", "slot": "three50"}, "three50"),
        ("location,slot", {"location": ["x"], "slot": "three50"}, "three50"),
        ("location,slot", {"location": {"a": "x"}, "slot": "three50"}, "three50"),
        ("location,slot", {"location": "bad\ud800", "slot": "three50"}, "three50"),
        ("location,location", {"location": "ab"}, "abab"),
        ("a.b", {"a.b": "dotted"}, "dotted"),
    ],
    ids=[
        "string",
        "int",
        "negative-int",
        "zero",
        "blank-string-counts",
        "blanks-kept",
        "string-and-int",
        "configured-order",
        "second-missing",
        "first-missing",
        "boolean-skipped",
        "float-skipped",
        "null-skipped",
        "empty-string-skipped",
        "array-skipped",
        "object-skipped",
        "lone-surrogate-skipped",
        "field-twice",
        "dot-in-field-name-is-literal",
    ],
)
def test_routing_key_fields_are_joined_in_order(fields, top_level, routing_key):
    payload = encode({**top_level, "data": {"email": EMAIL}})

    result = map_message(payload, make_settings(policy_routing_keys=fields))

    assert result == Assignment(EMAIL, routing_key, 0)


@pytest.mark.parametrize(
    ("fields", "top_level"),
    [
        ("location", {}),
        ("location", {"location": ""}),
        ("location", {"location": False}),
        ("location", {"location": 3.5}),
        ("location,slot", {"location": None, "slot": {}}),
        ("a.b", {"a": {"b": "nested"}}),
        ("location", {"data": {"location": "nested"}}),
    ],
    ids=["absent", "empty-string", "boolean", "float", "null-and-object", "nested-not-walked", "only-nested"],
)
def test_unusable_routing_key_fields_rejected(fields, top_level):
    payload = encode({**top_level, "data": {"email": EMAIL, "shift": 1}})

    result = assert_rejected(map_message(payload, make_settings(policy_routing_keys=fields)), NO_ROUTING_KEY)

    for name in fields.split(","):
        assert name in result.detail
    assert result.routing_key is None
    assert result.level == 1


def test_settings_without_routing_keys_give_no_routing_key():
    result = map_message(encode(message_with()), Settings.from_values())

    assert_rejected(result, NO_ROUTING_KEY)


def test_routing_key_join_is_ambiguous_as_in_ilagent():
    settings = make_settings(policy_routing_keys="location,slot")

    first = map_message(encode({"location": "ab", "slot": "c", "data": {"email": EMAIL}}), settings)
    second = map_message(encode({"location": "a", "slot": "bc", "data": {"email": EMAIL}}), settings)

    assert first.routing_key == "abc"
    assert second.routing_key == "abc"


# Dot paths


@pytest.mark.parametrize(
    ("obj", "path", "expected"),
    [
        ({"a": 1}, "a", 1),
        ({"a": {"b": {"c": "x"}}}, "a.b.c", "x"),
        ({"a": {"b": None}}, "a.b", None),
        ({"a": {"b": {}}}, "a.b", {}),
        ({}, "a", MISSING),
        ({"a": {}}, "a.b", MISSING),
        ({"a": "text"}, "a.b", MISSING),
        ({"a": [{"b": 1}]}, "a.b", MISSING),
        ({"a": [1, 2]}, "a.0", MISSING),
        ({"a": None}, "a.b", MISSING),
        ({"a.b": 1}, "a.b", MISSING),
        ([1], "a", MISSING),
    ],
    ids=[
        "top-level",
        "nested",
        "null-is-present",
        "empty-object",
        "missing-key",
        "missing-nested-key",
        "through-string",
        "through-array",
        "array-index-not-supported",
        "through-null",
        "dotted-key-not-addressable",
        "root-not-object",
    ],
)
def test_get_path_walks_objects(obj, path, expected):
    assert get_path(obj, path) == expected
