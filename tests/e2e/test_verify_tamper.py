"""`reserve-ledger verify` on real stores: clean data passes; each kind of tampering with the real SQLite
file or the real PostgreSQL tables makes it exit non-zero and name the first bad position."""

import json
import sqlite3
import subprocess
import sys

import psycopg
import pytest

from ledger.application import ReserveLedger
from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from services.api.client import secure_channel
from services.store.config import SQLITE_FILE_NAME, storage_env
from services.compose import ServerConfig, build_server
from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, purchase

EVENTS = 12


@pytest.fixture
def recorded(storage, certs_dir, tmp_path):
    """A store holding EVENTS events and a signed tree head over all of them; the server is stopped."""
    data_dir, database_url = storage
    key = tmp_path / "signing.key"
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir, database_url=database_url,
                                       certs_dir=str(certs_dir), signing_key_path=str(key))).start()
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        open_account(clients.alice, "cold-a")
        for n in range(EVENTS - 1):
            purchase(clients.alice, "cold-a", 1 + n, f"buy-{n}")
        audit = audit_pb2_grpc.AuditServiceStub(secure_channel(clients.address, certs_dir, "dave"))
        assert audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10).tree_head.tree_size == EVENTS
    finally:
        server.stop(grace_s=1)
    return data_dir, database_url, key


def run_verify(data_dir, database_url, key) -> subprocess.CompletedProcess:
    storage = ["--database", database_url] if database_url else ["--data-dir", str(data_dir)]
    return subprocess.run([sys.executable, "-m", "services.cli.main", "verify", *storage, "--signing-key", str(key)],
                          capture_output=True, text=True, timeout=120)


class Tables:
    """Raw SQL on the real store, bypassing the service (what an attacker with database access does)."""

    def __init__(self, data_dir, database_url):
        recorder = ReserveLedger(storage_env(data_dir, database_url)).recorder
        prefix = f'"{recorder.datastore.schema}".' if database_url else ""
        self.events, self.row_id = f'{prefix}"{recorder.events_table_name}"', recorder.events_id_column
        self.log = prefix + "ledger_log"
        self.nodes = prefix + "merkle_nodes"
        if database_url:
            self.connection = psycopg.connect(POSTGRES_URL, autocommit=True)
            self.mark = "%s"
        else:
            self.connection = sqlite3.connect(str(data_dir) + "/" + SQLITE_FILE_NAME, isolation_level=None)
            self.mark = "?"

    def run(self, statement: str, params: tuple = ()):
        cursor = self.connection.execute(statement.replace("?", self.mark), params)
        return cursor.fetchall() if cursor.description else None

    def state(self, version: int) -> bytes:
        return bytes(self.run(f"SELECT state FROM {self.events} WHERE originator_version = ?", (version,))[0][0])

    def set_state(self, version: int, state: bytes) -> None:
        self.run(f"UPDATE {self.events} SET state = ? WHERE originator_version = ?", (state, version))


def edited_event(t: Tables, version: int) -> bytes:
    """The event at `version` with one more satoshi, still in canonical form."""
    from ledger.events import canonical_bytes
    event = json.loads(t.state(version))
    event["data"]["quantity_sats"] += 1
    return canonical_bytes(event)


def edit(t: Tables) -> int:
    t.set_state(6, edited_event(t, 6))
    return 5


def edit_out_of_canonical_form(t: Tables) -> int:
    t.set_state(6, json.dumps(json.loads(t.state(6))).encode())
    return 5


def delete(t: Tables) -> int:
    t.run(f"DELETE FROM {t.events} WHERE originator_version = ?", (8,))
    return 7


def delete_log_row(t: Tables) -> int:
    t.run(f"DELETE FROM {t.log} WHERE position = ?", (9,))
    return 9


def reorder(t: Tables) -> int:
    four, nine = t.state(4), t.state(9)
    t.set_state(4, nine)
    t.set_state(9, four)
    return 3


def copy_over(t: Tables) -> int:
    t.set_state(7, t.state(3))
    return 6


def insert_in_the_middle(t: Tables) -> int:
    """Shift versions >= 6 up by one and slip a forged row in at version 6."""
    topic, state, originator_id = t.run(f"SELECT topic, state, originator_id FROM {t.events} "
                                        "WHERE originator_version = ?", (6,))[0]
    t.run(f"UPDATE {t.events} SET originator_version = originator_version + 1000 WHERE originator_version >= ?",
          (6,))
    t.run(f"UPDATE {t.events} SET originator_version = originator_version - 999 WHERE originator_version >= ?",
          (1000,))
    t.run(f"INSERT INTO {t.events} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
          (originator_id, 6, topic, state))
    return 5


def append_unlogged(t: Tables) -> int:
    topic, state, originator_id = t.run(f"SELECT topic, state, originator_id FROM {t.events} "
                                        "WHERE originator_version = ?", (EVENTS,))[0]
    t.run(f"INSERT INTO {t.events} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
          (originator_id, EVENTS + 1, topic, state))
    return EVENTS


def edit_with_its_leaf(t: Tables) -> int:
    """Edit an event AND its stored leaf: only the signed tree head can tell, naming the span it covers."""
    from ledger import merkle
    forged = edited_event(t, 6)
    t.set_state(6, forged)
    leaf = merkle.leaf_hash(forged)
    t.run(f"UPDATE {t.nodes} SET hash = ? WHERE level = 0 AND idx = ?", (leaf, 5))
    return 1  # the span of the first head that no longer matches: the head kept at size 1 still does


TAMPERING = [edit, edit_out_of_canonical_form, delete, delete_log_row, reorder, copy_over, insert_in_the_middle, append_unlogged,
             edit_with_its_leaf]


def test_verify_passes_on_untouched_data(recorded):
    done = run_verify(*recorded)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"OK: {EVENTS} events, 2 signed tree heads" in done.stdout  # the first and the latest


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__)
def test_verify_names_the_first_bad_position(recorded, tamper):
    data_dir, database_url, key = recorded
    first_bad = tamper(Tables(data_dir, database_url))
    done = run_verify(data_dir, database_url, key)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"first bad position: {first_bad}" in done.stdout, done.stdout


def test_verify_refuses_a_head_signed_by_another_key(recorded, tmp_path):
    from services.store.signing import load_or_create_signing_key
    data_dir, database_url, _ = recorded
    other = tmp_path / "other.key"
    load_or_create_signing_key(other)
    done = run_verify(data_dir, database_url, other)
    assert done.returncode == 1 and "signature does not verify" in done.stdout
