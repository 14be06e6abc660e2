"""Property tests: map_message returns an Assignment or an Outcome for every input and never raises."""

import json
import math

from hypothesis import given, settings, strategies as st

from policy_sync.mapping import Assignment, map_message
from policy_sync.outcomes import BAD_SHIFT, Outcome, OutcomeKind
from policy_sync.settings import MAX_LEVEL, Settings

EXAMPLES = 300

SETTINGS = Settings.from_values(
    policy_topic="shifts",
    policy_routing_keys="location,slot",
    shift_offset="-1",
    filter_key="eventType",
)
EMAIL_PATH = ("data", "email")
SHIFT_PATH = ("data", "shift")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.from_regex(r"\s*[+-]?[0-9]{1,25}\s*", fullmatch=True),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
keys = st.one_of(st.sampled_from(["location", "slot", "eventType", "data", "email", "shift"]), st.text(max_size=8))
json_objects = st.dictionaries(keys, json_values, max_size=6)


def set_path(obj: dict, path: tuple[str, ...], value) -> None:
    for segment in path[:-1]:
        child = obj.get(segment)
        if not isinstance(child, dict):
            child = obj[segment] = {}
        obj = child
    obj[path[-1]] = value


def assert_result_is_well_formed(result) -> None:
    assert isinstance(result, (Assignment, Outcome))
    if isinstance(result, Assignment):
        assert isinstance(result.email, str)
        assert result.email == result.email.strip()
        assert result.email
        assert isinstance(result.routing_key, str)
        assert result.routing_key
        assert isinstance(result.level, int)
        assert 0 <= result.level <= MAX_LEVEL
    else:
        assert result.kind in (OutcomeKind.REJECTED, OutcomeKind.FILTERED)
        assert result.reason
        assert result.detail
        assert len(result.detail) < 400


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(payload):
    assert_result_is_well_formed(map_message(payload, SETTINGS))


@settings(max_examples=EXAMPLES)
@given(json_values)
def test_arbitrary_json_never_raises(value):
    payload = json.dumps(value).encode()

    assert_result_is_well_formed(map_message(payload, SETTINGS))


@settings(max_examples=EXAMPLES)
@given(json_objects, json_values, json_values, json_values, json_values, json_values)
def test_configured_paths_with_arbitrary_values_never_raise(obj, email, shift, location, slot, event_type):
    set_path(obj, EMAIL_PATH, email)
    set_path(obj, SHIFT_PATH, shift)
    obj["location"] = location
    obj["slot"] = slot
    obj["eventType"] = event_type
    payload = json.dumps(obj).encode()

    assert_result_is_well_formed(map_message(payload, SETTINGS))


@settings(max_examples=EXAMPLES)
@given(
    email=st.emails(),
    shift=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    as_text=st.booleans(),
    location=st.text(min_size=1),
)
def test_valid_message_gives_assignment(email, shift, as_text, location):
    shift_value = f" {shift} " if as_text else shift
    obj = {"location": location, "eventType": "x", "data": {"email": email, "shift": shift_value}}

    result = map_message(json.dumps(obj).encode(), SETTINGS)

    assert result == Assignment(email, location, max(0, shift - 1))


@settings(max_examples=EXAMPLES)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_shift_is_level_or_bad_shift(shift):
    obj = {"location": "powerplant", "eventType": "x", "data": {"email": "a@example.com", "shift": shift}}

    result = map_message(json.dumps(obj).encode(), SETTINGS)

    whole = math.isfinite(shift) and shift.is_integer()
    if whole and -MAX_LEVEL - 1 <= int(shift) <= MAX_LEVEL:
        assert result == Assignment("a@example.com", "powerplant", max(0, int(shift) - 1))
    else:
        assert isinstance(result, Outcome)
        assert result.reason == BAD_SHIFT
