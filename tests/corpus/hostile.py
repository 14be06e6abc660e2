"""A deterministic corpus of hostile shift-message payloads, each with the outcome it must end in.

Every payload is written against one configuration, `CORPUS_FLAGS`: routing
key from the top-level fields `site` and `slot`, email at `data.email`, shift
at `data.shift`, and the filter `eventType` = `active`. The emulator seed
that goes with it is `corpus_seed()`: routing key `key-000` (site `key-` plus
slot `000`) with three levels, and `KNOWN_EMAIL` among the users. The one
payload that is applied is `good_payload()`, which is not part of the corpus.

Each entry records where its outcome is decided:

- stage `mapping`: `policy_sync.mapping.map_message` returns the *rejected*
  or *filtered* outcome itself;
- stage `sync`: the mapping returns an `Assignment` on purpose (the message
  is well formed), and the ilert API turns it down: an email or routing key
  unknown to the emulator, or a level the policy does not have. The outcome
  is *rejected* and no PUT is sent.

Entries of kind *filtered* are deliberate: the spec makes a filter key that
is missing, not a string or not equal to the filter value a filtered
message, which is acknowledged and not dead-lettered. They are the
`filter_*` entries.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from policy_sync import outcomes
from policy_sync.outcomes import OutcomeKind
from policy_sync.settings import DEFAULT_MAX_PAYLOAD_BYTES, Settings

CORPUS_FLAGS = {
    "policy_routing_keys": "site,slot",
    "map_key_email": "data.email",
    "map_key_shift": "data.shift",
    "filter_key": "eventType",
    "filter_val": "active",
}

KNOWN_EMAIL = "user-05@example.com"
KNOWN_SITE = "key-"
KNOWN_SLOT = "000"
KNOWN_ROUTING_KEY = KNOWN_SITE + KNOWN_SLOT
LEVEL_COUNT = 3
GOOD_SHIFT = 1

MQTT_HUGE_PAYLOAD_BYTES = 10 * 1000 * 1000

REJECTED = OutcomeKind.REJECTED
FILTERED = OutcomeKind.FILTERED


@dataclass(frozen=True)
class HostilePayload:
    """One corpus entry: a payload and the outcome it must end in."""

    name: str
    payload: bytes
    kind: OutcomeKind
    reason: str
    stage: str

    def __repr__(self) -> str:
        return f"HostilePayload({self.name!r}, {len(self.payload)} bytes, {self.kind.value}/{self.reason})"


def corpus_settings() -> Settings:
    """Return the settings every corpus entry is written for."""
    return Settings.from_values(policy_topic="shifts", **CORPUS_FLAGS)


def corpus_daemon_flags() -> list[str]:
    """Return CORPUS_FLAGS as local_runner command-line arguments."""
    arguments = []
    for name, value in CORPUS_FLAGS.items():
        arguments += [f"--{name}", value]
    return arguments


def corpus_seed() -> dict[str, Any]:
    """Return the emulator seed for the corpus: routing keys key-000..key-002, 20 users, 3 levels."""
    from ilert_emulator.testing import make_seed

    return make_seed(policies=3, users=20, levels=LEVEL_COUNT, api_key="corpus-key")


def good_message(**top_level: Any) -> dict[str, Any]:
    """Return the message that maps to KNOWN_EMAIL on level GOOD_SHIFT of KNOWN_ROUTING_KEY."""
    message = {
        "eventType": "active",
        "site": KNOWN_SITE,
        "slot": KNOWN_SLOT,
        "data": {"email": KNOWN_EMAIL, "shift": GOOD_SHIFT},
    }
    message.update(top_level)
    return message


def good_payload(email: str = KNOWN_EMAIL, shift: int = GOOD_SHIFT) -> bytes:
    """Return a payload that the daemon applies: `email` on level `shift` of KNOWN_ROUTING_KEY."""
    message = good_message()
    message["data"] = {"email": email, "shift": shift}
    return encode(message)


def encode(message: Any, ascii_only: bool = True) -> bytes:
    """Encode a message as compact JSON. With `ascii_only`, non-ASCII text is written as \\u escapes."""
    return json.dumps(message, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8")


def with_data(**fields: Any) -> dict[str, Any]:
    """Return the good message with the given `data` fields replaced."""
    message = good_message()
    message["data"] = {**message["data"], **fields}
    return message


# Values of every JSON type, for the wrong-type entries at each configured path.
TYPE_SAMPLES: tuple[tuple[str, Any], ...] = (
    ("object_empty", {}),
    ("object", {"value": KNOWN_EMAIL}),
    ("array_empty", []),
    ("array", [KNOWN_EMAIL]),
    ("true", True),
    ("false", False),
    ("null", None),
    ("zero", 0),
    ("integer", 7),
    ("negative", -3),
    ("fraction", 1.5),
    ("empty_string", ""),
    ("blank_string", "   "),
    ("whitespace_string", "\t\r\n "),
)


def _entry(name: str, payload: bytes, reason: str, stage: str = "mapping", kind: OutcomeKind = REJECTED):
    return HostilePayload(name=name, payload=payload, kind=kind, reason=reason, stage=stage)


def _invalid_utf8() -> list[HostilePayload]:
    good = good_payload()
    email = KNOWN_EMAIL.encode()
    samples = {
        "lone_continuation_byte": b"\x80" + good,
        "byte_ff": good.replace(email, b"\xff" + email),
        "byte_fe": good.replace(email, email + b"\xfe"),
        "overlong_slash": good.replace(b'"key-"', b'"key\xc0\xaf"'),
        "overlong_nul": good.replace(email, b"user\xc0\x80@example.com"),
        "truncated_two_byte": good.replace(email, email + b"\xc3"),
        "truncated_three_byte_at_end": good + b"\xe2\x82",
        "encoded_surrogate": good.replace(email, b"\xed\xa0\x80" + email),
        "above_max_code_point": good.replace(email, b"\xf4\x90\x80\x80" + email),
        "five_byte_sequence": good.replace(email, b"\xf8\x88\x80\x80\x80" + email),
        "latin1_email": encode(with_data(email="j\u00f6rg@example.com"), ascii_only=False)
        .decode()
        .encode("latin-1"),
        "invalid_in_key_name": good.replace(b'"data"', b'"da\x9ata"'),
        "utf16_le_with_bom": b"\xff\xfe" + good.decode().encode("utf-16-le"),
        "utf16_be_with_bom": b"\xfe\xff" + good.decode().encode("utf-16-be"),
        "utf32_le_with_bom": b"\xff\xfe\x00\x00" + good.decode().encode("utf-32-le"),
        "cesu8_emoji": encode(with_data(email="x@example.com")).replace(b"x@", b"\xed\xa0\xbd\xed\xb8\x80@"),
    }
    return [_entry(f"utf8_{name}", payload, outcomes.NOT_UTF8) for name, payload in samples.items()]


def _malformed_json() -> list[HostilePayload]:
    good = good_payload()
    entries = [
        _entry(f"json_truncated_at_{cut}", good[:cut], outcomes.NOT_JSON)
        for cut in (1, 2, 10, 25, 40, 60, len(good) // 2, len(good) - 2, len(good) - 1)
    ]
    samples = {
        "empty": b"",
        "only_blanks": b" \r\n\t ",
        "trailing_garbage": good + b"x",
        "two_objects": good + good,
        "two_json_lines": good + b"\n" + good,
        "single_quotes": good.replace(b'"', b"'"),
        "trailing_comma": good[:-1] + b",}",
        "comment": b"/* shift */" + good,
        "unquoted_key": good.replace(b'"site"', b"site"),
        "hex_number": good.replace(b'"shift":1', b'"shift":0x1'),
        "leading_zero": good.replace(b'"shift":1', b'"shift":01'),
        "plus_sign": good.replace(b'"shift":1', b'"shift":+1'),
        "missing_value": good.replace(b'"shift":1', b'"shift":'),
        "unclosed_string": good.replace(b'"active"', b'"active'),
        "form_feed_as_blank": b"\x0c" + good,
        "javascript_undefined": good.replace(b'"shift":1', b'"shift":undefined'),
        "python_literal": good.replace(b'"shift":1', b'"shift":None'),
        "bad_escape": good.replace(KNOWN_EMAIL.encode(), b"\\x41" + KNOWN_EMAIL.encode()),
    }
    entries += [_entry(f"json_{name}", payload, outcomes.NOT_JSON) for name, payload in samples.items()]
    return entries


def _not_an_object() -> list[HostilePayload]:
    samples = {
        "array_empty": b"[]",
        "array_of_good_message": b"[" + good_payload() + b"]",
        "string": b'"' + KNOWN_EMAIL.encode() + b'"',
        "string_of_json": json.dumps(good_payload().decode()).encode(),
        "zero": b"0",
        "negative_fraction": b"-1.5",
        "exponent_overflow": b"1e400",
        "null": b"null",
        "true": b"true",
        "false": b"false",
        "nan": b"NaN",
        "infinity": b"Infinity",
        "minus_infinity": b"-Infinity",
        "bom_then_array": b"\xef\xbb\xbf[1]",
    }
    return [_entry(f"top_level_{name}", payload, outcomes.NOT_AN_OBJECT) for name, payload in samples.items()]


def _deep_nesting() -> list[HostilePayload]:
    depth = 100_000
    deep_array = b"[" * depth + b"]" * depth
    return [
        _entry("nesting_100k_open_brackets", b"[" * depth, outcomes.NOT_JSON),
        _entry("nesting_100k_closed_arrays", deep_array, outcomes.NOT_JSON),
        _entry("nesting_40k_objects", b'{"a":' * 40_000 + b"1" + b"}" * 40_000, outcomes.NOT_JSON),
        _entry(
            "nesting_100k_at_email",
            b'{"eventType":"active","site":"key-","slot":"000","data":{"email":' + deep_array + b"}}",
            outcomes.NOT_JSON,
        ),
        _entry(
            "nesting_100k_inside_ignored_field",
            good_payload()[:-1] + b',"extra":' + deep_array + b"}",
            outcomes.NOT_JSON,
        ),
        _entry(
            "nesting_200_at_email",
            encode(with_data(email=_nested_list(200))),
            outcomes.MISSING_EMAIL,
        ),
        _entry(
            "nesting_200_at_shift",
            encode(with_data(shift=_nested_list(200))),
            outcomes.BAD_SHIFT,
        ),
    ]


def _nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _huge_numbers() -> list[HostilePayload]:
    ten_thousand_digits = b"9" * 10_000
    good = good_payload()
    return [
        # Python 3.11 raises ValueError for more than 4300 digits (sys.get_int_max_str_digits), so the whole payload is not usable JSON.
        _entry("number_10k_digits_at_shift", good.replace(b'"shift":1', b'"shift":' + ten_thousand_digits), outcomes.NOT_JSON),
        _entry("number_10k_digits_at_slot", good.replace(b'"slot":"000"', b'"slot":' + ten_thousand_digits), outcomes.NOT_JSON),
        _entry("number_10k_digits_elsewhere", good[:-1] + b',"extra":-' + ten_thousand_digits + b"}", outcomes.NOT_JSON),
        _entry("number_10k_digit_string_at_shift", encode(with_data(shift="9" * 10_000)), outcomes.BAD_SHIFT),
        _entry("number_2_pow_63_at_shift", encode(with_data(shift=2**63)), outcomes.BAD_SHIFT),
        _entry("number_below_int64_at_shift", encode(with_data(shift=-(2**63) - 1)), outcomes.BAD_SHIFT),
        _entry("number_1e308_at_shift", good.replace(b'"shift":1', b'"shift":1e308'), outcomes.BAD_SHIFT),
        _entry("number_exponent_overflow_at_shift", good.replace(b'"shift":1', b'"shift":1e999'), outcomes.BAD_SHIFT),
        _entry("number_int64_max_at_shift", encode(with_data(shift=2**63 - 1)), outcomes.NO_SUCH_LEVEL, "sync"),
        _entry("number_4000_digits_at_slot", encode(good_message(slot=10**3999)), outcomes.UNKNOWN_ROUTING_KEY, "sync"),
    ]


def _nan_and_infinity() -> list[HostilePayload]:
    good = good_payload()
    entries = []
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        name = literal.decode().lower().replace("-", "minus_")
        entries.append(_entry(f"{name}_at_shift", good.replace(b'"shift":1', b'"shift":' + literal), outcomes.BAD_SHIFT))
        entries.append(
            _entry(f"{name}_at_email", good.replace(b'"' + KNOWN_EMAIL.encode() + b'"', literal), outcomes.MISSING_EMAIL)
        )
    entries.append(
        _entry(
            "nan_at_both_routing_key_fields",
            good.replace(b'"key-"', b"NaN").replace(b'"000"', b"Infinity"),
            outcomes.NO_ROUTING_KEY,
        )
    )
    entries.append(_entry("nan_string_at_shift", encode(with_data(shift="NaN")), outcomes.BAD_SHIFT))
    return entries


def _wrong_types() -> list[HostilePayload]:
    entries = []
    for type_name, value in TYPE_SAMPLES:
        entries.append(_entry(f"email_{type_name}", encode(with_data(email=value)), outcomes.MISSING_EMAIL))

    for type_name, value in TYPE_SAMPLES:
        if type_name in ("zero", "negative"):
            continue  # levels 0 and max(0, -3) exist: these are good messages
        if type_name == "integer":
            entries.append(_entry("shift_integer_7", encode(with_data(shift=value)), outcomes.NO_SUCH_LEVEL, "sync"))
        else:
            entries.append(_entry(f"shift_{type_name}", encode(with_data(shift=value)), outcomes.BAD_SHIFT))

    # One routing-key field wrong: the other field alone gives a routing key the emulator does not know.
    for field in ("site", "slot"):
        for type_name, value in TYPE_SAMPLES:
            entries.append(
                _entry(f"{field}_{type_name}", encode(good_message(**{field: value})), outcomes.UNKNOWN_ROUTING_KEY, "sync")
            )

    for type_name, value in TYPE_SAMPLES:
        counts = isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, str) and value)
        reason, stage = (outcomes.UNKNOWN_ROUTING_KEY, "sync") if counts else (outcomes.NO_ROUTING_KEY, "mapping")
        entries.append(_entry(f"routing_key_both_{type_name}", encode(good_message(site=value, slot=value)), reason, stage))
    without_routing_key = good_message()
    del without_routing_key["site"], without_routing_key["slot"]
    entries.append(_entry("routing_key_both_missing", encode(without_routing_key), outcomes.NO_ROUTING_KEY))

    for type_name, value in TYPE_SAMPLES:
        entries.append(
            _entry(f"filter_{type_name}", encode(good_message(eventType=value)), outcomes.FILTER_MISMATCH, kind=FILTERED)
        )
    without_filter_key = good_message()
    del without_filter_key["eventType"]
    filter_texts = {"missing": None, "other_case": "Active", "trailing_blank": "active ", "nul_suffix": "active\x00"}
    for name, text in filter_texts.items():
        message = without_filter_key if text is None else good_message(eventType=text)
        entries.append(_entry(f"filter_{name}", encode(message), outcomes.FILTER_MISMATCH, kind=FILTERED))

    for type_name, value in TYPE_SAMPLES:
        if type_name in ("object_empty", "object"):
            continue
        entries.append(_entry(f"data_{type_name}", encode(good_message(data=value)), outcomes.MISSING_EMAIL))
    return entries


def _shift_texts() -> list[HostilePayload]:
    texts = {
        "decimal_text": "1.0",
        "underscore": "1_0",
        "arabic_indic_digit": "\u0663",
        "fullwidth_digit": "\uff11",
        "hex_text": "0x1",
        "exponent_text": "1e0",
        "double_sign": "+-1",
        "inner_blank": "1 1",
        "no_break_space": "1\u00a0",
        "leading_nul": "\x001",
        "word": "one",
    }
    return [_entry(f"shift_text_{name}", encode(with_data(shift=text)), outcomes.BAD_SHIFT) for name, text in texts.items()]


def _unicode_emails() -> list[HostilePayload]:
    emails = {
        "umlaut": "j\u00f6rg@example.com",
        "cjk": "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
        "idn_domain": "user-05@ex\u00e4mple.com",
        "fullwidth": "\uff55\uff53\uff45\uff52-05@example.com",
        "cyrillic_homoglyph": "us\u0435r-05@example.com",
        "zero_width_space": KNOWN_EMAIL + "\u200b",
        "right_to_left_override": "\u202e" + KNOWN_EMAIL,
        "combining_accent": "use\u0301r-05@example.com",
        "emoji": "\U0001f642@example.com",
        "byte_order_mark_inside": "\ufeff" + KNOWN_EMAIL,
        "greek": "\u03c7\u03c1\u03ae\u03c3\u03c4\u03b7\u03c2@example.com",
    }
    entries = []
    for name, email in emails.items():
        entries.append(_entry(f"unicode_email_{name}", encode(with_data(email=email)), outcomes.UNKNOWN_USER, "sync"))
    entries.append(
        _entry(
            "unicode_email_raw_utf8",
            encode(with_data(email="m\u00fcller@example.com"), ascii_only=False),
            outcomes.UNKNOWN_USER,
            "sync",
        )
    )
    return entries


def _duplicate_keys() -> list[HostilePayload]:
    email = json.dumps(KNOWN_EMAIL)
    head = '{"eventType":"active","site":"key-","slot":"000",'
    samples = {
        "email_then_number": (head + '"data":{"email":' + email + ',"email":5,"shift":1}}', outcomes.MISSING_EMAIL),
        "shift_then_text": (head + '"data":{"email":' + email + ',"shift":1,"shift":"x"}}', outcomes.BAD_SHIFT),
        "site_then_null": (
            '{"eventType":"active","site":"key-","slot":"000","site":null,"slot":null,'
            '"data":{"email":' + email + "}}",
            outcomes.NO_ROUTING_KEY,
        ),
        "data_then_text": (head + '"data":{"email":' + email + '},"data":"x"}', outcomes.MISSING_EMAIL),
        "filter_last_wins_then_no_email": (
            '{"eventType":"inactive","eventType":"active","site":"key-","slot":"000","data":{}}',
            outcomes.MISSING_EMAIL,
        ),
        "slot_then_unknown": (
            '{"eventType":"active","site":"key-","slot":"000","slot":"999","data":{"email":' + email + "}}",
            outcomes.UNKNOWN_ROUTING_KEY,
        ),
    }
    entries = []
    for name, (text, reason) in samples.items():
        stage = "sync" if reason == outcomes.UNKNOWN_ROUTING_KEY else "mapping"
        entries.append(_entry(f"duplicate_{name}", text.encode(), reason, stage))
    return entries


def _byte_order_marks() -> list[HostilePayload]:
    bom = b"\xef\xbb\xbf"
    no_email = encode(with_data(email=""))
    return [
        _entry("bom_double", bom + bom + good_payload(), outcomes.NOT_JSON),
        _entry("bom_after_blank", b" " + bom + good_payload(), outcomes.NOT_JSON),
        _entry("bom_between_tokens", good_payload().replace(b'","', b'",' + bom + b'"', 1), outcomes.NOT_JSON),
        _entry("bom_then_empty_email", bom + no_email, outcomes.MISSING_EMAIL),
        _entry("bom_then_null", bom + b"null", outcomes.NOT_AN_OBJECT),
        _entry("bom_only", bom, outcomes.NOT_JSON),
        _entry("bom_inside_slot", encode(good_message(slot="\ufeff000")), outcomes.UNKNOWN_ROUTING_KEY, "sync"),
    ]


def _control_characters() -> list[HostilePayload]:
    good = good_payload()
    email = KNOWN_EMAIL.encode()
    entries = [
        # JSON forbids raw control characters inside strings.
        _entry("control_raw_soh_in_email", good.replace(email, b"\x01" + email), outcomes.NOT_JSON),
        _entry("control_raw_newline_in_email", good.replace(email, email + b"\n"), outcomes.NOT_JSON),
        _entry("control_raw_tab_in_site", good.replace(b'"key-"', b'"key-\t"'), outcomes.NOT_JSON),
        _entry("control_raw_escape_in_slot", good.replace(b'"000"', b'"\x1b[31m000"'), outcomes.NOT_JSON),
        _entry("control_raw_vertical_tab_between_tokens", good.replace(b",", b",\x0b", 1), outcomes.NOT_JSON),
    ]
    escaped = {
        "bell_in_email": ("email", KNOWN_EMAIL + "\x07"),
        "ansi_in_email": ("email", "\x1b[2J" + KNOWN_EMAIL),
        "line_break_in_email": ("email", "user-05\n@example.com"),
        "delete_in_email": ("email", "user-05\x7f@example.com"),
    }
    for name, (_field, email_text) in escaped.items():
        entries.append(_entry(f"control_{name}", encode(with_data(email=email_text)), outcomes.UNKNOWN_USER, "sync"))
    entries.append(
        _entry(
            "control_log_injection_in_slot",
            encode(good_message(slot='000\n{"outcome":"applied"}')),
            outcomes.UNKNOWN_ROUTING_KEY,
            "sync",
        )
    )
    entries.append(_entry("control_raw_delete_in_email", good.replace(email, b"\x7f" + email), outcomes.UNKNOWN_USER, "sync"))
    return entries


def _long_strings() -> list[HostilePayload]:
    long_text = "x" * 200_000
    return [
        _entry("long_email", encode(with_data(email=long_text + "@example.com")), outcomes.UNKNOWN_USER, "sync"),
        _entry("long_filter_value", encode(good_message(eventType=long_text)), outcomes.FILTER_MISMATCH, kind=FILTERED),
        _entry("long_shift_text", encode(with_data(shift=" " * 200_000 + "1x")), outcomes.BAD_SHIFT),
        _entry("long_key_name_without_email", encode({"eventType": "active", long_text: 1, "data": {}}), outcomes.MISSING_EMAIL),
        _entry(
            "many_keys_without_email",
            encode({"eventType": "active", **{f"k{index}": index for index in range(10_000)}, "data": {}}),
            outcomes.MISSING_EMAIL,
        ),
        _entry("long_slot_4k", encode(good_message(slot="9" * 4000)), outcomes.UNKNOWN_ROUTING_KEY, "sync"),
    ]


def _oversized() -> list[HostilePayload]:
    limit = DEFAULT_MAX_PAYLOAD_BYTES

    def padded(message: dict[str, Any], size: int) -> bytes:
        payload = encode(message)
        return payload[:-1] + b" " * (size - len(payload)) + b"}"

    return [
        _entry("oversized_limit_plus_one", padded(good_message(), limit + 1), outcomes.TOO_LARGE),
        _entry("oversized_1_mib", padded(good_message(), 1024 * 1024), outcomes.TOO_LARGE),
        _entry("oversized_5_mib_binary", bytes(range(256)) * (5 * 1024 * 4), outcomes.TOO_LARGE),
        _entry("oversized_10_mb", padded(good_message(), MQTT_HUGE_PAYLOAD_BYTES), outcomes.TOO_LARGE),
        # The limit is inclusive: a payload of exactly the limit is parsed.
        _entry("oversized_exactly_limit_without_email", padded(with_data(email=""), limit), outcomes.MISSING_EMAIL),
    ]


def _nul_bytes() -> list[HostilePayload]:
    good = good_payload()
    return [
        _entry("nul_only", b"\x00", outcomes.NOT_JSON),
        _entry("nul_before_json", b"\x00" + good, outcomes.NOT_JSON),
        _entry("nul_after_json", good + b"\x00", outcomes.NOT_JSON),
        _entry("nul_raw_in_email", good.replace(b"@", b"\x00@"), outcomes.NOT_JSON),
        _entry("nul_escaped_in_email", encode(with_data(email=KNOWN_EMAIL + "\x00")), outcomes.UNKNOWN_USER, "sync"),
        _entry("nul_escaped_in_slot", encode(good_message(slot="000\x00")), outcomes.UNKNOWN_ROUTING_KEY, "sync"),
        _entry("nul_escaped_key_of_email", encode(with_data(email=None, **{"email\x00": KNOWN_EMAIL})), outcomes.MISSING_EMAIL),
    ]


def _surrogate_escapes() -> list[HostilePayload]:
    good = good_payload()
    email = KNOWN_EMAIL.encode()
    return [
        _entry("surrogate_high_email", good.replace(email, b"\\ud800"), outcomes.MISSING_EMAIL),
        _entry("surrogate_low_in_email", good.replace(email, b"\\udfff" + email), outcomes.MISSING_EMAIL),
        _entry("surrogate_reversed_pair_in_email", good.replace(email, b"\\ude00\\ud83d" + email), outcomes.MISSING_EMAIL),
        _entry("surrogate_at_shift", good.replace(b'"shift":1', b'"shift":"\\ud800"'), outcomes.BAD_SHIFT),
        _entry("surrogate_at_both_routing_key_fields", good.replace(b'"key-"', b'"\\udc00"').replace(b'"000"', b'"\\ud800"'), outcomes.NO_ROUTING_KEY),
        _entry("surrogate_at_site", good.replace(b'"key-"', b'"key-\\ud800"'), outcomes.UNKNOWN_ROUTING_KEY, "sync"),
        _entry("surrogate_at_filter", good.replace(b'"active"', b'"active\\ud800"'), outcomes.FILTER_MISMATCH, kind=FILTERED),
        _entry("surrogate_valid_pair_in_email", good.replace(email, b"\\ud83d\\ude00" + email), outcomes.UNKNOWN_USER, "sync"),
    ]


def _levels() -> list[HostilePayload]:
    return [
        _entry("level_one_past_last", encode(with_data(shift=LEVEL_COUNT)), outcomes.NO_SUCH_LEVEL, "sync"),
        _entry("level_exponent_number", good_payload().replace(b'"shift":1', b'"shift":1e2'), outcomes.NO_SUCH_LEVEL, "sync"),
        _entry("level_million_text", encode(with_data(shift=" 1000000 ")), outcomes.NO_SUCH_LEVEL, "sync"),
        _entry("level_unknown_routing_key", encode(good_message(slot="001x")), outcomes.UNKNOWN_ROUTING_KEY, "sync"),
    ]


@functools.lru_cache(maxsize=1)
def hostile_payloads() -> tuple[HostilePayload, ...]:
    """Build the corpus, in a fixed order; names are unique."""
    entries = [
        *_invalid_utf8(),
        *_malformed_json(),
        *_not_an_object(),
        *_deep_nesting(),
        *_huge_numbers(),
        *_nan_and_infinity(),
        *_wrong_types(),
        *_shift_texts(),
        *_unicode_emails(),
        *_duplicate_keys(),
        *_byte_order_marks(),
        *_control_characters(),
        *_long_strings(),
        *_oversized(),
        *_nul_bytes(),
        *_surrogate_escapes(),
        *_levels(),
    ]
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate corpus entry names: {duplicates}")
    return tuple(entries)
