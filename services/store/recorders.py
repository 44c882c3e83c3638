"""Storage adapters: eventsourcing recorders (SQLite, PostgreSQL) extended with the ledger's side tables.

The side tables are written in the SAME transaction as the events (and, on PostgreSQL, under the
library's EXCLUSIVE lock on the events table, so commit order = position order):
  ledger_log(position, notification_id, request_id, time_us, event_type)   dense positions, idempotency
  merkle_nodes(level, idx, hash)    complete perfect subtrees of the RFC 9162 log (level 0 = leaves)
  projections(name, position, state)  the saved read model, its position in the same row (atomic)
  checkpoints(position, state)        saved folds for point-in-time queries
  lot_chunks(digest, chunk)           full chunks of the FIFO lot queue that saved states name (ledger/lots.py)
  state_seals(position, ...)          each saved state's seal (ledger/saved_states.py): used only once proven
  tree_heads(tree_size, ...)          signed tree heads
  anchors(anchor_id, ...)             Bitcoin anchor transactions (written by the anchor worker)
  anchor_genesis(txid, vout)          the anchor wallet's first funding coin, recorded once
  anchor_request(request, ...)        the one outstanding PSBT request for an external anchor signer
  cosignatures(tree_size, witness, ...)  witnesses' cosignatures of the log's checkpoints
The recorders also implement ledger.application.LogStore.
"""

import contextlib
import dataclasses
import re
import threading
import zlib
from typing import Any, Iterator, Sequence

from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore, SQLiteFactory
from psycopg import sql

from ledger import merkle
from ledger.anchoring import Outpoint
from ledger.anchors import ANCHOR_BYTES_FIELDS, ANCHOR_FIELDS, ANCHOR_MUTABLE_FIELDS, Anchor
from ledger.application import AppendConflict, LogRow
from ledger.events import read_canonical_bytes
from ledger.saved_states import StateSeal
from ledger.tree_heads import TreeHead
from services.errors import CheckFailed, StoreFormatUnsupported
from services.store.mapper import LOGGED_EVENT_TOPIC

# What an events row's state holds. Stores written before this format kept eventsourcing's JSON encoding
# of the event's attributes there; they are refused (create_table), never misread.
STORE_FORMAT = ("event_state", "canonical-bytes-v1")
# Templates name tables and columns as {placeholders}, filled with quoted identifiers only; values are
# always parameters (`?`, rewritten to the dialect's marker).
SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS {ledger_log} (position BIGINT PRIMARY KEY, notification_id BIGINT NOT NULL UNIQUE, "
    "request_id TEXT NOT NULL UNIQUE, time_us BIGINT NOT NULL, event_type TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {ledger_log_time_us} ON {ledger_log} (time_us)",
    "CREATE TABLE IF NOT EXISTS {merkle_nodes} (level INTEGER NOT NULL, idx BIGINT NOT NULL, hash {blob} NOT NULL, "
    "PRIMARY KEY (level, idx))",
    "CREATE TABLE IF NOT EXISTS {projections} (name TEXT PRIMARY KEY, position BIGINT NOT NULL, state {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {checkpoints} (position BIGINT PRIMARY KEY, state {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {lot_chunks} (digest TEXT PRIMARY KEY, chunk {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {state_seals} (position BIGINT PRIMARY KEY, root_hash {blob} NOT NULL, "
    "signature {blob} NOT NULL, key_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {tree_heads} (tree_size BIGINT PRIMARY KEY, root_hash {blob} NOT NULL, "
    "timestamp_us BIGINT NOT NULL, signature {blob} NOT NULL, key_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {anchors} (anchor_id BIGINT PRIMARY KEY, tree_size BIGINT NOT NULL, "
    "root_hash {blob} NOT NULL, txid TEXT NOT NULL UNIQUE, raw_tx {blob} NOT NULL, vsize BIGINT NOT NULL, "
    "fee_sats BIGINT NOT NULL, prev_txid TEXT NOT NULL, prev_vout BIGINT NOT NULL, prev_value_sats BIGINT NOT NULL, "
    "change_vout BIGINT NOT NULL, change_value_sats BIGINT NOT NULL, state TEXT NOT NULL, replaces BIGINT, "
    "broadcast_height BIGINT, block_hash TEXT, block_height BIGINT, confirmations BIGINT NOT NULL, "
    "created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL, block_header {blob}, txout_proof {blob})",
    "CREATE TABLE IF NOT EXISTS {store_format} (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {anchor_genesis} (id INTEGER PRIMARY KEY CHECK (id = 1), txid TEXT NOT NULL, "
    "vout BIGINT NOT NULL, recorded_us BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {anchor_request} (id INTEGER PRIMARY KEY CHECK (id = 1), request TEXT NOT NULL, "
    "tree_size BIGINT NOT NULL, issued_us BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {cosignatures} (tree_size BIGINT NOT NULL, witness TEXT NOT NULL, "
    "checkpoint TEXT NOT NULL, signature_line TEXT NOT NULL, timestamp_s BIGINT NOT NULL, "
    "PRIMARY KEY (tree_size, witness))",
)
TABLES = ("ledger_log", "merkle_nodes", "projections", "checkpoints", "lot_chunks", "state_seals", "tree_heads",
          "anchors", "store_format", "anchor_genesis", "anchor_request", "cosignatures")
INDEXES = ("ledger_log_time_us",)
# One column per field of ledger.anchors.Anchor (the CREATE TABLE above must name the same columns).
ANCHOR_COLUMNS = ANCHOR_FIELDS
COMPILED_STATEMENTS_MAX = 1024
SQLITE_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SizedSQLiteFactory(SQLiteFactory):
    """eventsourcing's SQLite factory with a pool of SQLITE_POOL_SIZE connections (services/store/config.py
    sized_pool): the library reads no pool size from its environment on SQLite."""

    def __init__(self, env):
        super().__init__(env)
        size = int(self.env.get("SQLITE_POOL_SIZE"))
        built = self.datastore
        self.datastore = SQLiteDatastore(
            db_name=built.pool.db_name, lock_timeout=built.pool.lock_timeout, pool_size=size, max_overflow=0,
            single_row_tracking=built.single_row_tracking, originator_id_type=built.originator_id_type)


class MerkleNodeMissing(RuntimeError):
    """A stored subtree the next append needs is gone: the store is damaged (run `reserve-ledger verify`)."""


class AnchorGenesisChanged(CheckFailed):
    """A second, different anchor genesis: the stored one was edited, or the worker was pointed at another chain."""


class LogHookNotCalled(RuntimeError):
    """eventsourcing committed events without calling the hook that writes their log rows (see recorders)."""


def _tree_head(row) -> TreeHead:
    return TreeHead(row["tree_size"], bytes(row["root_hash"]), row["timestamp_us"], bytes(row["signature"]),
                    row["key_id"])


def _marks(count: int) -> str:
    return ", ".join("?" for _ in range(count))


class _LedgerTables:
    """The side tables on either backend: one implementation; a subclass gives the dialect as data
    (`blob_type`, `events_id_column`, `param_marker`) and how to quote an identifier (`_compose`)."""

    blob_type = "BLOB"
    events_id_column = "rowid"
    param_marker = "?"

    def __init__(self, *args, **kwargs):
        self._compiled: dict[tuple, Any] = {}  # before super(): SQLite builds its create statements there
        self._log_hook = threading.local()
        # services.store.signing.TreeHeadSigner once a server took over the writing: it signs each commit's
        # head inside the commit's transaction. Without one (library use, tests) appends are left unsigned.
        self.commit_signer = None
        super().__init__(*args, **kwargs)

    def _compose(self, template: str, identifiers: dict[str, tuple[str, ...]]) -> Any:
        raise NotImplementedError

    def _events_table(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _table(self, name: str) -> tuple[str, ...]:
        return (name,)

    def _statement(self, template: str, **columns: str | tuple[str, ...]) -> Any:
        """The template with its tables, `blob` type and the given columns filled in as quoted identifiers."""
        key = (template, tuple(sorted(columns.items())))
        compiled = self._compiled.get(key)
        if compiled is None:
            identifiers: dict[str, Any] = {name: self._table(name) for name in TABLES}
            identifiers.update({name: (name,) for name in INDEXES})
            identifiers.update(events=self._events_table(), events_id=(self.events_id_column,),
                               tree_size=("tree_size",), anchor_id=("anchor_id",))
            identifiers.update({k: (v,) if isinstance(v, str) else [(c,) for c in v] for k, v in columns.items()})
            text = template.replace("{blob}", self.blob_type).replace("?", self.param_marker)
            compiled = self._compose(text, identifiers)
            if len(self._compiled) >= COMPILED_STATEMENTS_MAX:
                self._compiled.clear()
            self._compiled[key] = compiled
        return compiled

    def side_table_statements(self) -> list:
        return [self._statement(template) for template in SIDE_TABLES]

    # --- one way to run a statement, for both backends ----------------------------------------------

    def _execute(self, cursor, template: str, params: Sequence = (), **columns) -> None:
        cursor.execute(self._statement(template, **columns), tuple(params))

    def _executemany(self, cursor, template: str, rows: list) -> None:
        if rows:
            cursor.executemany(self._statement(template), rows)

    def _read_all(self, template: str, params: Sequence = (), **columns) -> list:
        with self.datastore.transaction(commit=False) as cursor:
            self._execute(cursor, template, params, **columns)
            return cursor.fetchall()

    def _read_one(self, template: str, params: Sequence = (), **columns) -> Any:
        rows = self._read_all(template, params, **columns)
        return rows[0] if rows else None

    def _write(self, template: str, params: Sequence = (), **columns) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            self._execute(cursor, template, params, **columns)

    # --- schema and format --------------------------------------------------------------------------

    def create_table(self) -> None:
        """eventsourcing's public create_table, then: refuse a store whose events are in another format.
        A store this process may read but not change (a PostgreSQL role without CREATE) is opened when every
        table already exists: reads are served, and the server reports writes NOT_SERVING."""
        try:
            super().create_table()
        except PersistenceError:
            if not self._tables_readable():
                raise
        with self.datastore.transaction(commit=True) as cursor:
            self._execute(cursor, "SELECT value FROM {store_format} WHERE name = ?", (STORE_FORMAT[0],))
            row = cursor.fetchone()
            if row is None:
                self._execute(cursor, "SELECT topic FROM {events} LIMIT 1")
                first = cursor.fetchone()
                if first is not None and first["topic"] != LOGGED_EVENT_TOPIC:
                    raise StoreFormatUnsupported(
                        "this store was written by an older reserve-ledger (events in eventsourcing's JSON encoding, "
                        "before canonical-bytes-v1); it cannot be read by this version: see docs/FORMATS.md §1")
                self._execute(cursor, "INSERT INTO {store_format} (name, value) VALUES (?, ?) "
                                      "ON CONFLICT (name) DO NOTHING", STORE_FORMAT)
            elif row["value"] != STORE_FORMAT[1]:
                raise StoreFormatUnsupported(f"this store holds events in format {row['value']!r}; this version "
                                             f"reads {STORE_FORMAT[1]!r} only")

    def _tables_readable(self) -> bool:
        try:
            for name in ("events", *TABLES):
                self._read_all(f"SELECT 1 FROM {{{name}}} LIMIT 1")
        except PersistenceError:
            return False
        return True

    # --- write path: called inside the events' insert transaction ---------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs) -> Sequence[int] | None:
        """eventsourcing's public insert_events; a lost append race becomes the ledger's AppendConflict."""
        self._log_hook.appended = 0
        signer = self.commit_signer
        try:
            notification_ids = super().insert_events(stored_events, **kwargs)
        except IntegrityError as error:
            if signer is not None:
                signer.settle(committed=False)
            raise AppendConflict(str(error)) from error
        except BaseException:
            if signer is not None:
                signer.settle(committed=False)
            raise
        if signer is not None:
            signer.settle(committed=True)
        if self._log_hook.appended != len(stored_events):
            raise LogHookNotCalled(f"{len(stored_events)} events were inserted but {self._log_hook.appended} "
                                   "log rows written: eventsourcing no longer calls the overridden private hook")
        return notification_ids

    def _append_log(self, cursor, stored_events: Sequence[StoredEvent], notification_ids: Sequence[int]) -> None:
        """ledger_log rows and Merkle nodes for the events; each leaf hashes the stored bytes themselves."""
        self._execute(cursor, "SELECT COALESCE(MAX(position) + 1, 0) AS size FROM {ledger_log}")
        tree_size = cursor.fetchone()["size"]
        frontier = self._nodes(cursor, merkle.frontier_keys(tree_size))
        log_rows, node_rows, leaves, size_before = [], [], [], tree_size
        for stored, notification_id in zip(stored_events, notification_ids, strict=True):
            if stored.originator_version != tree_size + 1:
                raise AppendConflict(f"event version {stored.originator_version} does not extend a log of {tree_size}")
            event = read_canonical_bytes(stored.state, tree_size)
            log_rows.append((tree_size, notification_id, event["request_id"], event["time_us"], event["type"]))
            leaves.append(merkle.leaf_hash(stored.state))
            new_nodes = merkle.append_nodes(tree_size, leaves[-1], frontier)
            node_rows.extend((level, idx, digest) for (level, idx), digest in new_nodes)
            frontier.update(dict(new_nodes))
            tree_size += 1
        self._executemany(cursor, "INSERT INTO {ledger_log} (position, notification_id, request_id, time_us, "
                                  "event_type) VALUES (?, ?, ?, ?, ?)", log_rows)
        self._executemany(cursor, "INSERT INTO {merkle_nodes} (level, idx, hash) VALUES (?, ?, ?)", node_rows)
        if self.commit_signer is not None:
            self._sign_commit(cursor, size_before, leaves)
        self._log_hook.appended = getattr(self._log_hook, "appended", 0) + len(log_rows)

    def _sign_commit(self, cursor, size_before: int, leaves: list[bytes]) -> None:
        """The commit's signed head, in its own transaction; the head it supersedes is pruned unless kept
        (services/store/signing.py), an anchor commits to it or the outstanding PSBT request names it."""
        head, pruned_size = self.commit_signer.sign_commit(_CommitLog(self, cursor), size_before, leaves)
        self._execute(cursor, "INSERT INTO {tree_heads} (tree_size, root_hash, timestamp_us, signature, key_id) "
                              "VALUES (?, ?, ?, ?, ?)",
                      (head.tree_size, head.root_hash, head.timestamp_us, head.signature, head.key_id))
        if pruned_size is not None:
            self._execute(cursor, "DELETE FROM {tree_heads} WHERE tree_size = ? AND NOT EXISTS "
                                  "(SELECT 1 FROM {anchors} a WHERE a.tree_size = {tree_heads}.tree_size) AND NOT EXISTS "
                                  "(SELECT 1 FROM {anchor_request} r WHERE r.tree_size = {tree_heads}.tree_size)",
                          (pruned_size,))

    def _nodes(self, cursor, keys) -> dict:
        found = {}
        for level, idx in keys:
            self._execute(cursor, "SELECT hash FROM {merkle_nodes} WHERE level = ? AND idx = ?", (level, idx))
            row = cursor.fetchone()
            if row is None:
                raise MerkleNodeMissing(f"merkle node ({level}, {idx}) is missing")
            found[(level, idx)] = bytes(row["hash"])
        return found

    # --- LogStore -------------------------------------------------------------------------------------

    def log_size(self) -> int:
        return self._read_one("SELECT COALESCE(MAX(position) + 1, 0) AS size FROM {ledger_log}")["size"]

    def read_log(self, start_position: int, limit: int) -> list[LogRow]:
        rows = self._read_all("SELECT l.position AS position, e.state AS state FROM {ledger_log} l "
                              "JOIN {events} e ON e.{events_id} = l.notification_id "
                              "WHERE l.position >= ? ORDER BY l.position LIMIT ?", (start_position, limit))
        return [LogRow(r["position"], bytes(r["state"])) for r in rows]

    def find_requests(self, request_ids: Sequence[str]) -> dict[str, int]:
        if not request_ids:
            return {}
        rows = self._read_all("SELECT request_id, position FROM {ledger_log} WHERE request_id IN ("
                              + _marks(len(request_ids)) + ")", request_ids)
        return {r["request_id"]: r["position"] for r in rows}

    def position_at_time(self, time_us: int) -> int:
        row = self._read_one("SELECT MAX(position) AS p FROM {ledger_log} WHERE time_us <= ?", (time_us,))
        return -1 if row["p"] is None else row["p"]

    def load_projection(self, name: str) -> tuple[int, bytes] | None:
        row = self._read_one("SELECT position, state FROM {projections} WHERE name = ?", (name,))
        return None if row is None else (row["position"], bytes(row["state"]))

    def probe_write(self, time_us: int) -> None:
        """A small committed write: fails when the store cannot take writes (disk full, read-only, down)."""
        self._write("INSERT INTO {store_format} (name, value) VALUES (?, ?) ON CONFLICT (name) "
                    "DO UPDATE SET value = excluded.value", ("write_probe_us", str(time_us)))

    def save_projection(self, name: str, position: int, state: bytes, seal: StateSeal, replace: bool = False) -> None:
        """The row and its seal in one transaction; a row at a later position stays unless `replace`."""
        guard = "" if replace else " WHERE excluded.position >= {projections}.position"
        with self.datastore.transaction(commit=True) as cursor:
            self._execute(cursor, "INSERT INTO {projections} (name, position, state) VALUES (?, ?, ?) ON CONFLICT "
                                  "(name) DO UPDATE SET position = excluded.position, state = excluded.state" + guard,
                          (name, position, state))
            self._save_seal(cursor, seal)

    def load_checkpoint(self, position_max: int) -> tuple[int, bytes] | None:
        row = self._read_one("SELECT position, state FROM {checkpoints} WHERE position <= ? "
                             "ORDER BY position DESC LIMIT 1", (position_max,))
        return None if row is None else (row["position"], bytes(row["state"]))

    def save_checkpoint(self, position: int, state: bytes, seal: StateSeal, replace: bool = False) -> None:
        conflict = "DO UPDATE SET state = excluded.state" if replace else "DO NOTHING"
        with self.datastore.transaction(commit=True) as cursor:
            self._execute(cursor, "INSERT INTO {checkpoints} (position, state) VALUES (?, ?) ON CONFLICT (position) "
                                  + conflict, (position, state))
            self._save_seal(cursor, seal)

    def save_lot_chunks(self, chunks: Sequence[tuple[str, bytes]]) -> None:
        """Full lot chunks by digest (ledger/lots.py); content-addressed, so a stored chunk is rewritten only when
        its bytes differ (it was altered: a replay saving its chunks repairs it)."""
        with self.datastore.transaction(commit=True) as cursor:
            for digest, chunk in chunks:
                self._execute(cursor, "INSERT INTO {lot_chunks} AS stored (digest, chunk) VALUES (?, ?) "
                                      "ON CONFLICT (digest) DO UPDATE SET chunk = excluded.chunk "
                                      "WHERE stored.chunk <> excluded.chunk", (digest, chunk))

    def load_lot_chunk(self, digest: str) -> bytes | None:
        row = self._read_one("SELECT chunk FROM {lot_chunks} WHERE digest = ?", (digest,))
        return None if row is None else bytes(row["chunk"])

    def _save_seal(self, cursor, seal: StateSeal) -> None:
        self._execute(cursor, "INSERT INTO {state_seals} (position, root_hash, signature, key_id) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT (position) DO UPDATE SET root_hash = excluded.root_hash, "
                              "signature = excluded.signature, key_id = excluded.key_id",
                      (seal.position, seal.root_hash, seal.signature, seal.key_id))

    def load_seal(self, position: int) -> StateSeal | None:
        row = self._read_one("SELECT position, root_hash, signature, key_id FROM {state_seals} WHERE position = ?",
                             (position,))
        return None if row is None else StateSeal(row["position"], bytes(row["root_hash"]), bytes(row["signature"]),
                                                  row["key_id"])

    def set_aside(self, name: str, position: int, state: bytes) -> None:
        """Keep a saved state that failed its proof, for inspection, as a projections row named `name`."""
        self._write("INSERT INTO {projections} (name, position, state) VALUES (?, ?, ?) ON CONFLICT (name) "
                    "DO NOTHING", (name, position, state))

    def projection_names(self) -> list[str]:
        return [r["name"] for r in self._read_all("SELECT name FROM {projections} ORDER BY name")]

    def checkpoint_positions(self) -> list[int]:
        return [r["position"] for r in self._read_all("SELECT position FROM {checkpoints} ORDER BY position")]

    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """merkle.NodeReader: every requested complete subtree, in one query."""
        if not keys:
            return {}
        clause = " OR ".join("(level = ? AND idx = ?)" for _ in keys)
        params = tuple(v for key in keys for v in key)
        rows = self._read_all("SELECT level, idx, hash FROM {merkle_nodes} WHERE " + clause, params)
        return {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}

    # --- signed tree heads ---------------------------------------------------------------------------

    def save_tree_head(self, head: TreeHead) -> None:
        """First head signed for a size wins (replicas may race); heads are never changed."""
        self._write("INSERT INTO {tree_heads} (tree_size, root_hash, timestamp_us, signature, key_id) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tree_size) DO NOTHING",
                    (head.tree_size, head.root_hash, head.timestamp_us, head.signature, head.key_id))

    def load_tree_head(self, tree_size: int | None = None) -> TreeHead | None:
        """The head of that size, or the largest one when tree_size is None."""
        where = "" if tree_size is None else "WHERE tree_size = ? "
        row = self._read_one("SELECT tree_size, root_hash, timestamp_us, signature, key_id FROM {tree_heads} "
                             + where + "ORDER BY tree_size DESC LIMIT 1", () if tree_size is None else (tree_size,))
        return None if row is None else _tree_head(row)

    def list_tree_heads(self, tree_size_min: int = 0, tree_size_max: int | None = None,
                        limit: int | None = None) -> list[TreeHead]:
        """Heads in order of size, from tree_size_min, at most tree_size_max; `limit` rows (None: all)."""
        where, params = _range("tree_size", tree_size_min, "tree_size", tree_size_max, limit)
        rows = self._read_all("SELECT tree_size, root_hash, timestamp_us, signature, key_id FROM {tree_heads} "
                              + where, params)
        return [_tree_head(row) for row in rows]

    # --- Bitcoin anchors (written only by the one process holding the anchor turn) -------------------

    def insert_anchor(self, anchor: Anchor) -> int:
        """Record a signed anchor transaction before it is broadcast; returns its anchor_id (1, 2, ...)."""
        row = self._read_one("SELECT COALESCE(MAX(anchor_id), 0) + 1 AS next_id FROM {anchors}")
        anchor = dataclasses.replace(anchor, anchor_id=row["next_id"])
        self._write("INSERT INTO {anchors} ({columns}) VALUES (" + _marks(len(ANCHOR_COLUMNS)) + ")",
                    tuple(getattr(anchor, c) for c in ANCHOR_COLUMNS), columns=ANCHOR_COLUMNS)
        return anchor.anchor_id

    def update_anchor(self, anchor_id: int, **changes) -> None:
        assert changes and set(changes) <= set(ANCHOR_MUTABLE_FIELDS), changes
        names = tuple(changes)
        assignments = ", ".join(f"{{c{i}}} = ?" for i in range(len(names)))
        self._write("UPDATE {anchors} SET " + assignments + " WHERE anchor_id = ?", (*changes.values(), anchor_id),
                    **{f"c{i}": name for i, name in enumerate(names)})

    def list_anchors(self, anchor_id_min: int = 0, tree_size_max: int | None = None,
                     limit: int | None = None) -> list[Anchor]:
        """Anchors in order of anchor_id, from anchor_id_min, committing to at most tree_size_max events."""
        where, params = _range("anchor_id", anchor_id_min, "tree_size", tree_size_max, limit)
        rows = self._read_all("SELECT {columns} FROM {anchors} " + where, params, columns=ANCHOR_COLUMNS)
        return [Anchor(**{c: (bytes(r[c]) if c in ANCHOR_BYTES_FIELDS and r[c] is not None else r[c])
                          for c in ANCHOR_COLUMNS}) for r in rows]

    @contextlib.contextmanager
    def anchor_turn(self) -> Iterator[bool]:
        """True when this process may anchor now (SQLite: one process owns the data dir)."""
        yield True

    # --- the anchor wallet's genesis: its first funding coin, recorded once ------------------------------

    def record_anchor_genesis(self, genesis: Outpoint, recorded_us: int) -> None:
        """Record the coin the first anchor spends; the first record stays. Recording another one is refused
        (AnchorGenesisChanged): the chain of anchors an auditor follows starts at this coin, always."""
        self._write("INSERT INTO {anchor_genesis} (id, txid, vout, recorded_us) VALUES (1, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING", (genesis.txid, genesis.vout, recorded_us))
        stored = self.load_anchor_genesis()
        if stored != genesis:
            raise AnchorGenesisChanged(f"the anchor genesis is recorded as {stored}; refusing to start a second chain "
                                       f"of anchors at {genesis} (run `reserve-ledger verify`)")

    def load_anchor_genesis(self) -> Outpoint | None:
        row = self._read_one("SELECT txid, vout FROM {anchor_genesis} WHERE id = 1")
        return None if row is None else Outpoint(row["txid"], row["vout"])

    # --- the outstanding PSBT request (docs/FORMATS-anchoring.md §7): at most one, the newest issued -----

    def record_anchor_request(self, request_text: str, tree_size: int, issued_us: int) -> None:
        """Make this request the outstanding one (any earlier request is no longer accepted). The signed head
        at `tree_size` is kept while the request is outstanding (the submit checks the request against it)."""
        self._write("INSERT INTO {anchor_request} (id, request, tree_size, issued_us) VALUES (1, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET request = excluded.request, tree_size = excluded.tree_size, "
                    "issued_us = excluded.issued_us", (request_text, tree_size, issued_us))

    def load_anchor_request(self) -> tuple[str, int] | None:
        """(request text, issued_us) of the outstanding request; None when none is."""
        row = self._read_one("SELECT request, issued_us FROM {anchor_request} WHERE id = 1")
        return None if row is None else (row["request"], row["issued_us"])

    def clear_anchor_request(self) -> None:
        self._write("DELETE FROM {anchor_request} WHERE id = 1", ())

    # --- witnesses' cosignatures of checkpoints (services/witness/gatherer.py) ----------------------------

    def save_cosignature(self, tree_size: int, witness: str, checkpoint: str, signature_line: str,
                         timestamp_s: int) -> None:
        """A witness's cosignature line of the log-signed ``checkpoint`` note at ``tree_size`` (the newest wins)."""
        self._write("INSERT INTO {cosignatures} (tree_size, witness, checkpoint, signature_line, timestamp_s) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tree_size, witness) DO UPDATE SET "
                    "checkpoint = excluded.checkpoint, signature_line = excluded.signature_line, "
                    "timestamp_s = excluded.timestamp_s", (tree_size, witness, checkpoint, signature_line, timestamp_s))

    def list_cosignatures(self, tree_size: int) -> list[dict]:
        """The cosignatures stored for one tree size, by witness name."""
        rows = self._read_all("SELECT witness, checkpoint, signature_line, timestamp_s FROM {cosignatures} "
                              "WHERE tree_size = ? ORDER BY witness", (tree_size,))
        return [dict(row) for row in rows]

    def latest_cosigned_size(self, witness: str) -> tuple[int, str] | None:
        """The largest tree size ``witness`` cosigned, with that checkpoint note (None: it never cosigned)."""
        row = self._read_one("SELECT tree_size, checkpoint FROM {cosignatures} WHERE witness = ? "
                             "ORDER BY tree_size DESC LIMIT 1", (witness,))
        return None if row is None else (row["tree_size"], row["checkpoint"])

    def latest_witnessed(self, quorum: int) -> tuple[int, str] | None:
        """The largest tree size cosigned by at least ``quorum`` witnesses, with its checkpoint note."""
        row = self._read_one("SELECT tree_size, MIN(checkpoint) AS checkpoint FROM {cosignatures} GROUP BY tree_size "
                             "HAVING COUNT(*) >= ? ORDER BY tree_size DESC LIMIT 1", (quorum,))
        return None if row is None else (row["tree_size"], row["checkpoint"])

    def cosigned_sizes(self, tree_size_max: int) -> list[int]:
        """Every tree size up to ``tree_size_max`` with at least one stored cosignature."""
        rows = self._read_all("SELECT DISTINCT tree_size FROM {cosignatures} WHERE tree_size <= ? "
                              "ORDER BY tree_size", (tree_size_max,))
        return [row["tree_size"] for row in rows]

    # --- raw reads for `reserve-ledger verify` (no trust in any derived table) --------------------------

    def scan_log_rows(self, start_position: int, limit: int) -> list[dict]:
        """ledger_log rows from a position, each with its event row's columns (None when that row is gone)."""
        rows = self._read_all(
            "SELECT l.position AS position, l.request_id AS request_id, l.event_type AS event_type, "
            "e.originator_version AS version, e.topic AS topic, e.state AS state FROM {ledger_log} l "
            "LEFT JOIN {events} e ON e.{events_id} = l.notification_id "
            "WHERE l.position >= ? ORDER BY l.position LIMIT ?", (start_position, limit))
        return [dict(r) for r in rows]

    def stray_event_versions(self, limit: int) -> list[int]:
        """Versions of event rows that no log position refers to (rows inserted behind the log's back)."""
        rows = self._read_all(
            "SELECT e.originator_version AS version FROM {events} e LEFT JOIN {ledger_log} l "
            "ON l.notification_id = e.{events_id} WHERE l.position IS NULL ORDER BY e.originator_version LIMIT ?",
            (limit,))
        return [r["version"] for r in rows]

    def scan_leaves(self, start_idx: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self._read_all("SELECT idx, hash FROM {merkle_nodes} WHERE level = 0 AND idx >= ? "
                              "ORDER BY idx LIMIT ?", (start_idx, limit))
        return [(r["idx"], bytes(r["hash"])) for r in rows]

    def clear_projections(self) -> None:
        self._write("DELETE FROM {projections}")
        self._write("DELETE FROM {checkpoints}")


class _CommitLog:
    """services.store.signing.CommitLog: reads through the cursor of the commit being signed."""

    def __init__(self, tables: _LedgerTables, cursor):
        self._tables, self._cursor = tables, cursor

    def latest_heads(self, count: int) -> list[TreeHead]:
        self._tables._execute(self._cursor, "SELECT tree_size, root_hash, timestamp_us, signature, key_id FROM "
                                            "{tree_heads} ORDER BY tree_size DESC LIMIT ?", (count,))
        return [_tree_head(row) for row in self._cursor.fetchall()]

    def event_bytes(self, start: int, end: int) -> list[bytes]:
        self._tables._execute(self._cursor, "SELECT l.position AS position, e.state AS state FROM {ledger_log} l "
                                            "JOIN {events} e ON e.{events_id} = l.notification_id "
                                            "WHERE l.position >= ? AND l.position < ? ORDER BY l.position",
                              (start, end))
        rows = self._cursor.fetchall()
        return [bytes(row["state"]) for n, row in enumerate(rows) if row["position"] == start + n]


def _range(low_column: str, low: int, high_column: str, high: int | None, limit: int | None) -> tuple[str, tuple]:
    """`WHERE {low} >= ? [AND {high} <= ?] ORDER BY {low} [LIMIT ?]` and its parameters; the column names
    are this module's constants, filled in as quoted identifiers like every other name."""
    assert limit is None or (isinstance(limit, int) and limit > 0), limit
    assert {low_column, high_column} <= {"tree_size", "anchor_id"}, (low_column, high_column)
    where, params = f"WHERE {{{low_column}}} >= ?", [low]
    if high is not None:
        where, params = where + f" AND {{{high_column}}} <= ?", [*params, high]
    where += f" ORDER BY {{{low_column}}}"
    if limit is not None:
        where, params = where + " LIMIT ?", [*params, limit]
    return where, tuple(params)


def _sqlite_identifier(parts: tuple[str, ...]) -> str:
    assert all(SQLITE_IDENTIFIER.match(part) for part in parts), parts
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


class SQLiteLedgerRecorder(_LedgerTables, SQLiteApplicationRecorder):
    """SQLite: the default embedded store (WAL, synchronous=FULL: a commit survives a power cut)."""

    def _compose(self, template: str, identifiers: dict) -> str:
        return template.format(**{name: _sqlite_identifier(value) if isinstance(value, tuple)
                                  else ", ".join(_sqlite_identifier(v) for v in value)
                                  for name, value in identifiers.items()})

    def _events_table(self) -> tuple[str, ...]:
        return (self.events_table_name,)

    def construct_create_table_statements(self) -> list[str]:
        return super().construct_create_table_statements() + self.side_table_statements()

    @contextlib.contextmanager
    def writer_turn(self) -> Iterator[None]:
        """SQLite serialises writers with its database lock; nothing to add."""
        yield

    def reopen_connections(self) -> None:
        """Close the pool's idle connections now and the ones in use when they come back: a SQLite connection
        opened while the file was read-only stays read-only for its life, so a store made writable again is
        written only through new connections. Uses the PRIVATE pool state of eventsourcing 9.5.6 (no public
        way exists); tests/e2e/test_read_only_store.py fails if that changes."""
        pool = self.datastore.pool
        with pool._put_condition:
            for connection in pool._pool:
                connection.close()
            for connection in pool._in_use.values():
                connection._closing.set()

    # Override of a PRIVATE eventsourcing hook (checked against eventsourcing 9.5.6): SQLiteApplicationRecorder
    # offers no public hook inside the insert transaction. insert_events above fails loudly if it stops being called.
    def _insert_events(self, c, stored_events, **kwargs):
        notification_ids = super()._insert_events(c, stored_events, **kwargs)
        self._append_log(c, stored_events, notification_ids)
        return notification_ids


class PostgresLedgerRecorder(_LedgerTables, PostgresApplicationRecorder):
    """PostgreSQL: several stateless service processes share one database."""

    blob_type = "BYTEA"
    events_id_column = "notification_id"
    param_marker = "%s"

    def __init__(self, datastore, **kwargs):
        super().__init__(datastore, **kwargs)
        self.sql_create_statements.extend(self.side_table_statements())

    def reopen_connections(self) -> None:
        """Nothing to do: PostgreSQL checks privileges and read-only state per statement, not per connection."""

    def _compose(self, template: str, identifiers: dict) -> sql.Composed:
        return sql.SQL(template).format(**{name: sql.Identifier(*value) if isinstance(value, tuple)
                                           else sql.SQL(", ").join(sql.Identifier(*v) for v in value)
                                           for name, value in identifiers.items()})

    def _table(self, name: str) -> tuple[str, ...]:
        return (self.datastore.schema, name)

    def _events_table(self) -> tuple[str, ...]:
        return (self.datastore.schema, self.events_table_name)

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

    # Override of a PRIVATE eventsourcing hook (checked against eventsourcing 9.5.6): the only point inside
    # PostgresApplicationRecorder.insert_events' transaction, under its EXCLUSIVE table lock, after the
    # notification ids are known. insert_events above fails loudly if it stops being called.
    def _fetch_ids_after_insert_events(self, curs, stored_events, **kwargs):
        notification_ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        self._append_log(curs, stored_events, notification_ids)
        return notification_ids
