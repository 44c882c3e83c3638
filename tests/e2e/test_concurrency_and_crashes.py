"""Racing clients and kill -9: totals conserved, no overdraft, every acknowledged command exactly once."""

import collections
import random
import signal
import threading
import time

import grpc
import pytest

from ledger.application import ReserveLedger
from ledger.tree_heads import raw_public_key
from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.client import ledger_stub
from services.store.config import postgres_env, sqlite_env
from services.store.signing import load_or_create_signing_key
from services.audit.verify import verify_ledger
from tests.e2e.helpers import BTC, open_account, purchase
from tests.e2e.processes import start_server

ACCOUNTS = ("cold-a", "cold-b", "cold-c")
CLIENTS = 8
TRANSFERS_PER_CLIENT = 500


def _fund(address, certs_dir):
    alice = ledger_stub(address, certs_dir, "alice")
    for account_id in ACCOUNTS:
        open_account(alice, account_id)
        purchase(alice, account_id, 3, f"fund-{account_id}")


def _race(addresses, certs_dir, client_number, transfers, acknowledged, lock):
    """One client: propose random transfers between the shared accounts and have them approved."""
    address = addresses[client_number % len(addresses)]
    operator = ledger_stub(address, certs_dir, ("alice", "oscar")[client_number % 2])
    approver = ledger_stub(address, certs_dir, ("bob", "carol")[client_number % 2])
    rng = random.Random(client_number)
    for n in range(transfers):
        debit, credit = rng.sample(ACCOUNTS, 2)
        request_id = f"c{client_number}-t{n}"
        try:
            proposed = operator.ProposeTransfer(pb.ProposeTransferRequest(
                request_id=request_id, debit_account_id=debit, credit_account_id=credit,
                amount_sats=rng.randint(1, BTC)), timeout=30)
            approver.ApproveTransfer(pb.ApproveTransferRequest(request_id=f"{request_id}-ok",
                                                               transfer_id=proposed.transfer_id), timeout=30)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # overdraft refusals are expected
                raise
            continue
        with lock:
            acknowledged.append(proposed.transfer_id)


def _check_log(env, acknowledged, signing_key=None):
    ledger = ReserveLedger(env)
    try:
        public_key = None
        if signing_key is not None:
            public_key = raw_public_key(load_or_create_signing_key(signing_key).public_key())
        report = verify_ledger(ledger, public_key)  # dense leaves in log order, none skipped or doubled
        assert report.problems == [] and report.events == ledger.store.log_size()
        assert signing_key is None or report.tree_heads >= 1
        rebuilt = ledger.rebuild()  # the fold raises on any overdraft or debit/credit mismatch
        assert rebuilt.to_bytes() == ledger.live_state_bytes()
        approvals = collections.Counter(event["data"]["transfer_id"] for event in ledger.iter_events(0)
                                        if event["type"] == "TransferApproved")
        assert all(approvals[t] == 1 for t in acknowledged), "an acknowledged transfer is missing or doubled"
        custody = sum(rebuilt.balance_sats(a) for a in ACCOUNTS)
        assert custody == 3 * len(ACCOUNTS) * BTC
        assert all(rebuilt.available_sats(a) >= 0 for a in ACCOUNTS)
        assert ledger.store.log_size() == rebuilt.position + 1
    finally:
        ledger.close()


def _run_clients(addresses, certs_dir, transfers_per_client):
    acknowledged, lock, threads = [], threading.Lock(), []
    for number in range(CLIENTS):
        thread = threading.Thread(target=_race, args=(addresses, certs_dir, number, transfers_per_client,
                                                      acknowledged, lock))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return acknowledged


def test_eight_clients_racing_on_sqlite_conserve_totals_and_never_overdraw(tmp_path, certs_dir):
    """8 clients x 500 transfers against one server on SQLite."""
    process, address = start_server(certs_dir, data_dir=tmp_path / "data")
    try:
        _fund(address, certs_dir)
        acknowledged = _run_clients([address], certs_dir, TRANSFERS_PER_CLIENT)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert len(acknowledged) > CLIENTS * TRANSFERS_PER_CLIENT // 2
    _check_log(sqlite_env(tmp_path / "data"), acknowledged)


@pytest.mark.postgres
def test_eight_clients_on_two_server_processes_sharing_postgresql_stay_correct(certs_dir, tmp_path):
    """Two `serve` processes on one PostgreSQL database: optimistic concurrency keeps the ledger right."""
    from tests.conftest import POSTGRES_URL, _drop_schema, _postgres_schema
    schema = _postgres_schema()
    url = f"{POSTGRES_URL}?schema={schema}"
    signing_key = tmp_path / "signing.key"
    servers = [start_server(certs_dir, database_url=url, signing_key=signing_key) for _ in range(2)]
    try:
        _fund(servers[0][1], certs_dir)
        acknowledged = _run_clients([address for _, address in servers], certs_dir, TRANSFERS_PER_CLIENT)
        for process, _ in servers:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        assert len(acknowledged) > CLIENTS * TRANSFERS_PER_CLIENT // 2
        _check_log(postgres_env(url), acknowledged, signing_key)
    finally:
        for process, _ in servers:
            process.kill()
        _drop_schema(schema)


def _load_until_killed(address, certs_dir, acknowledged, stop):
    alice = ledger_stub(address, certs_dir, "alice")
    n = 0
    while not stop.is_set():
        request_id = f"{threading.get_ident()}-{n}"
        try:
            reply = alice.RecordPurchase(pb.RecordPurchaseRequest(
                request_id=request_id, account_id="cold-a", quantity_sats=1000, price_per_btc="60000",
                currency_code="USD", fiat_total="0.60", counterparty="V", trade_reference=request_id,
                trade_date="2026-11-02"), timeout=5)
            acknowledged.append((request_id, reply.result.position))
        except grpc.RpcError:
            return
        n += 1


@pytest.mark.parametrize("trial", range(3))
def test_kill_minus_nine_during_load_loses_no_acknowledged_command(tmp_path, certs_dir, trial):
    """Every acknowledged command survives kill -9; no partial command; projections equal a rebuild."""
    data_dir = tmp_path / "data"
    process, address = start_server(certs_dir, data_dir=data_dir)
    open_account(ledger_stub(address, certs_dir, "alice"), "cold-a")
    acknowledged, stop = [], threading.Event()
    threads = [threading.Thread(target=_load_until_killed, args=(address, certs_dir, acknowledged, stop))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.6 + 0.4 * trial)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    stop.set()
    for thread in threads:
        thread.join()
    assert acknowledged, "the load produced no acknowledged command before the kill"
    ledger = ReserveLedger(sqlite_env(data_dir))
    try:
        found = ledger.store.find_requests([r for r, _ in acknowledged])
        assert found == dict(acknowledged)
        rebuilt = ledger.rebuild()
        assert rebuilt.position + 1 == ledger.store.log_size()
        assert rebuilt.to_bytes() == ledger.live_state_bytes()
    finally:
        ledger.close()
    restarted, address = start_server(certs_dir, data_dir=data_dir)
    try:
        dave = ledger_stub(address, certs_dir, "dave")
        assert dave.GetBalances(pb.GetBalancesRequest(), timeout=10).position == rebuilt.position
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)
