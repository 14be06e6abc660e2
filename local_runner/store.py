"""The SQLite file of local_runner: retry buffer, dead letters and the ordering table.

One file (`-f`, default `./ilagent.db3`) stores everything the daemon must not
forget across a restart. It runs in WAL mode with `synchronous=FULL`, so a
write that returned is on disk. One connection is shared by the daemon's
threads behind a lock. Other processes (the `dead-letters` subcommand) open
their own connection and SQLite's file locks keep them apart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from policy_sync.backoff import BACKOFF_MAX_S, backoff_delay_s
from policy_sync.dead_letters import DeadLetter
from policy_sync.ordering import CLAIM_TTL_S, ClaimResult

__all__ = ["BACKOFF_MAX_S", "Database", "SqliteBuffer", "SqliteDeadLetterSink", "SqliteOrderingStore"]

# How long a writer waits for another process's lock before SQLite gives up.
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS buffer (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    topic TEXT,
    payload BLOB,
    received_at_ms INTEGER NOT NULL,
    level_key TEXT,
    level_key_known INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_reason TEXT
);
CREATE INDEX IF NOT EXISTS buffer_level_key ON buffer (level_key, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    received_at_ms INTEGER NOT NULL,
    coordinates TEXT NOT NULL DEFAULT '{}',
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ordering (
    level_key TEXT PRIMARY KEY,
    last_applied_ms INTEGER,
    last_applied_seq INTEGER NOT NULL DEFAULT 0,
    claim_owner TEXT,
    claim_expires_ms INTEGER
);
"""


def now_ms() -> int:
    """Return the wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def make_level_key(routing_key: str, level: int) -> str:
    """Return the text key for one routing key and level, e.g. `powerplant#1`.

    The level is digits only, so splitting at the last `#` recovers both parts
    even when the routing key contains a `#`.
    """
    return f"{routing_key}#{level}"


class Database:
    """One SQLite connection to the local_runner file, shared by threads behind a lock."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        """Open (and create, unless `read_only`) the file and its tables.

        A read-only connection is for inspection, e.g. `dead-letters list`;
        every write on it raises `sqlite3.OperationalError`.
        """
        self.path = str(path)
        self._lock = threading.RLock()
        if read_only:
            target, uri = f"file:{Path(path).resolve()}?mode=ro", True
        else:
            target, uri = self.path, False
        self._connection = sqlite3.connect(
            target, uri=uri, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if read_only:
            return
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = FULL")
        with self.transaction() as connection:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            # Files written before the ordering table had a sequence column.
            columns = {row[1] for row in connection.execute("PRAGMA table_info(ordering)")}
            if "last_applied_seq" not in columns:
                connection.execute("ALTER TABLE ordering ADD COLUMN last_applied_seq INTEGER NOT NULL DEFAULT 0")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction that commits on exit or rolls back on error."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def query(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        """Run a read-only statement and return all rows."""
        with self._lock:
            cursor = self._connection.execute(sql, parameters)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def close(self) -> None:
        """Close the connection; later calls fail."""
        with self._lock:
            self._connection.close()


class SqliteOrderingStore:
    """The ordering table: per routing key and level, the last applied receive time and a claim.

    Same contract as `policy_sync.ordering.OrderingStore`: an assignment older
    than the last applied one is superseded, a live claim of another owner
    makes the caller busy, an equal position is granted, and a release never
    lowers the last applied position (receive time, then sequence).
    """

    def __init__(self, database: Database, clock_ms: Callable[[], int] = now_ms):
        self._database = database
        self._clock_ms = clock_ms

    def claim(self, routing_key: str, level: int, received_at_ms: int, owner: str, sequence: int = 0) -> ClaimResult:
        """Claim the level for `owner` unless a later position was applied or another owner has a live claim."""
        key = make_level_key(routing_key, level)
        now = self._clock_ms()
        with self._database.transaction() as connection:
            row = connection.execute(
                "SELECT last_applied_ms, last_applied_seq, claim_owner, claim_expires_ms FROM ordering WHERE level_key = ?",
                (key,),
            ).fetchone()
            if row is not None:
                last_applied_ms, last_applied_seq, claim_owner, claim_expires_ms = row
                if last_applied_ms is not None and (received_at_ms, sequence) < (last_applied_ms, last_applied_seq):
                    return ClaimResult.SUPERSEDED
                claim_is_live = claim_expires_ms is not None and claim_expires_ms > now
                if claim_owner is not None and claim_owner != owner and claim_is_live:
                    return ClaimResult.BUSY
            connection.execute(
                "INSERT INTO ordering (level_key, claim_owner, claim_expires_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (level_key) DO UPDATE SET claim_owner = excluded.claim_owner, "
                "claim_expires_ms = excluded.claim_expires_ms",
                (key, owner, now + CLAIM_TTL_S * 1000),
            )
        return ClaimResult.GRANTED

    def release(
        self,
        routing_key: str,
        level: int,
        owner: str,
        applied_received_at_ms: int | None,
        applied_sequence: int = 0,
    ) -> None:
        """Drop `owner`'s claim; record the applied position when it is later than the recorded one."""
        key = make_level_key(routing_key, level)
        with self._database.transaction() as connection:
            connection.execute(
                "UPDATE ordering SET claim_owner = NULL, claim_expires_ms = NULL "
                "WHERE level_key = ? AND claim_owner = ?",
                (key, owner),
            )
            if applied_received_at_ms is None:
                return
            connection.execute("INSERT OR IGNORE INTO ordering (level_key) VALUES (?)", (key,))
            connection.execute(
                "UPDATE ordering SET last_applied_ms = ?, last_applied_seq = ? WHERE level_key = ? "
                "AND (last_applied_ms IS NULL OR last_applied_ms < ? OR (last_applied_ms = ? AND last_applied_seq <= ?))",
                (
                    applied_received_at_ms,
                    applied_sequence,
                    key,
                    applied_received_at_ms,
                    applied_received_at_ms,
                    applied_sequence,
                ),
            )

    def clear_claims(self) -> int:
        """Drop every claim and return how many there were; last applied times stay.

        For daemon startup only: claims left by a process that was killed
        would otherwise block their levels for CLAIM_TTL_S. Safe because the
        daemon holds the file's lock, so no other process can own a claim.
        """
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "UPDATE ordering SET claim_owner = NULL, claim_expires_ms = NULL WHERE claim_owner IS NOT NULL"
            )
            return cursor.rowcount

    def last_applied_ms(self, routing_key: str, level: int) -> int | None:
        """Return the receive time of the last applied assignment for the level, or None."""
        rows = self._database.query(
            "SELECT last_applied_ms FROM ordering WHERE level_key = ?", (make_level_key(routing_key, level),)
        )
        return rows[0]["last_applied_ms"] if rows else None


@dataclass(frozen=True)
class StoredDeadLetter:
    """One row of the dead-letter table."""

    id: int
    payload: bytes | None
    reason: str
    detail: str
    received_at_ms: int
    coordinates: dict
    created_at_ms: int


def insert_dead_letter(connection: sqlite3.Connection, dead_letter: DeadLetter, created_at_ms: int) -> int:
    """Insert a dead letter inside the caller's transaction and return its id."""
    cursor = connection.execute(
        "INSERT INTO dead_letters (payload, reason, detail, received_at_ms, coordinates, created_at_ms) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            dead_letter.payload,
            dead_letter.reason,
            dead_letter.detail,
            dead_letter.received_at_ms,
            json.dumps(dead_letter.coordinates, sort_keys=True),
            created_at_ms,
        ),
    )
    return cursor.lastrowid


class SqliteDeadLetterSink:
    """The dead-letter table; implements `policy_sync.dead_letters.DeadLetterSink`."""

    def __init__(self, database: Database, clock_ms: Callable[[], int] = now_ms):
        self._database = database
        self._clock_ms = clock_ms

    def put(self, dead_letter: DeadLetter) -> None:
        """Store the dead letter; raises `sqlite3.Error` when it could not be written."""
        with self._database.transaction() as connection:
            insert_dead_letter(connection, dead_letter, self._clock_ms())

    def list(self) -> list[StoredDeadLetter]:
        """Return every dead letter, oldest first."""
        rows = self._database.query("SELECT * FROM dead_letters ORDER BY id")
        return [
            StoredDeadLetter(
                id=row["id"],
                payload=row["payload"],
                reason=row["reason"],
                detail=row["detail"],
                received_at_ms=row["received_at_ms"],
                coordinates=json.loads(row["coordinates"]),
                created_at_ms=row["created_at_ms"],
            )
            for row in rows
        ]


@dataclass(frozen=True)
class BufferItem:
    """One buffered message waiting for (another) attempt."""

    id: int
    source: str
    topic: str | None
    payload: bytes | None
    received_at_ms: int
    level_key: str | None
    attempts: int
    next_attempt_ms: int
    last_reason: str | None


class SqliteBuffer:
    """The retry buffer: messages in insertion order, each with its attempt count and next due time.

    Ordering: `next_due` hands out the oldest due item whose routing key and
    level (its level key) has no older item waiting, so a later assignment for
    a level never overtakes an earlier one that waits for a retry. Items that
    do not map to an assignment have no level key and never wait behind others.

    `level_key_of(payload)` computes the level key at insert. Rows inserted
    without it (dead letters requeued by a process that has no settings) are
    skipped by `next_due` until `fill_level_keys` computes their key; the
    drain calls it before each `next_due`.
    """

    def __init__(
        self,
        database: Database,
        level_key_of: Callable[[bytes | None], str | None] | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ):
        self._database = database
        self._level_key_of = level_key_of
        self._clock_ms = clock_ms

    def enqueue(self, source: str, topic: str | None, payload: bytes | None, received_at_ms: int) -> int:
        """Insert a message and commit before returning its id; raises `sqlite3.Error` on failure."""
        known = self._level_key_of is not None
        level_key = self._level_key_of(payload) if known else None
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "INSERT INTO buffer (source, topic, payload, received_at_ms, level_key, level_key_known) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (source, topic, payload, received_at_ms, level_key, int(known)),
            )
            return cursor.lastrowid

    def fill_level_keys(self) -> int:
        """Compute the level key of every row inserted without one; return how many were filled."""
        if self._level_key_of is None:
            return 0
        rows = self._database.query("SELECT id, payload FROM buffer WHERE level_key_known = 0 ORDER BY id")
        if not rows:
            return 0
        with self._database.transaction() as connection:
            for row in rows:
                connection.execute(
                    "UPDATE buffer SET level_key = ?, level_key_known = 1 WHERE id = ?",
                    (self._level_key_of(row["payload"]), row["id"]),
                )
        return len(rows)

    def refresh_level_keys(self) -> None:
        """Recompute every row's level key, e.g. at startup after the routing-key settings changed."""
        with self._database.transaction() as connection:
            connection.execute("UPDATE buffer SET level_key_known = 0")
        self.fill_level_keys()

    def next_due(self, now_ms: int | None = None) -> BufferItem | None:
        """Return the oldest due item that is first in line for its level key, or None."""
        now = self._clock_ms() if now_ms is None else now_ms
        rows = self._database.query(
            "SELECT * FROM buffer AS item WHERE next_attempt_ms <= ? AND level_key_known = 1 "
            "AND (level_key IS NULL OR NOT EXISTS ("
            "  SELECT 1 FROM buffer AS earlier WHERE earlier.level_key = item.level_key AND earlier.id < item.id"
            ")) ORDER BY id LIMIT 1",
            (now,),
        )
        return self._item(rows[0]) if rows else None

    def next_due_items(self, limit: int, exclude_ids: set[int], now_ms: int | None = None) -> list[BufferItem]:
        """Return up to `limit` due items, oldest first, each first in line for its level key.

        Items in `exclude_ids` are in flight. They stay in the table until
        done, so they keep holding back later items for their level key.
        """
        now = self._clock_ms() if now_ms is None else now_ms
        rows = self._database.query(
            "SELECT * FROM buffer AS item WHERE next_attempt_ms <= ? AND level_key_known = 1 "
            "AND (level_key IS NULL OR NOT EXISTS ("
            "  SELECT 1 FROM buffer AS earlier WHERE earlier.level_key = item.level_key AND earlier.id < item.id"
            ")) ORDER BY id LIMIT ?",
            (now, limit + len(exclude_ids)),
        )
        items = [self._item(row) for row in rows if row["id"] not in exclude_ids]
        return items[:limit]

    def next_due_at_ms(self) -> int | None:
        """Return when the earliest item that is first in line becomes due, or None for an empty buffer."""
        rows = self._database.query(
            "SELECT min(next_attempt_ms) AS due FROM buffer AS item WHERE level_key_known = 1 "
            "AND (level_key IS NULL OR NOT EXISTS ("
            "  SELECT 1 FROM buffer AS earlier WHERE earlier.level_key = item.level_key AND earlier.id < item.id"
            "))"
        )
        return rows[0]["due"]

    def mark_retry(self, item_id: int, reason: str | None, retry_after_s: float | None = None) -> int:
        """Count a failed attempt, schedule the next one and return the attempt count.

        The wait is `policy_sync.backoff.backoff_delay_s`: 1 s after the first
        failure, doubling per attempt up to BACKOFF_MAX_S, or longer when the
        API sent a longer Retry-After.
        """
        with self._database.transaction() as connection:
            row = connection.execute("SELECT attempts FROM buffer WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise KeyError(f"buffer item {item_id} not found")
            attempts = row[0] + 1
            next_attempt_ms = self._clock_ms() + int(backoff_delay_s(attempts, retry_after_s) * 1000)
            connection.execute(
                "UPDATE buffer SET attempts = ?, next_attempt_ms = ?, last_reason = ? WHERE id = ?",
                (attempts, next_attempt_ms, reason, item_id),
            )
        return attempts

    def delete(self, item_id: int) -> None:
        """Remove an item that is done with."""
        with self._database.transaction() as connection:
            connection.execute("DELETE FROM buffer WHERE id = ?", (item_id,))

    def move_to_dead_letters(self, item_id: int, reason: str, detail: str) -> int:
        """Move an item to the dead-letter table in one transaction and return the dead letter's id."""
        with self._database.transaction() as connection:
            row = connection.execute(
                "SELECT source, topic, payload, received_at_ms, attempts FROM buffer WHERE id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"buffer item {item_id} not found")
            source, topic, payload, received_at_ms, attempts = row
            coordinates = {"source": source, "topic": topic, "buffer_id": item_id, "attempts": attempts}
            dead_letter = DeadLetter(payload, reason, detail, received_at_ms, coordinates)
            dead_letter_id = insert_dead_letter(connection, dead_letter, self._clock_ms())
            connection.execute("DELETE FROM buffer WHERE id = ?", (item_id,))
        return dead_letter_id

    def requeue_dead_letter(self, dead_letter_id: int) -> int:
        """Move a dead letter back into the buffer with its original receive time; return the new item id.

        The item gets a new id, so it queues behind what is already buffered.
        Raises KeyError when no dead letter has that id.
        """
        with self._database.transaction() as connection:
            row = connection.execute(
                "SELECT payload, received_at_ms, coordinates FROM dead_letters WHERE id = ?", (dead_letter_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"dead letter {dead_letter_id} not found")
            payload, received_at_ms, coordinates_json = row
            coordinates = json.loads(coordinates_json)
            cursor = connection.execute(
                "INSERT INTO buffer (source, topic, payload, received_at_ms, level_key, level_key_known) "
                "VALUES (?, ?, ?, ?, NULL, 0)",
                (coordinates.get("source") or "mqtt", coordinates.get("topic"), payload, received_at_ms),
            )
            connection.execute("DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,))
            return cursor.lastrowid

    def items(self) -> list[BufferItem]:
        """Return every buffered item in insertion order."""
        return [self._item(row) for row in self._database.query("SELECT * FROM buffer ORDER BY id")]

    def count(self) -> int:
        """Return how many items are buffered."""
        return self._database.query("SELECT count(*) AS n FROM buffer")[0]["n"]

    @staticmethod
    def _item(row: sqlite3.Row) -> BufferItem:
        return BufferItem(
            id=row["id"],
            source=row["source"],
            topic=row["topic"],
            payload=row["payload"],
            received_at_ms=row["received_at_ms"],
            level_key=row["level_key"],
            attempts=row["attempts"],
            next_attempt_ms=row["next_attempt_ms"],
            last_reason=row["last_reason"],
        )
