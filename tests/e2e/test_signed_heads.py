"""Every commit is signed by the writer that made it, and nothing else is ever signed.

An insider with write access to the database appends or inserts events with correct Merkle nodes; the
service must never sign a head over them (not at restart, on GetTreeHead, at shutdown or on export), must
say so (health NOT_SERVING for the ledger service, commands refused with LOG_INTEGRITY_ALARM, reads still
served), and `verify` and `audit` must name the positions. In a normal run every acknowledged command is
under a stored signed head the moment its answer arrives, on SQLite and PostgreSQL, with one replica or two.
"""

import json
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger import merkle
from ledger.events import canonical_bytes
from ledger.tree_heads import verify_tree_head
from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.client import secure_channel
from services.compose import ServerConfig, build_server
from tests.e2e.conftest import Clients
from tests.e2e.helpers import error_reason, open_account, purchase, rpc_error
from tests.e2e.test_verify_tamper import EVENTS, Tables, recorded, run_verify  # noqa: F401 - a fixture

SERVICE = "reserve_ledger.v1.ReserveLedgerService"


def forged(event_bytes: bytes, position: int, request_id: str) -> bytes:
    """An event that looks like the service's, at `position`, in canonical form."""
    event = json.loads(event_bytes)
    event.update(position=position, request_id=request_id)
    return canonical_bytes(event)


def insert_event_row(t: Tables, version: int, state: bytes) -> int:
    """An events row and its log row; returns the notification id."""
    originator_id, topic = t.run(f"SELECT originator_id, topic FROM {t.events} WHERE originator_version = 1")[0]
    row_id = t.run(f"INSERT INTO {t.events} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?) "
                   f"RETURNING {t.row_id}", (originator_id, version, topic, state))[0][0]
    event = json.loads(state)
    t.run(f"INSERT INTO {t.log} (position, notification_id, request_id, time_us, event_type) VALUES (?, ?, ?, ?, ?)",
          (version - 1, row_id, event["request_id"], event["time_us"], event["type"]))
    return row_id


def rewrite_merkle_nodes(t: Tables) -> None:
    """Recompute every stored subtree from the events' bytes, as an insider covering their tracks would."""
    states = [bytes(row[0]) for row in t.run(f"SELECT e.state FROM {t.log} l JOIN {t.events} e "
                                              f"ON e.{t.row_id} = l.notification_id ORDER BY l.position")]
    nodes = merkle.MemoryNodeStore()
    for state in states:
        nodes.append(merkle.leaf_hash(state))
    t.run(f"DELETE FROM {t.nodes}")
    for (level, idx), digest in nodes.nodes.items():
        t.run(f"INSERT INTO {t.nodes} (level, idx, hash) VALUES (?, ?, ?)", (level, idx, digest))


def append_behind_the_back(t: Tables) -> int:
    """One more event at the end, with its log row and correct Merkle nodes; returns its position."""
    size = t.run(f"SELECT COUNT(*) FROM {t.log}")[0][0]
    insert_event_row(t, size + 1, forged(t.state(size), size, "forged-append"))
    rewrite_merkle_nodes(t)
    return size


def insert_in_the_middle(t: Tables, position: int) -> None:
    """A forged event at `position`; every later event moves one up (bytes, log rows, Merkle nodes rewritten)."""
    size = t.run(f"SELECT COUNT(*) FROM {t.log}")[0][0]
    old = [t.state(version) for version in range(1, size + 1)]
    new = old[:position] + [forged(old[position], position, "forged-middle")] + [
        forged(state, n + 1, json.loads(state)["request_id"]) for n, state in enumerate(old) if n >= position]
    t.run(f"UPDATE {t.log} SET request_id = 'moving-' || request_id WHERE position >= ?", (position,))
    for version in range(position + 1, size + 1):
        t.set_state(version, new[version - 1])
        event = json.loads(new[version - 1])
        t.run(f"UPDATE {t.log} SET request_id = ?, time_us = ?, event_type = ? WHERE position = ?",
              (event["request_id"], event["time_us"], event["type"], version - 1))
    insert_event_row(t, size + 1, new[size])
    rewrite_merkle_nodes(t)


def start(data_dir, database_url, certs_dir, key, **settings):
    return build_server(ServerConfig(metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir, database_url=database_url,
                                     certs_dir=str(certs_dir), signing_key_path=str(key), **settings)).start()


def health_of(address: str, certs_dir) -> int:
    stub = health_pb2_grpc.HealthStub(secure_channel(address, certs_dir, "dave"))
    return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10).status


def audit_stub(address: str, certs_dir):
    return audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs_dir, "dave"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def storage_args(data_dir, database_url) -> list[str]:
    return ["--database", database_url] if database_url else ["--data-dir", str(data_dir)]


def head_sizes(t: Tables, schema_prefix: str) -> list[int]:
    return [row[0] for row in t.run(f"SELECT tree_size FROM {schema_prefix}tree_heads ORDER BY tree_size")]


def prefix_of(t: Tables) -> str:
    return t.log[: -len("ledger_log")]


def a_purchase(request_id: str) -> pb.RecordPurchaseRequest:
    return pb.RecordPurchaseRequest(request_id=request_id, account_id="cold-a", quantity_sats=100_000_000,
                                    price_per_btc="60000.00", currency_code="USD", fiat_total="60000.00",
                                    counterparty="Desk", trade_reference="T-1", trade_date="2026-01-02")


def assert_refused_with_the_alarm(server, certs_dir, first: int, last: int, signed_size: int) -> None:
    """Ledger service NOT_SERVING, reads served, a command refused naming the positions, no head beyond."""
    clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
    assert health_of(clients.address, certs_dir) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert clients.alice.ListAccounts(pb.ListAccountsRequest(), timeout=10).accounts  # reads are served
    error = rpc_error(clients.alice.RecordPurchase, a_purchase("after-alarm"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "LOG_INTEGRITY_ALARM"
    assert f"events {first} to {last}" in error.details(), error.details()
    assert audit_stub(clients.address, certs_dir).GetTreeHead(apb.GetTreeHeadRequest(), timeout=10) \
        .tree_head.tree_size == signed_size


def test_an_event_appended_behind_the_back_is_an_alarm_and_is_never_signed(recorded, certs_dir, tmp_path):
    data_dir, database_url, key = recorded
    t = Tables(data_dir, database_url)
    heads_before = head_sizes(t, prefix_of(t))
    position = append_behind_the_back(t)
    server = start(data_dir, database_url, certs_dir, key)
    try:
        assert_refused_with_the_alarm(server, certs_dir, position, position, position)
    finally:
        server.stop(grace_s=1)  # the old code signed a head of the whole log here
    export = cli("export", *storage_args(data_dir, database_url), "--signing-key", str(key),
                 "--out", str(tmp_path / "bundle"))
    assert export.returncode == 0, export.stderr
    assert head_sizes(t, prefix_of(t)) == heads_before  # no shutdown, GetTreeHead or export signed it
    verify = run_verify(data_dir, database_url, key)
    assert verify.returncode == 1 and f"first bad position: {position}" in verify.stdout, verify.stdout
    assert f"events {position} to {position} are covered by no signed tree head" in verify.stdout
    audit = cli("audit", str(tmp_path / "bundle"))
    assert audit.returncode == 1 and f"FAIL tree_heads event {position}" in audit.stdout, audit.stdout


def test_an_event_inserted_in_the_middle_never_gets_an_inconsistent_head(recorded, certs_dir, tmp_path):
    data_dir, database_url, key = recorded
    t = Tables(data_dir, database_url)
    heads_before = t.run(f"SELECT tree_size, root_hash FROM {prefix_of(t)}tree_heads ORDER BY tree_size")
    insert_in_the_middle(t, 5)
    server = start(data_dir, database_url, certs_dir, key)
    try:
        assert_refused_with_the_alarm(server, certs_dir, 1, EVENTS - 1, EVENTS)  # heads kept at 1 and 12
    finally:
        server.stop(grace_s=1)
    export = cli("export", *storage_args(data_dir, database_url), "--signing-key", str(key),
                 "--out", str(tmp_path / "bundle"))
    assert export.returncode == 0, export.stderr
    assert t.run(f"SELECT tree_size, root_hash FROM {prefix_of(t)}tree_heads ORDER BY tree_size") == heads_before
    verify = run_verify(data_dir, database_url, key)
    assert verify.returncode == 1 and "root does not match" in verify.stdout, verify.stdout
    assert cli("audit", str(tmp_path / "bundle")).returncode == 1


def test_rows_written_while_the_server_runs_stop_its_writes(storage, certs_dir, tmp_path):
    """The writer notices at its next commit that the log grew without it: alarm, not a signature."""
    data_dir, database_url = storage
    key = tmp_path / "signing.key"
    server = start(data_dir, database_url, certs_dir, key, create_store=True)
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        open_account(clients.alice, "cold-a")
        purchase(clients.alice, "cold-a", 1, "buy-0")
        t = Tables(data_dir, database_url)
        position = append_behind_the_back(t)
        error = rpc_error(clients.alice.RecordPurchase, a_purchase("buy-1"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "LOG_INTEGRITY_ALARM"
        assert_refused_with_the_alarm(server, certs_dir, position, position, position)
    finally:
        server.stop(grace_s=1)
    assert head_sizes(t, prefix_of(t))[-1] == position  # nor at shutdown


def commands_are_signed_when_acknowledged(servers, certs_dir, per_client: int = 8) -> None:
    """Clients on every server record purchases concurrently; after each answer the stored latest head
    (read straight from storage, nothing signs on reading) covers the command's position and verifies."""
    problems: list[str] = []
    key = servers[0].signer.public_key_raw

    def client(n: int) -> None:
        server = servers[n % len(servers)]
        stub = Clients(f"127.0.0.1:{server.port}", certs_dir).alice
        for k in range(per_client):
            position = purchase(stub, "cold-a", 1, f"buy-{n}-{k}").result.position
            head = server.ledger.store.load_tree_head()
            if head is None or head.tree_size <= position or not verify_tree_head(key, head):
                problems.append(f"command at {position} answered under head {head and head.tree_size}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []


def test_every_acknowledged_command_is_under_a_signed_head(storage, certs_dir, tmp_path):
    data_dir, database_url = storage
    key = tmp_path / "signing.key"
    server = start(data_dir, database_url, certs_dir, key, create_store=True)
    try:
        open_account(Clients(f"127.0.0.1:{server.port}", certs_dir).alice, "cold-a")
        commands_are_signed_when_acknowledged([server], certs_dir)
    finally:
        server.stop(grace_s=1)
    verify = run_verify(data_dir, database_url, key)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.postgres
def test_two_replicas_each_sign_their_own_commits_and_check_each_other(storage, certs_dir, tmp_path):
    """Two servers on one PostgreSQL database with one key: each commit is under a head when answered, every
    head verifies against the events, and each replica took in the other's events only through its heads."""
    data_dir, database_url = storage
    if database_url is None:
        pytest.skip("several replicas share a PostgreSQL database only")
    key = tmp_path / "signing.key"
    first = start(None, database_url, certs_dir, key, create_store=True)
    second = start(None, database_url, certs_dir, key)
    try:
        open_account(Clients(f"127.0.0.1:{first.port}", certs_dir).alice, "cold-a")
        commands_are_signed_when_acknowledged([first, second], certs_dir)
        assert first.signer.alarm is None and second.signer.alarm is None
    finally:
        second.stop(grace_s=1)
        first.stop(grace_s=1)
    verify = run_verify(None, database_url, key)
    assert verify.returncode == 0, verify.stdout + verify.stderr
