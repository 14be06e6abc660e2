"""The ilert client and the sync against the emulator over real HTTP, asserting the journaled requests."""

from __future__ import annotations

import json
import time

import pytest

from local_runner.store import Database, SqliteDeadLetterSink, SqliteOrderingStore
from policy_sync import outcomes
from policy_sync.ilert import DEFAULT_CALL_ATTEMPTS, USER_AGENT, IlertCallFailed, IlertClient
from policy_sync.mapping import Assignment
from policy_sync.outcomes import OutcomeKind
from policy_sync.pipeline import process_payload
from policy_sync.runtime import Runtime
from policy_sync.settings import Settings
from policy_sync.sync import sync_assignment
from policy_sync.user_cache import UserCache

API_KEY = "demo-key"
SEED_PAYLOAD = {"location": "powerplant", "eventType": "active", "data": {"email": "oncall@example.com", "shift": "1"}}


@pytest.fixture
def database(tmp_path):
    db = Database(tmp_path / "sync.db3")
    yield db
    db.close()


def make_runtime(emulator, database, *, api_key=API_KEY, read_timeout_s=5.0, with_ordering=True):
    settings = Settings.from_values(
        policy_topic="user/logins",
        policy_routing_keys="location",
        filter_key="eventType",
        filter_val="active",
        ilert_url=emulator.url,
    )
    client = IlertClient(emulator.url, api_key, connect_timeout_s=2.0, read_timeout_s=read_timeout_s)
    return Runtime(
        settings=settings,
        client=client,
        user_cache=UserCache(),
        dead_letters=SqliteDeadLetterSink(database),
        ordering=SqliteOrderingStore(database) if with_ordering else None,
    )


def api_calls(emulator):
    return [(entry["method"], entry["path"], entry["status"]) for entry in emulator.journal()]


def now_ms():
    return time.time_ns() // 1_000_000


def test_seed_example_ends_as_one_put_keeping_timeout(emulator, database):
    runtime = make_runtime(emulator, database)
    before = emulator.level("powerplant", 1)

    outcome = process_payload(json.dumps(SEED_PAYLOAD).encode(), now_ms(), {"topic": "user/logins"}, runtime)

    assert outcome.kind is OutcomeKind.APPLIED
    assert (outcome.routing_key, outcome.level, outcome.policy_id) == ("powerplant", 1, 10)
    puts = [entry for entry in emulator.journal() if entry["method"] == "PUT"]
    assert len(puts) == 1
    assert puts[0]["path"] == "/api/escalation-policies/10/levels/1"
    assert puts[0]["body"] == {
        "escalationTimeout": before["escalationTimeout"],
        "users": [{"id": 1}],
        "schedules": before["schedules"],
        "teams": before["teams"],
    }
    after = emulator.level("powerplant", 1)
    assert after["escalationTimeout"] == 15
    assert [user["id"] for user in after["users"]] == [1]
    assert after["schedules"] == [{"id": 501}]
    assert after["teams"] == [{"id": 7}]


def test_requests_carry_auth_accept_and_user_agent(emulator, database):
    runtime = make_runtime(emulator, database, api_key=f"Bearer {API_KEY}")

    sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    journal = emulator.journal()
    assert [(entry["method"], entry["path"]) for entry in journal] == [
        ("POST", "/api/users/search-email"),
        ("GET", "/api/escalation-policies/resolve"),
        ("PUT", "/api/escalation-policies/10/levels/1"),
    ]
    assert journal[0]["body"] == {"email": "oncall@example.com"}
    assert journal[1]["query"] == {"routing-key": "powerplant"}
    for entry in journal:
        assert entry["authorization_ok"] is True
        assert entry["headers"]["Accept"] == "application/json"
        assert entry["headers"]["User-Agent"] == USER_AGENT


def test_level_already_right_is_unchanged_without_put(emulator, database):
    runtime = make_runtime(emulator, database)
    assignment = Assignment("shift.lead@example.com", "powerplant", 1)

    outcome = sync_assignment(assignment, runtime, now_ms())

    assert outcome.kind is OutcomeKind.UNCHANGED
    assert [method for method, _, _ in api_calls(emulator)] == ["POST", "GET"]


def test_second_sync_uses_cached_user(emulator, database):
    runtime = make_runtime(emulator, database)

    sync_assignment(Assignment("oncall@example.com", "powerplant", 0), runtime, now_ms())
    emulator.clear_journal()
    outcome = sync_assignment(Assignment("oncall@example.com", "powerplantthree50", 0), runtime, now_ms())

    assert outcome.kind is OutcomeKind.APPLIED
    assert [method for method, _, _ in api_calls(emulator)] == ["GET", "PUT"]


def test_level_beyond_last_is_rejected_naming_policy(emulator, database):
    runtime = make_runtime(emulator, database)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 3), runtime, now_ms())

    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == outcomes.NO_SUCH_LEVEL
    assert "policy 10 has 3 levels" in outcome.detail
    assert all(method != "PUT" for method, _, _ in api_calls(emulator))


def test_unknown_user_is_rejected(emulator, database):
    runtime = make_runtime(emulator, database)

    outcome = sync_assignment(Assignment("nobody@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == outcomes.UNKNOWN_USER
    assert api_calls(emulator) == [("POST", "/api/users/search-email", 404)]


def test_unknown_routing_key_is_rejected(emulator, database):
    runtime = make_runtime(emulator, database)

    outcome = sync_assignment(Assignment("oncall@example.com", "coalplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == outcomes.UNKNOWN_ROUTING_KEY


def test_rejected_message_is_dead_lettered_with_reason(emulator, database):
    runtime = make_runtime(emulator, database)
    payload = json.dumps({**SEED_PAYLOAD, "location": "coalplant"}).encode()

    outcome = process_payload(payload, 1234, {"topic": "user/logins"}, runtime)

    assert outcome.kind is OutcomeKind.REJECTED
    stored = runtime.dead_letters.list()
    assert len(stored) == 1
    assert stored[0].reason == outcomes.UNKNOWN_ROUTING_KEY
    assert stored[0].payload == payload
    assert stored[0].received_at_ms == 1234


def test_429_with_retry_after_is_retry(emulator, database):
    runtime = make_runtime(emulator, database)
    emulator.add_fault(status=429, retry_after=7, count=1)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason == outcomes.API_UNAVAILABLE
    assert outcome.retry_after_s == 7.0
    assert emulator.level("powerplant", 1)["users"][0]["id"] == 2


def test_500_on_every_attempt_is_retry_then_applies(emulator, database):
    runtime = make_runtime(emulator, database)
    emulator.add_fault(status=500, count=DEFAULT_CALL_ATTEMPTS, method="PUT")
    assignment = Assignment("oncall@example.com", "powerplant", 1)

    first = sync_assignment(assignment, runtime, now_ms())
    second = sync_assignment(assignment, runtime, now_ms())

    assert first.kind is OutcomeKind.RETRY
    assert first.reason == outcomes.API_UNAVAILABLE
    assert second.kind is OutcomeKind.APPLIED
    put_statuses = [status for method, _, status in api_calls(emulator) if method == "PUT"]
    assert put_statuses == [500] * DEFAULT_CALL_ATTEMPTS + [200]


def test_single_503_is_repeated_within_sync(emulator, database):
    runtime = make_runtime(emulator, database)
    emulator.add_fault(status=503, count=1)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.APPLIED
    assert api_calls(emulator)[:2] == [
        ("POST", "/api/users/search-email", 503),
        ("POST", "/api/users/search-email", 200),
    ]


def test_short_retry_after_is_waited_within_sync(emulator, database):
    runtime = make_runtime(emulator, database)
    emulator.add_fault(status=429, retry_after=1, count=1)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.APPLIED
    assert [status for _, _, status in api_calls(emulator)] == [429, 200, 200, 200]


def test_not_found_is_not_repeated(emulator, database):
    runtime = make_runtime(emulator, database)

    sync_assignment(Assignment("nobody@example.com", "powerplant", 1), runtime, now_ms())

    assert len(api_calls(emulator)) == 1


def test_dropped_connection_is_retry(emulator, database):
    runtime = make_runtime(emulator, database)
    emulator.add_fault(drop_connection=True, count=DEFAULT_CALL_ATTEMPTS)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason == outcomes.CONNECTION_FAILED


def test_read_timeout_is_retry(emulator, database):
    runtime = make_runtime(emulator, database, read_timeout_s=0.3)
    emulator.add_fault(latency_ms=1500, count=1)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason == outcomes.TIMED_OUT


def test_non_json_success_body_is_retry(emulator, database):
    runtime = make_runtime(emulator, database)
    emulator.add_fault(status=200, body="<html>maintenance</html>", count=1)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason == outcomes.BAD_RESPONSE


def test_wrong_key_is_retry_naming_key_without_leaking_it(emulator, database):
    runtime = make_runtime(emulator, database, api_key="wrong-secret-key")

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason == outcomes.AUTH_FAILED
    assert "API key" in outcome.detail
    assert "wrong-secret-key" not in outcome.detail


def test_client_error_text_never_contains_key(emulator):
    client = IlertClient(emulator.url, "very-secret-key")

    with pytest.raises(IlertCallFailed) as caught:
        client.find_user_id("oncall@example.com")

    assert caught.value.status == 401
    assert "very-secret-key" not in str(caught.value)


def test_older_assignment_after_newer_is_superseded(emulator, database):
    runtime = make_runtime(emulator, database)
    newer = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, received_at_ms=2_000)
    emulator.clear_journal()

    older = sync_assignment(Assignment("plant.manager@example.com", "powerplant", 1), runtime, received_at_ms=1_000)

    assert newer.kind is OutcomeKind.APPLIED
    assert older.kind is OutcomeKind.SUPERSEDED
    assert api_calls(emulator) == []
    assert emulator.level("powerplant", 1)["users"][0]["id"] == 1


def test_claim_held_elsewhere_is_retry(emulator, database):
    runtime = make_runtime(emulator, database)
    runtime.ordering.claim("powerplant", 1, 5_000, "another-invocation")

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, received_at_ms=6_000)

    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason == outcomes.CLAIM_BUSY
    assert api_calls(emulator) == []


def test_filtered_message_makes_no_call(emulator, database):
    runtime = make_runtime(emulator, database)
    payload = json.dumps({**SEED_PAYLOAD, "eventType": "inactive"}).encode()

    outcome = process_payload(payload, now_ms(), {}, runtime)

    assert outcome.kind is OutcomeKind.FILTERED
    assert api_calls(emulator) == []
    assert runtime.dead_letters.list() == []


def test_deleted_cached_user_is_looked_up_again(emulator, database):
    runtime = make_runtime(emulator, database)
    runtime.user_cache.put("oncall@example.com", 999)

    outcome = sync_assignment(Assignment("oncall@example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.kind is OutcomeKind.APPLIED
    assert [status for method, _, status in api_calls(emulator) if method == "PUT"] == [400, 200]
    assert runtime.user_cache.get("oncall@example.com") == 1


def test_unknown_user_detail_never_contains_email(emulator, database):
    runtime = make_runtime(emulator, database)

    outcome = sync_assignment(Assignment("Nobody.Here@Example.com", "powerplant", 1), runtime, now_ms())

    assert outcome.reason == outcomes.UNKNOWN_USER
    assert "nobody.here@example.com" not in outcome.detail.lower()
