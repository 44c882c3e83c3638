"""Storage adapters: eventsourcing recorders (SQLite, PostgreSQL) extended with the ledger's side tables.

The side tables are written in the SAME transaction as the events (and, on PostgreSQL, under the
library's EXCLUSIVE lock on the events table, so commit order = position order):
  ledger_log(position, notification_id, request_id, time_us, event_type)   dense positions, idempotency
  merkle_nodes(level, idx, hash)    complete perfect subtrees of the RFC 9162 log (level 0 = leaves)
  projections(name, position, state)  the saved read model, its position in the same row (atomic)
  checkpoints(position, state)        saved folds for point-in-time queries
  tree_heads(tree_size, ...)          signed tree heads
The recorders also implement ledger.application.LogStore.
"""

import contextlib
import dataclasses
import zlib
from typing import Any, Iterator, Sequence

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder

from ledger import merkle
from ledger.anchors import ANCHOR_BYTES_FIELDS, ANCHOR_FIELDS, ANCHOR_MUTABLE_FIELDS, Anchor
from ledger.tree_heads import TreeHead
from ledger.application import LogRow
from ledger.events import canonical_bytes, canonical_event

SIDE_TABLES = """
CREATE TABLE IF NOT EXISTS {s}ledger_log (
  position BIGINT PRIMARY KEY, notification_id BIGINT NOT NULL UNIQUE, request_id TEXT NOT NULL UNIQUE,
  time_us BIGINT NOT NULL, event_type TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {i}ledger_log_time_us ON {s}ledger_log (time_us);
CREATE TABLE IF NOT EXISTS {s}merkle_nodes (
  level INTEGER NOT NULL, idx BIGINT NOT NULL, hash {blob} NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE IF NOT EXISTS {s}projections (name TEXT PRIMARY KEY, position BIGINT NOT NULL, state {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS {s}checkpoints (position BIGINT PRIMARY KEY, state {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS {s}tree_heads (
  tree_size BIGINT PRIMARY KEY, root_hash {blob} NOT NULL, timestamp_us BIGINT NOT NULL,
  signature {blob} NOT NULL, key_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {s}anchors (
  anchor_id BIGINT PRIMARY KEY, tree_size BIGINT NOT NULL, root_hash {blob} NOT NULL, txid TEXT NOT NULL UNIQUE,
  raw_tx {blob} NOT NULL, vsize BIGINT NOT NULL, fee_sats BIGINT NOT NULL, prev_txid TEXT NOT NULL,
  prev_vout BIGINT NOT NULL, prev_value_sats BIGINT NOT NULL, change_vout BIGINT NOT NULL,
  change_value_sats BIGINT NOT NULL, state TEXT NOT NULL, replaces BIGINT, broadcast_height BIGINT,
  block_hash TEXT, block_height BIGINT, confirmations BIGINT NOT NULL, created_us BIGINT NOT NULL,
  updated_us BIGINT NOT NULL, block_header {blob}, txout_proof {blob})
"""
# One column per field of ledger.anchors.Anchor (the CREATE TABLE above must name the same columns).
ANCHOR_COLUMNS = ANCHOR_FIELDS


def _tree_head(row) -> TreeHead:
    return TreeHead(row["tree_size"], bytes(row["root_hash"]), row["timestamp_us"], bytes(row["signature"]),
                    row["key_id"])


def _limit_clause(limit: int | None) -> str:
    assert limit is None or (isinstance(limit, int) and limit > 0), limit
    return "" if limit is None else f" LIMIT {limit}"


class _LedgerTables:
    """Dialect-neutral SQL for the side tables; subclasses say how to run a statement."""

    schema_prefix = ""
    index_prefix = ""
    blob_type = "BLOB"
    events_id_column = "rowid"

    def _sql(self, statement: str) -> str:
        return statement.replace("{s}", self.schema_prefix).replace("{e}", self._events_table())

    def _events_table(self) -> str:
        raise NotImplementedError

    def side_table_statements(self) -> list[str]:
        text = SIDE_TABLES.replace("{s}", self.schema_prefix).replace("{i}", self.index_prefix)
        return [s.strip() for s in text.replace("{blob}", self.blob_type).split(";") if s.strip()]

    # --- write path: called inside the events' insert transaction ---------------------------------------

    def _append_log(self, cursor, stored_events: Sequence[StoredEvent], notification_ids: Sequence[int]) -> None:
        self._execute(cursor, "SELECT COALESCE(MAX(position) + 1, 0) AS size FROM {s}ledger_log")
        tree_size = self._fetchone(cursor)["size"]
        needed = merkle.frontier_keys(tree_size)
        frontier = self._nodes(cursor, needed)
        log_rows, node_rows = [], []
        for stored, notification_id in zip(stored_events, notification_ids, strict=True):
            event = canonical_event(stored.originator_version, stored.topic, stored.state)
            if event["position"] != tree_size:
                raise IntegrityError(f"event version {stored.originator_version} does not extend a log of {tree_size}")
            log_rows.append((tree_size, notification_id, event["request_id"], event["time_us"], event["type"]))
            new_nodes = merkle.append_nodes(tree_size, merkle.leaf_hash(canonical_bytes(event)), frontier)
            node_rows.extend((level, idx, digest) for (level, idx), digest in new_nodes)
            frontier.update(dict(new_nodes))
            tree_size += 1
        self._executemany(cursor, "INSERT INTO {s}ledger_log (position, notification_id, request_id, time_us, "
                                  "event_type) VALUES (?, ?, ?, ?, ?)", log_rows)
        self._executemany(cursor, "INSERT INTO {s}merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", node_rows)

    def _nodes(self, cursor, keys) -> dict:
        found = {}
        for level, idx in keys:
            self._execute(cursor, "SELECT hash FROM {s}merkle_nodes WHERE level = ? AND idx = ?", (level, idx))
            row = self._fetchone(cursor)
            if row is None:
                raise IntegrityError(f"merkle node ({level}, {idx}) is missing")
            found[(level, idx)] = bytes(row["hash"])
        return found

    # --- LogStore -------------------------------------------------------------------------------------

    def log_size(self) -> int:
        return self._read_one("SELECT COALESCE(MAX(position) + 1, 0) AS size FROM {s}ledger_log")["size"]

    def read_log(self, start_position: int, limit: int) -> list[LogRow]:
        rows = self._read_all(
            "SELECT l.position AS position, e.topic AS topic, e.state AS state FROM {s}ledger_log l "
            "JOIN {e} e ON e." + self.events_id_column + " = l.notification_id "
            "WHERE l.position >= ? ORDER BY l.position LIMIT ?", (start_position, limit))
        return [LogRow(r["position"], r["topic"], bytes(r["state"])) for r in rows]

    def find_requests(self, request_ids: Sequence[str]) -> dict[str, int]:
        if not request_ids:
            return {}
        marks = ", ".join("?" for _ in request_ids)
        rows = self._read_all(f"SELECT request_id, position FROM {{s}}ledger_log WHERE request_id IN ({marks})",
                              tuple(request_ids))
        return {r["request_id"]: r["position"] for r in rows}

    def position_at_time(self, time_us: int) -> int:
        row = self._read_one("SELECT MAX(position) AS p FROM {s}ledger_log WHERE time_us <= ?", (time_us,))
        return -1 if row["p"] is None else row["p"]

    def load_projection(self, name: str) -> tuple[int, bytes] | None:
        row = self._read_one("SELECT position, state FROM {s}projections WHERE name = ?", (name,))
        return None if row is None else (row["position"], bytes(row["state"]))

    def save_projection(self, name: str, position: int, state: bytes) -> None:
        self._write("INSERT INTO {s}projections (name, position, state) VALUES (?, ?, ?) ON CONFLICT (name) "
                    "DO UPDATE SET position = excluded.position, state = excluded.state "
                    "WHERE excluded.position >= {s}projections.position", (name, position, state))

    def load_checkpoint(self, position_max: int) -> tuple[int, bytes] | None:
        row = self._read_one("SELECT position, state FROM {s}checkpoints WHERE position <= ? "
                             "ORDER BY position DESC LIMIT 1", (position_max,))
        return None if row is None else (row["position"], bytes(row["state"]))

    def save_checkpoint(self, position: int, state: bytes) -> None:
        self._write("INSERT INTO {s}checkpoints (position, state) VALUES (?, ?) ON CONFLICT (position) DO NOTHING",
                    (position, state))

    def checkpoint_positions(self) -> list[int]:
        return [r["position"] for r in self._read_all("SELECT position FROM {s}checkpoints ORDER BY position")]

    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """merkle.NodeReader: every requested complete subtree, in one query."""
        if not keys:
            return {}
        clause = " OR ".join("(level = ? AND idx = ?)" for _ in keys)
        params = tuple(v for key in keys for v in key)
        rows = self._read_all(f"SELECT level, idx, hash FROM {{s}}merkle_nodes WHERE {clause}", params)
        return {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}

    # --- signed tree heads ---------------------------------------------------------------------------

    def save_tree_head(self, head: TreeHead) -> None:
        """First head signed for a size wins (replicas may race); heads are never changed."""
        self._write("INSERT INTO {s}tree_heads (tree_size, root_hash, timestamp_us, signature, key_id) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tree_size) DO NOTHING",
                    (head.tree_size, head.root_hash, head.timestamp_us, head.signature, head.key_id))

    def load_tree_head(self, tree_size: int | None = None) -> TreeHead | None:
        """The head of that size, or the largest one when tree_size is None."""
        where = "" if tree_size is None else "WHERE tree_size = ? "
        row = self._read_one("SELECT tree_size, root_hash, timestamp_us, signature, key_id FROM {s}tree_heads "
                             + where + "ORDER BY tree_size DESC LIMIT 1", () if tree_size is None else (tree_size,))
        return None if row is None else _tree_head(row)

    def list_tree_heads(self, tree_size_min: int = 0, tree_size_max: int | None = None,
                        limit: int | None = None) -> list[TreeHead]:
        """Heads in order of size, from tree_size_min, at most tree_size_max; `limit` rows (None: all)."""
        where, params = "tree_size >= ?", (tree_size_min,)
        if tree_size_max is not None:
            where, params = where + " AND tree_size <= ?", (tree_size_min, tree_size_max)
        rows = self._read_all("SELECT tree_size, root_hash, timestamp_us, signature, key_id FROM {s}tree_heads "
                              f"WHERE {where} ORDER BY tree_size" + _limit_clause(limit), params)
        return [_tree_head(row) for row in rows]

    # --- Bitcoin anchors (written only by the one process holding the anchor turn) -------------------

    def insert_anchor(self, anchor: Anchor) -> int:
        """Record a signed anchor transaction before it is broadcast; returns its anchor_id (1, 2, ...)."""
        row = self._read_one("SELECT COALESCE(MAX(anchor_id), 0) + 1 AS next_id FROM {s}anchors")
        anchor = dataclasses.replace(anchor, anchor_id=row["next_id"])
        marks = ", ".join("?" for _ in ANCHOR_COLUMNS)
        self._write(f"INSERT INTO {{s}}anchors ({', '.join(ANCHOR_COLUMNS)}) VALUES ({marks})",
                    tuple(getattr(anchor, c) for c in ANCHOR_COLUMNS))
        return anchor.anchor_id

    def update_anchor(self, anchor_id: int, **changes) -> None:
        assert changes and set(changes) <= set(ANCHOR_MUTABLE_FIELDS), changes
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self._write(f"UPDATE {{s}}anchors SET {assignments} WHERE anchor_id = ?", (*changes.values(), anchor_id))

    def list_anchors(self, anchor_id_min: int = 0, tree_size_max: int | None = None,
                     limit: int | None = None) -> list[Anchor]:
        """Anchors in order of anchor_id, from anchor_id_min, committing to at most tree_size_max events."""
        where, params = "anchor_id >= ?", (anchor_id_min,)
        if tree_size_max is not None:
            where, params = where + " AND tree_size <= ?", (anchor_id_min, tree_size_max)
        rows = self._read_all(f"SELECT {', '.join(ANCHOR_COLUMNS)} FROM {{s}}anchors WHERE {where} ORDER BY anchor_id"
                              + _limit_clause(limit), params)
        return [Anchor(**{c: (bytes(r[c]) if c in ANCHOR_BYTES_FIELDS and r[c] is not None else r[c])
                          for c in ANCHOR_COLUMNS}) for r in rows]

    @contextlib.contextmanager
    def anchor_turn(self) -> Iterator[bool]:
        """True when this process may anchor now (SQLite: one process owns the data dir)."""
        yield True

    # --- raw reads for `reserve-ledger verify` (no trust in any derived table) --------------------------

    def scan_log_rows(self, start_position: int, limit: int) -> list[dict]:
        """ledger_log rows from a position, each with its event row's columns (None when that row is gone)."""
        rows = self._read_all(
            "SELECT l.position AS position, l.request_id AS request_id, l.event_type AS event_type, "
            "e.originator_version AS version, e.topic AS topic, e.state AS state FROM {s}ledger_log l "
            "LEFT JOIN {e} e ON e." + self.events_id_column + " = l.notification_id "
            "WHERE l.position >= ? ORDER BY l.position LIMIT ?", (start_position, limit))
        return [dict(r) for r in rows]

    def stray_event_versions(self, limit: int) -> list[int]:
        """Versions of event rows that no log position refers to (rows inserted behind the log's back)."""
        rows = self._read_all(
            "SELECT e.originator_version AS version FROM {e} e LEFT JOIN {s}ledger_log l ON l.notification_id = e."
            + self.events_id_column + " WHERE l.position IS NULL ORDER BY e.originator_version LIMIT ?", (limit,))
        return [r["version"] for r in rows]

    def scan_leaves(self, start_idx: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self._read_all("SELECT idx, hash FROM {s}merkle_nodes WHERE level = 0 AND idx >= ? "
                              "ORDER BY idx LIMIT ?", (start_idx, limit))
        return [(r["idx"], bytes(r["hash"])) for r in rows]

    def clear_projections(self) -> None:
        self._write("DELETE FROM {s}projections", ())
        self._write("DELETE FROM {s}checkpoints", ())

    # --- dialect hooks --------------------------------------------------------------------------------

    def _execute(self, cursor, statement: str, params: tuple = ()) -> None:
        raise NotImplementedError

    def _executemany(self, cursor, statement: str, rows: list) -> None:
        raise NotImplementedError

    def _fetchone(self, cursor) -> Any:
        return cursor.fetchone()

    def _read_all(self, statement: str, params: tuple = ()) -> list:
        raise NotImplementedError

    def _read_one(self, statement: str, params: tuple = ()) -> Any:
        rows = self._read_all(statement, params)
        return rows[0] if rows else None

    def _write(self, statement: str, params: tuple) -> None:
        raise NotImplementedError


class SQLiteLedgerRecorder(_LedgerTables, SQLiteApplicationRecorder):
    """SQLite: the default embedded store (WAL, synchronous=FULL: a commit survives a power cut)."""

    def construct_create_table_statements(self) -> list[str]:
        return super().construct_create_table_statements() + self.side_table_statements()

    def _events_table(self) -> str:
        return self.events_table_name

    @contextlib.contextmanager
    def writer_turn(self) -> Iterator[None]:
        """SQLite serialises writers with its database lock; nothing to add."""
        yield

    def _insert_events(self, c, stored_events, **kwargs):
        notification_ids = super()._insert_events(c, stored_events, **kwargs)
        self._append_log(c, stored_events, notification_ids)
        return notification_ids

    def _execute(self, cursor, statement: str, params: tuple = ()) -> None:
        cursor.execute(self._sql(statement), params)

    def _executemany(self, cursor, statement: str, rows: list) -> None:
        if rows:
            cursor.executemany(self._sql(statement), rows)

    def _read_all(self, statement: str, params: tuple = ()) -> list:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self._sql(statement), params)
            return c.fetchall()

    def _write(self, statement: str, params: tuple) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(self._sql(statement), params)


class PostgresLedgerRecorder(_LedgerTables, PostgresApplicationRecorder):
    """PostgreSQL: several stateless service processes share one database."""

    blob_type = "BYTEA"
    events_id_column = "notification_id"

    def __init__(self, datastore, **kwargs):
        super().__init__(datastore, **kwargs)
        self.schema_prefix = f'"{self.datastore.schema}".'
        self.index_prefix = ""
        from psycopg.sql import SQL
        self.sql_create_statements.extend(SQL(s) for s in self.side_table_statements())

    def _events_table(self) -> str:
        return f'"{self.datastore.schema}"."{self.events_table_name}"'

    def _sql(self, statement: str) -> str:
        return super()._sql(statement).replace("?", "%s")

    @contextlib.contextmanager
    def writer_turn(self) -> Iterator[None]:
        """Processes sharing the database take turns (FIFO advisory lock) to decide and append a batch.

        Optimistic concurrency (the events' primary key) keeps the ledger correct without it; the lock
        only stops a busy process from always winning the append race and starving the others.
        """
        key = zlib.crc32(f"reserve-ledger-writer:{self.datastore.schema}".encode())
        with self.datastore.get_connection() as conn:
            conn.execute("SET statement_timeout = '30s'")
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @contextlib.contextmanager
    def anchor_turn(self) -> Iterator[bool]:
        """At most one process anchors at a time: a session advisory lock, released if the process dies."""
        key = zlib.crc32(f"reserve-ledger-anchor:{self.datastore.schema}".encode())
        with self.datastore.get_connection() as conn:
            conn.execute("SET statement_timeout = '30s'")
            won = conn.execute("SELECT pg_try_advisory_lock(%s) AS won", (key,)).fetchone()["won"]
            try:
                yield won
            finally:
                if won:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _fetch_ids_after_insert_events(self, curs, stored_events, **kwargs):
        notification_ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        self._append_log(curs, stored_events, notification_ids)
        return notification_ids

    def _execute(self, cursor, statement: str, params: tuple = ()) -> None:
        cursor.execute(self._sql(statement), params)

    def _executemany(self, cursor, statement: str, rows: list) -> None:
        if rows:
            cursor.executemany(self._sql(statement), rows)

    def _read_all(self, statement: str, params: tuple = ()) -> list:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._sql(statement), params)
            return curs.fetchall()

    def _write(self, statement: str, params: tuple) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self._sql(statement), params)
