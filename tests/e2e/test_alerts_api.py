"""AlertService through the real server with mTLS: who may read alerts, and malformed requests answered with
INVALID_ARGUMENT and field violations (the monitor itself runs only with --chain: tests/bitcoin/test_monitor*)."""

import grpc
import pytest

from reserve_ledger.v1 import alerts_pb2 as apb
from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.client import alert_stub
from tests.e2e.helpers import error_reason, open_account, rpc_error, violations


def _alerts(clients, certs_dir, identity: str):
    return alert_stub(clients.address, certs_dir, identity)


def test_auditors_and_admins_read_alerts_and_other_roles_are_refused(clients, certs_dir):
    """ListAlerts answers dave (auditor) and erin (admin), empty without a chain; alice (operator) and bob
    (approver) get PERMISSION_DENIED on both methods."""
    for identity in ("dave", "erin"):
        answer = _alerts(clients, certs_dir, identity).ListAlerts(apb.ListAlertsRequest(), timeout=10)
        assert (list(answer.alerts), answer.open_total, answer.next_page_token) == ([], 0, "")
    for identity in ("alice", "bob"):
        stub = _alerts(clients, certs_dir, identity)
        assert rpc_error(stub.ListAlerts, apb.ListAlertsRequest()).code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stub.StreamAlerts(apb.StreamAlertsRequest(), timeout=10)))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_alert_requests_name_the_field(clients, certs_dir):
    dave = _alerts(clients, certs_dir, "dave")
    assert violations(rpc_error(dave.ListAlerts, apb.ListAlertsRequest(page_size=-1))) == {
        "page_size": "PAGE_SIZE_NEGATIVE"}
    assert "page_token" in violations(rpc_error(dave.ListAlerts, apb.ListAlertsRequest(page_token="bogus")))
    assert violations(rpc_error(dave.ListAlerts, apb.ListAlertsRequest(status=99))) == {
        "status": "ALERT_STATUS_UNKNOWN"}
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(dave.StreamAlerts(apb.StreamAlertsRequest(start_position=-1), timeout=10)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(refused.value) == {"start_position": "POSITION_INVALID"}


def test_a_purchase_txid_must_be_a_txid_and_nothing_is_recorded_otherwise(clients):
    """RecordPurchaseRequest.txid: 64 lower-case hex characters, or unset."""
    open_account(clients.alice, "cold-a")
    request = pb.RecordPurchaseRequest(request_id="buy", account_id="cold-a", quantity_sats=10**8,
                                       price_per_btc="50000", currency_code="USD", fiat_total="50000",
                                       counterparty="V", trade_reference="T", trade_date="2026-11-02", txid="AB" * 32)
    error = rpc_error(clients.alice.RecordPurchase, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(error) == {"txid": "TXID_MALFORMED"}
    assert error_reason(error)
    request.txid = "ab" * 32
    assert clients.alice.RecordPurchase(request, timeout=10).result.position == 1


def test_a_correction_of_a_position_that_is_no_alert_is_an_ordinary_correction(clients, certs_dir):
    """corrects_position keeps its old meaning for every position that is not a reserve alert."""
    open_account(clients.alice, "cold-a")
    reply = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="fix", debit_account_id="nominal:adjustments", credit_account_id="cold-a", amount_sats=1,
        corrects_position=0), timeout=10)
    clients.bob.ApproveTransfer(pb.ApproveTransferRequest(request_id="ok", transfer_id=reply.transfer_id), timeout=10)
    assert _alerts(clients, certs_dir, "dave").ListAlerts(apb.ListAlertsRequest(), timeout=10).alerts == []
