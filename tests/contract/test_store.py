"""The store on SQLite and PostgreSQL: its private eventsourcing hook is called on every append, it stores
the decided bytes, it refuses a store of another format, and its SQL names are identifiers, not input."""

import pathlib
import re

import psycopg
import pytest
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder

from ledger import merkle
from ledger.application import ReserveLedger
from services.errors import ConfigurationInvalid, StoreFormatUnsupported
from services.store.config import postgres_env, sqlite_env
from services.store.recorders import LogHookNotCalled, PostgresLedgerRecorder
from tests.conftest import POSTGRES_URL
from tests.contract.scenario import drive

# The private eventsourcing 9.5.6 hooks services/store/recorders.py overrides, per recorder base class.
PRIVATE_HOOKS = {SQLiteApplicationRecorder: "_insert_events", PostgresApplicationRecorder: "_fetch_ids_after_insert_events"}


@pytest.fixture
def ledger(storage_env):
    app = ReserveLedger(storage_env)
    yield app
    app.close()


def test_every_append_writes_its_log_rows_and_leaves_from_the_stored_bytes(ledger):
    """ledger_log and the Merkle nodes follow the event rows; each leaf hashes the stored state exactly."""
    drive(ledger, rounds=1)
    size = ledger.store.log_size()
    rows = ledger.store.scan_log_rows(0, size + 1)
    assert [r["position"] for r in rows] == list(range(size)) and size > 10
    assert [bytes(r["state"]) for r in rows] == [data for _, data in ledger.read_events(0, size)]
    leaves = [leaf for _, leaf in ledger.store.scan_leaves(0, size + 1)]
    assert leaves == [merkle.leaf_hash(bytes(r["state"])) for r in rows]
    assert ledger.store.stray_event_versions(10) == []


def test_an_append_the_private_hook_misses_fails_loudly(ledger, monkeypatch):
    """If eventsourcing stops calling the overridden private hook, the append raises instead of silently
    committing events without log rows."""
    recorder = ledger.recorder
    base = next(cls for cls in PRIVATE_HOOKS if isinstance(recorder, cls))
    hook = PRIVATE_HOOKS[base]
    monkeypatch.setattr(recorder, hook, getattr(base, hook).__get__(recorder))  # the library's own, not ours
    with pytest.raises(LogHookNotCalled):
        drive(ledger, rounds=1)


def test_a_store_of_the_old_row_format_is_refused_not_misread(ledger, storage_env):
    """A store whose event rows hold eventsourcing's JSON (written before canonical-bytes-v1) is refused."""
    drive(ledger, rounds=1)
    ledger.recorder._write("DELETE FROM {store_format}")
    ledger.recorder._write("UPDATE {events} SET topic = ?", ("ledger.events:Book.AccountOpened",))
    with pytest.raises(StoreFormatUnsupported, match="older reserve-ledger"):
        ReserveLedger(storage_env)


def test_a_ledger_whose_mapper_would_re_encode_events_refuses_to_start(storage_env):
    """Without the canonical-bytes mapper the library would store its own JSON: the ledger will not start."""
    env = {k: v for k, v in storage_env.items() if k != "MAPPER_TOPIC"}
    with pytest.raises(ValueError, match="MAPPER_TOPIC"):
        ReserveLedger(env)


@pytest.mark.parametrize("schema", ['x"; DROP TABLE ledger_log; --', "a.b", "Mixed", "1abc", "s" * 64])
def test_a_schema_name_that_is_not_a_plain_identifier_is_refused(schema):
    with pytest.raises(ConfigurationInvalid):
        postgres_env(f"postgresql://postgres@127.0.0.1:5432/test?schema={schema}")


def test_statements_quote_every_table_name(ledger):
    """Names reach SQL as quoted identifiers (psycopg.sql on PostgreSQL), schema-qualified there."""
    statement = ledger.recorder._statement("SELECT position FROM {ledger_log} JOIN {events} ON {events_id} = ?")
    if isinstance(ledger.recorder, PostgresLedgerRecorder):
        with psycopg.connect(POSTGRES_URL) as conn:
            text = statement.as_string(conn)
        schema = ledger.recorder.datastore.schema
        assert text == (f'SELECT position FROM "{schema}"."ledger_log" JOIN "{schema}"."reserveledger_events" '
                        'ON "notification_id" = %s')
    else:
        assert statement == 'SELECT position FROM "ledger_log" JOIN "stored_events" ON "rowid" = ?'


def test_ledger_imports_no_eventsourcing_persistence_module():
    """ledger/ is the domain: storage (eventsourcing.persistence, .sqlite, .postgres) stays in services/store."""
    ledger_dir = pathlib.Path(__file__).resolve().parents[2] / "ledger"
    pattern = re.compile(r"^\s*(from|import)\s+eventsourcing\.(persistence|sqlite|postgres)\b", re.MULTILINE)
    offenders = [p.name for p in ledger_dir.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_sqlite_store_is_stamped_with_its_format(tmp_path):
    app = ReserveLedger(sqlite_env(tmp_path))
    try:
        assert app.recorder._read_one("SELECT value FROM {store_format}")["value"] == "canonical-bytes-v1"
    finally:
        app.close()


def test_one_psbt_request_is_outstanding_at_a_time(ledger):
    """Issuing a request replaces the outstanding one (on both backends); submitting clears it."""
    store = ledger.store
    assert store.load_anchor_request() is None
    store.record_anchor_request('{"txid": "a"}', 5, 1_000)
    store.record_anchor_request('{"txid": "b"}', 7, 2_000)
    assert store.load_anchor_request() == ('{"txid": "b"}', 2_000)
    store.clear_anchor_request()
    assert store.load_anchor_request() is None
