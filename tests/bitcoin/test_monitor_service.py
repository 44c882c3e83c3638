"""The reserves monitor inside a real service (mTLS, SQLite, the embedded regtest chain): the supervised worker
raises the alert for an unrecorded movement before the next block, an auditor follows it on StreamAlerts and
pages it with ListAlerts, an operator may not read alerts, and a correction approved by a second identity
closes both sides of the movement."""

import queue
import threading
import time

import grpc
import pytest

from ledger.anchor_policy import AnchorPolicy
from ledger.limits import SATS_PER_BTC as BTC
from reserve_ledger.v1 import alerts_pb2 as apb
from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.client import alert_stub, ledger_stub
from services.bitcoin.regtest.chain import RegtestChain
from services.compose import ServerConfig, build_server
from tests.bitcoin.monitor_helpers import FEE_SATS, address, script_pubkey, spend

WAIT_S = 60.0   # generous: the machine is shared


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


@pytest.fixture
def service(certs_dir, tmp_path, chain):
    server = build_server(ServerConfig(
        create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=str(tmp_path / "data"),
        certs_dir=str(certs_dir), signing_key_path=str(tmp_path / "signing.key"), chain=f"regtest:{chain.directory}",
        anchor_policy=AnchorPolicy(interval_s=3600, block_poll_interval_s=3600), monitor_interval_s=0.2)).start()
    yield server
    server.stop(grace_s=1)


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(0.05)


def _follow(stub) -> tuple[queue.Queue, grpc.Future]:
    """dave's StreamAlerts from position 0, its alert events put on a queue by a reader thread."""
    events: queue.Queue = queue.Queue()
    call = stub.StreamAlerts(apb.StreamAlertsRequest(start_position=0))

    def read():
        try:
            for response in call:
                for event in response.events:
                    events.put(event)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    threading.Thread(target=read, daemon=True).start()
    return events, call


def _next_events(events: queue.Queue, count: int) -> list:
    return [events.get(timeout=WAIT_S) for _ in range(count)]


def test_an_unrecorded_movement_reaches_the_auditor_before_the_next_block(service, chain, certs_dir):
    address_of_server = f"127.0.0.1:{service.port}"
    alice, bob = (ledger_stub(address_of_server, certs_dir, name) for name in ("alice", "bob"))
    dave = alert_stub(address_of_server, certs_dir, "dave")
    for n, account_id in ((1, "cold-1"), (2, "warm-1")):
        alice.OpenAccount(pb.OpenAccountRequest(request_id=f"open-{n}", account_id=account_id,
                                                kind=pb.ACCOUNT_KIND_COLD, custodian="C", wallet_label="w",
                                                quorum=pb.Quorum(required=1, total=1), addresses=[address(n)]),
                          timeout=10)
    alice.RecordPurchase(pb.RecordPurchaseRequest(
        request_id="buy", account_id="cold-1", quantity_sats=4 * BTC, price_per_btc="50000", currency_code="USD",
        fiat_total="200000", counterparty="V", trade_reference="T", trade_date="2026-11-02"), timeout=10)
    chain.send(script_pubkey(1), 4 * BTC)
    chain.mine(1)
    _wait_until(lambda: service.monitor.processed_tip == (chain.tip_height(), chain.block_hash(chain.tip_height())),
                "the monitor to read the funding block")
    events, call = _follow(dave)
    try:
        coin = chain.utxos(script_pubkey(1))[0]
        txid = chain.broadcast(spend(chain, 1, coin, [(BTC // 2, script_pubkey(2)),
                                                      (coin.value_sats - BTC // 2 - FEE_SATS, script_pubkey(1))]))
        (block_hash,) = chain.mine(1)
        mined_s = time.perf_counter()
        raised = _next_events(events, 2)
        latency_ms = (time.perf_counter() - mined_s) * 1000
        assert chain.tip_height() == raised[0].alert.block_height   # no later block was needed
        assert {(e.event_type, e.alert.account_id, e.alert.block_hash, tuple(e.alert.txids)) for e in raised} == {
            ("ReserveDiscrepancyObserved", "cold-1", block_hash, (txid,)),
            ("ReserveDiscrepancyObserved", "warm-1", block_hash, (txid,))}
        print(f"\nblock mined -> alert on dave's StreamAlerts: {latency_ms:.0f} ms (monitor interval 0.2 s)")

        listed = dave.ListAlerts(apb.ListAlertsRequest(), timeout=10)
        assert listed.open_total == 2 and [a.status for a in listed.alerts] == [apb.ALERT_STATUS_OPEN] * 2
        first_page = dave.ListAlerts(apb.ListAlertsRequest(page_size=1), timeout=10)
        second_page = dave.ListAlerts(apb.ListAlertsRequest(page_size=1, page_token=first_page.next_page_token),
                                      timeout=10)
        assert [a.discrepancy_id for a in (*first_page.alerts, *second_page.alerts)] == \
            [a.discrepancy_id for a in listed.alerts] and not second_page.next_page_token
        with pytest.raises(grpc.RpcError) as refused:
            alert_stub(address_of_server, certs_dir, "alice").ListAlerts(apb.ListAlertsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        assert service._state_for_metrics()["reserve_alerts_open"] == 2
        cold = next(a for a in listed.alerts if a.account_id == "cold-1")
        proposal = alice.ProposeTransfer(pb.ProposeTransferRequest(
            request_id="fix", debit_account_id="cold-1", credit_account_id="warm-1", amount_sats=BTC // 2,
            memo="the unrecorded move of block " + block_hash[:12], corrects_position=cold.position), timeout=10)
        assert dave.ListAlerts(apb.ListAlertsRequest(), timeout=10).open_total == 2   # a proposal closes nothing
        bob.ApproveTransfer(pb.ApproveTransferRequest(request_id="ok", transfer_id=proposal.transfer_id), timeout=10)
        (closing,) = _next_events(events, 1)
        assert closing.event_type == "TransferApproved"
        assert sorted(closing.discrepancy_ids) == sorted(a.discrepancy_id for a in listed.alerts)
        closed = dave.ListAlerts(apb.ListAlertsRequest(status=apb.ALERT_STATUS_CLOSED), timeout=10)
        assert len(closed.alerts) == 2 and closed.open_total == 0
        assert service._state_for_metrics()["reserve_alerts_open"] == 0
        assert service.metrics.registry.get_sample_value(
            "reserve_ledger_reserve_alert_events_total", {"event": "ReserveDiscrepancyObserved"}) == 2
    finally:
        call.cancel()


def test_an_auditor_sees_the_alert_follow_the_best_chain(service, chain, certs_dir):
    """Through StreamAlerts: raised in block A; A reorged out (the alert is marked so); the movement mined again in
    block B: raised again there. ListAlerts then shows one reorged-out and one open alert for the account."""
    address_of_server = f"127.0.0.1:{service.port}"
    alice = ledger_stub(address_of_server, certs_dir, "alice")
    dave = alert_stub(address_of_server, certs_dir, "dave")
    alice.OpenAccount(pb.OpenAccountRequest(request_id="open", account_id="hot-1", kind=pb.ACCOUNT_KIND_HOT,
                                            custodian="C", wallet_label="w", quorum=pb.Quorum(required=1, total=1),
                                            addresses=[address(3)]), timeout=10)
    events, call = _follow(dave)
    try:
        _wait_until(lambda: service.monitor.is_watching(script_pubkey(3)), "the monitor to watch hot-1")
        chain.send(script_pubkey(3), BTC)
        (first_block,) = chain.mine(1)
        (raised,) = _next_events(events, 1)
        assert (raised.event_type, raised.alert.block_hash) == ("ReserveDiscrepancyObserved", first_block)
        chain.reorg(1)                                     # the payment goes back to the mempool
        (reorged,) = _next_events(events, 1)
        assert (reorged.event_type, list(reorged.discrepancy_ids)) == ("ReserveDiscrepancyReorgedOut",
                                                                      [raised.alert.discrepancy_id])
        (second_block,) = chain.mine(1)
        (again,) = _next_events(events, 1)
        assert (again.event_type, again.alert.block_hash, list(again.alert.txids)) == (
            "ReserveDiscrepancyObserved", second_block, list(raised.alert.txids))
        statuses = [(a.block_hash, a.status) for a in dave.ListAlerts(apb.ListAlertsRequest(), timeout=10).alerts]
        assert statuses == [(first_block, apb.ALERT_STATUS_REORGED_OUT), (second_block, apb.ALERT_STATUS_OPEN)]
    finally:
        call.cancel()
