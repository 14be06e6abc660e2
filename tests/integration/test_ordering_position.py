"""Both ordering stores break receive-time ties with the sequence (Kafka offset or buffer row id).

Records produced in one burst often share a millisecond. Without the
sequence, a redelivered older record with the same timestamp as the last
applied one would be granted, and it would overwrite the newer assignment.
"""

from __future__ import annotations

import uuid

import pytest

from local_runner.store import Database, SqliteOrderingStore
from policy_sync.aws import DynamoDbOrderingStore
from policy_sync.ordering import ClaimResult
from tests import moto_server
from tests.moto_server import client

RECEIVED_MS = 1_800_000_000_000


@pytest.fixture(scope="module")
def endpoint_url():
    with moto_server.moto_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        database = Database(tmp_path / "ordering.db3")
        yield SqliteOrderingStore(database)
        database.close()
        return
    endpoint_url = request.getfixturevalue("endpoint_url")
    table = moto_server.create_ordering_table(endpoint_url, f"ordering-{uuid.uuid4().hex[:8]}")
    yield DynamoDbOrderingStore(table, client("dynamodb", endpoint_url))


def apply(store, received_at_ms, sequence):
    owner = uuid.uuid4().hex
    assert store.claim("powerplant", 1, received_at_ms, owner, sequence) is ClaimResult.GRANTED
    store.release("powerplant", 1, owner, received_at_ms, sequence)


def test_same_ms_lower_sequence_is_superseded(store):
    apply(store, RECEIVED_MS, sequence=42)

    assert store.claim("powerplant", 1, RECEIVED_MS, "redelivery", 41) is ClaimResult.SUPERSEDED


def test_same_ms_same_sequence_is_granted(store):
    apply(store, RECEIVED_MS, sequence=42)

    assert store.claim("powerplant", 1, RECEIVED_MS, "duplicate", 42) is ClaimResult.GRANTED


def test_same_ms_higher_sequence_is_granted(store):
    apply(store, RECEIVED_MS, sequence=42)

    assert store.claim("powerplant", 1, RECEIVED_MS, "next", 43) is ClaimResult.GRANTED


def test_later_ms_wins_over_higher_sequence(store):
    apply(store, RECEIVED_MS, sequence=42)

    assert store.claim("powerplant", 1, RECEIVED_MS + 1, "later", 0) is ClaimResult.GRANTED


def test_release_never_lowers_position(store):
    apply(store, RECEIVED_MS, sequence=42)
    owner = uuid.uuid4().hex
    store.claim("powerplant", 1, RECEIVED_MS + 5, owner, 0)
    store.release("powerplant", 1, owner, RECEIVED_MS, 7)

    assert store.claim("powerplant", 1, RECEIVED_MS, "older", 41) is ClaimResult.SUPERSEDED


def test_sqlite_file_without_sequence_column_is_upgraded(tmp_path):
    import sqlite3

    path = tmp_path / "old.db3"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE ordering (level_key TEXT PRIMARY KEY, last_applied_ms INTEGER, "
            "claim_owner TEXT, claim_expires_ms INTEGER)"
        )
        connection.execute("INSERT INTO ordering (level_key, last_applied_ms) VALUES ('powerplant#1', 5)")

    database = Database(path)
    try:
        store = SqliteOrderingStore(database)
        assert store.claim("powerplant", 1, 4, "older", 99) is ClaimResult.SUPERSEDED
        assert store.claim("powerplant", 1, 5, "same", 0) is ClaimResult.GRANTED
    finally:
        database.close()
