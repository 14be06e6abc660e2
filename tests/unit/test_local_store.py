"""The local_runner SQLite file: buffer order and backoff, dead letters, ordering claims."""

from __future__ import annotations

import sqlite3

import pytest

from local_runner.store import (
    BACKOFF_MAX_S,
    Database,
    SqliteBuffer,
    SqliteDeadLetterSink,
    SqliteOrderingStore,
    make_level_key,
)
from policy_sync.dead_letters import DeadLetter
from policy_sync.ordering import CLAIM_TTL_S, ClaimResult


class FakeClock:
    """A settable millisecond clock."""

    def __init__(self, start_ms: int = 1_000_000):
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms


def level_key_from_prefix(payload: bytes | None) -> str | None:
    """Read the level key from payloads written as b"<level key>|<anything>"; None without a bar."""
    if payload is None or b"|" not in payload:
        return None
    return payload.split(b"|", 1)[0].decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def database(tmp_path) -> Database:
    db = Database(tmp_path / "store.db3")
    yield db
    db.close()


@pytest.fixture
def buffer(database, clock) -> SqliteBuffer:
    return SqliteBuffer(database, level_key_from_prefix, clock_ms=clock)


def test_database_uses_wal_and_full_sync(tmp_path):
    db = Database(tmp_path / "pragmas.db3")
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert db.query("PRAGMA synchronous")[0][0] == 2  # FULL
    db.close()


def test_buffer_returns_items_in_insertion_order(buffer, clock):
    first = buffer.enqueue("mqtt", "t", b"a#1|one", 5_000)
    second = buffer.enqueue("mqtt", "t", b"b#1|two", 1_000)

    item = buffer.next_due(clock())
    assert item.id == first
    assert item.payload == b"a#1|one"
    assert item.received_at_ms == 5_000
    assert item.level_key == "a#1"
    buffer.delete(first)
    assert buffer.next_due(clock()).id == second


def test_buffer_survives_reopen(tmp_path, clock):
    path = tmp_path / "reopen.db3"
    db = Database(path)
    SqliteBuffer(db, level_key_from_prefix, clock_ms=clock).enqueue("mqtt", "t", b"a#1|x", 42)
    db.close()

    reopened = Database(path)
    item = SqliteBuffer(reopened, level_key_from_prefix, clock_ms=clock).next_due(clock())
    assert item.payload == b"a#1|x"
    assert item.received_at_ms == 42
    reopened.close()


def test_waiting_item_blocks_later_items_of_same_level(buffer, clock):
    first = buffer.enqueue("mqtt", "t", b"a#1|old", 1)
    buffer.enqueue("mqtt", "t", b"a#1|new", 2)
    other = buffer.enqueue("mqtt", "t", b"b#1|other", 3)

    buffer.mark_retry(first, "api_unavailable")
    assert buffer.next_due(clock()).id == other
    buffer.delete(other)
    assert buffer.next_due(clock()) is None


def test_same_routing_key_other_level_is_not_blocked(buffer, clock):
    first = buffer.enqueue("mqtt", "t", b"a#1|x", 1)
    second = buffer.enqueue("mqtt", "t", b"a#2|y", 2)
    buffer.mark_retry(first, "api_unavailable")
    assert buffer.next_due(clock()).id == second


def test_unmapped_items_do_not_wait_for_each_other(buffer, clock):
    first = buffer.enqueue("mqtt", "t", b"not json", 1)
    second = buffer.enqueue("mqtt", "t", b"also not json", 2)
    buffer.mark_retry(first, "dead_letter_failed")

    item = buffer.next_due(clock())
    assert item.id == second
    assert item.level_key is None


def test_retried_item_is_due_after_backoff(buffer, clock):
    item_id = buffer.enqueue("mqtt", "t", b"a#1|x", 1)
    assert buffer.mark_retry(item_id, "api_unavailable") == 1
    assert buffer.next_due(clock()) is None
    assert buffer.next_due_at_ms() == clock() + 1_000

    clock.now_ms += 1_000
    item = buffer.next_due(clock())
    assert item.id == item_id
    assert item.attempts == 1
    assert item.last_reason == "api_unavailable"


def test_backoff_doubles_and_caps_at_maximum(buffer, clock):
    item_id = buffer.enqueue("mqtt", "t", b"a#1|x", 1)
    waits_ms = []
    for _ in range(10):
        buffer.mark_retry(item_id, "api_unavailable")
        waits_ms.append(buffer.next_due_at_ms() - clock())
    assert waits_ms[:6] == [1_000, 2_000, 4_000, 8_000, 16_000, 32_000]
    assert waits_ms[6:] == [int(BACKOFF_MAX_S * 1000)] * 4


def test_retry_after_raises_the_wait(buffer, clock):
    item_id = buffer.enqueue("mqtt", "t", b"a#1|x", 1)
    buffer.mark_retry(item_id, "api_unavailable", retry_after_s=30)
    assert buffer.next_due_at_ms() - clock() == 30_000


def test_short_retry_after_keeps_the_backoff(buffer, clock):
    item_id = buffer.enqueue("mqtt", "t", b"a#1|x", 1)
    buffer.mark_retry(item_id, "api_unavailable")
    buffer.mark_retry(item_id, "api_unavailable", retry_after_s=0.5)
    assert buffer.next_due_at_ms() - clock() == 2_000


def test_next_due_at_is_none_for_empty_buffer(buffer):
    assert buffer.next_due_at_ms() is None


def test_move_to_dead_letters_keeps_payload_and_reason(buffer, database, clock):
    item_id = buffer.enqueue("mqtt", "user/logins", b"a#1|x", 77)
    buffer.mark_retry(item_id, "api_unavailable")
    buffer.move_to_dead_letters(item_id, "retries_exhausted", "1 attempt; last reason api_unavailable")

    assert buffer.count() == 0
    [dead_letter] = SqliteDeadLetterSink(database).list()
    assert dead_letter.payload == b"a#1|x"
    assert dead_letter.reason == "retries_exhausted"
    assert dead_letter.detail == "1 attempt; last reason api_unavailable"
    assert dead_letter.received_at_ms == 77
    assert dead_letter.coordinates["topic"] == "user/logins"
    assert dead_letter.coordinates["source"] == "mqtt"
    assert dead_letter.coordinates["attempts"] == 1


def test_requeue_keeps_received_at_and_fills_level_key(buffer, database, clock):
    sink = SqliteDeadLetterSink(database, clock_ms=clock)
    sink.put(DeadLetter(b"a#1|x", "unknown_user", "no such user", 123, {"topic": "t", "source": "mqtt"}))
    [dead_letter] = sink.list()

    # A requeue from the CLI has no settings, so the level key is filled later.
    SqliteBuffer(database).requeue_dead_letter(dead_letter.id)
    assert sink.list() == []
    assert buffer.next_due(clock()) is None
    assert buffer.fill_level_keys() == 1

    item = buffer.next_due(clock())
    assert item.received_at_ms == 123
    assert item.level_key == "a#1"
    assert item.topic == "t"
    assert item.attempts == 0


def test_requeue_of_unknown_id_raises(buffer):
    with pytest.raises(KeyError):
        buffer.requeue_dead_letter(999)


def test_dead_letter_sink_stores_tombstone(database, clock):
    sink = SqliteDeadLetterSink(database, clock_ms=clock)
    sink.put(DeadLetter(None, "not_json", "tombstone", 5, {"topic": "t", "partition": 0, "offset": 9}))
    [dead_letter] = sink.list()
    assert dead_letter.payload is None
    assert dead_letter.coordinates == {"topic": "t", "partition": 0, "offset": 9}
    assert dead_letter.created_at_ms == clock()


def test_enqueue_on_read_only_file_raises(tmp_path, clock):
    path = tmp_path / "ro.db3"
    Database(path).close()
    read_only = Database(path, read_only=True)
    with pytest.raises(sqlite3.OperationalError):
        SqliteBuffer(read_only, level_key_from_prefix, clock_ms=clock).enqueue("mqtt", "t", b"x", 1)
    read_only.close()


def test_refresh_recomputes_level_keys(database, clock):
    SqliteBuffer(database, lambda payload: None, clock_ms=clock).enqueue("mqtt", "t", b"a#1|x", 1)
    rekeyed = SqliteBuffer(database, level_key_from_prefix, clock_ms=clock)
    rekeyed.refresh_level_keys()
    assert rekeyed.next_due(clock()).level_key == "a#1"


def test_claim_on_new_level_is_granted(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    assert store.claim("powerplant", 1, 100, "a") is ClaimResult.GRANTED


def test_older_assignment_is_superseded(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    store.claim("powerplant", 1, 200, "a")
    store.release("powerplant", 1, "a", 200)
    assert store.claim("powerplant", 1, 199, "b") is ClaimResult.SUPERSEDED
    assert store.claim("powerplant", 2, 199, "b") is ClaimResult.GRANTED


def test_same_millisecond_is_granted(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    store.claim("powerplant", 1, 200, "a")
    store.release("powerplant", 1, "a", 200)
    assert store.claim("powerplant", 1, 200, "b") is ClaimResult.GRANTED


def test_live_claim_of_other_owner_is_busy(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    assert store.claim("powerplant", 1, 100, "a") is ClaimResult.GRANTED
    assert store.claim("powerplant", 1, 300, "b") is ClaimResult.BUSY
    assert store.claim("powerplant", 1, 300, "a") is ClaimResult.GRANTED


def test_expired_claim_can_be_taken_over(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    store.claim("powerplant", 1, 100, "a")
    clock.now_ms += CLAIM_TTL_S * 1000
    assert store.claim("powerplant", 1, 300, "b") is ClaimResult.GRANTED


def test_release_frees_the_claim(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    store.claim("powerplant", 1, 100, "a")
    store.release("powerplant", 1, "a", None)
    assert store.claim("powerplant", 1, 50, "b") is ClaimResult.GRANTED
    assert store.last_applied_ms("powerplant", 1) is None


def test_release_by_other_owner_keeps_the_claim(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    store.claim("powerplant", 1, 100, "a")
    store.release("powerplant", 1, "b", None)
    assert store.claim("powerplant", 1, 100, "c") is ClaimResult.BUSY


def test_clear_claims_keeps_last_applied(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    store.claim("powerplant", 1, 500, "a")
    store.release("powerplant", 1, "a", 500)
    store.claim("powerplant", 1, 600, "crashed")
    assert store.clear_claims() == 1
    assert store.claim("powerplant", 1, 600, "b") is ClaimResult.GRANTED
    assert store.last_applied_ms("powerplant", 1) == 500


def test_release_never_lowers_last_applied(database, clock):
    store = SqliteOrderingStore(database, clock_ms=clock)
    store.claim("powerplant", 1, 500, "a")
    store.release("powerplant", 1, "a", 500)
    store.claim("powerplant", 1, 500, "b")
    store.release("powerplant", 1, "b", 400)
    assert store.last_applied_ms("powerplant", 1) == 500


def test_level_key_keeps_hash_in_routing_key():
    assert make_level_key("a#1", 2) == "a#1#2"
    assert make_level_key("a#1", 2) != make_level_key("a", 12)


def test_two_connections_see_each_others_writes(tmp_path, clock):
    path = tmp_path / "shared.db3"
    daemon_db = Database(path)
    cli_db = Database(path)
    SqliteDeadLetterSink(cli_db).put(DeadLetter(b"x", "not_json", "", 1, {}))
    assert len(SqliteDeadLetterSink(daemon_db).list()) == 1
    daemon_db.close()
    cli_db.close()
