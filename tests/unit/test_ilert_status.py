"""The status classifier and Retry-After parsing, as tables."""

import email.utils

import pytest

from policy_sync import outcomes
from policy_sync.ilert import Call, IlertClient, classify_status, parse_retry_after
from policy_sync.outcomes import OutcomeKind

REJECTED = OutcomeKind.REJECTED
RETRY = OutcomeKind.RETRY


@pytest.mark.parametrize(
    ("status", "call", "expected"),
    [
        (200, Call.SEARCH_USER, (None, None)),
        (201, Call.UPDATE_LEVEL, (None, None)),
        (204, Call.UPDATE_LEVEL, (None, None)),
        (404, Call.SEARCH_USER, (REJECTED, outcomes.UNKNOWN_USER)),
        (404, Call.RESOLVE_POLICY, (REJECTED, outcomes.UNKNOWN_ROUTING_KEY)),
        (404, Call.UPDATE_LEVEL, (REJECTED, outcomes.API_REJECTED)),
        (400, Call.UPDATE_LEVEL, (REJECTED, outcomes.API_REJECTED)),
        (409, Call.UPDATE_LEVEL, (REJECTED, outcomes.API_REJECTED)),
        (422, Call.SEARCH_USER, (REJECTED, outcomes.API_REJECTED)),
        (418, Call.RESOLVE_POLICY, (REJECTED, outcomes.API_REJECTED)),
        (401, Call.SEARCH_USER, (RETRY, outcomes.AUTH_FAILED)),
        (403, Call.UPDATE_LEVEL, (RETRY, outcomes.AUTH_FAILED)),
        (408, Call.RESOLVE_POLICY, (RETRY, outcomes.API_UNAVAILABLE)),
        (429, Call.UPDATE_LEVEL, (RETRY, outcomes.API_UNAVAILABLE)),
        (500, Call.SEARCH_USER, (RETRY, outcomes.API_UNAVAILABLE)),
        (502, Call.RESOLVE_POLICY, (RETRY, outcomes.API_UNAVAILABLE)),
        (503, Call.UPDATE_LEVEL, (RETRY, outcomes.API_UNAVAILABLE)),
        (599, Call.UPDATE_LEVEL, (RETRY, outcomes.API_UNAVAILABLE)),
        (302, Call.RESOLVE_POLICY, (RETRY, outcomes.BAD_RESPONSE)),
        (100, Call.SEARCH_USER, (RETRY, outcomes.BAD_RESPONSE)),
    ],
    ids=lambda value: str(value.value if isinstance(value, Call) else value),
)
def test_status_classification(status, call, expected):
    assert classify_status(status, call) == expected


@pytest.mark.parametrize(
    ("header", "expected_s"),
    [
        (None, None),
        ("1", 1.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("99999999", 3600.0),
        ("-5", None),
        ("soon", None),
        ("1.5", None),
    ],
)
def test_retry_after_seconds(header, expected_s):
    assert parse_retry_after(header) == expected_s


def test_retry_after_http_date_gives_seconds_from_now():
    now_s = 1_800_000_000.0
    header = email.utils.formatdate(now_s + 90, usegmt=True)

    assert parse_retry_after(header, now_s=now_s) == pytest.approx(90.0)


def test_retry_after_date_in_past_gives_zero():
    now_s = 1_800_000_000.0
    header = email.utils.formatdate(now_s - 90, usegmt=True)

    assert parse_retry_after(header, now_s=now_s) == 0.0


def test_client_drops_bearer_prefix_and_hides_key_in_repr():
    client = IlertClient("http://127.0.0.1:1/", "Bearer  secret-key ")

    assert client._headers["Authorization"] == "Bearer secret-key"
    assert "secret-key" not in repr(client)
    assert client.base_url == "http://127.0.0.1:1"


def test_client_rejects_empty_key():
    with pytest.raises(ValueError, match="API key is empty"):
        IlertClient("http://127.0.0.1:1", "Bearer ")
