"""Every RPC over real gRPC with real mTLS, on SQLite and PostgreSQL: happy paths, bad input, roles."""

import time

import grpc
import pytest
from google.protobuf import timestamp_pb2

from reserve_ledger.v1 import ledger_pb2 as pb
from tests.e2e.helpers import (BTC, balance_of, error_reason, funded, log_size, open_account, purchase, rpc_error,
                               violations)

OK_PURCHASE = dict(request_id="p-1", account_id="cold-a", quantity_sats=BTC, price_per_btc="60000.00",
                   currency_code="USD", fiat_total="60000.00", counterparty="Venue", trade_reference="T1",
                   trade_date="2026-11-02")
OK_TRANSFER = dict(request_id="t-1", debit_account_id="cold-a", credit_account_id="warm-b", amount_sats=BTC)
OK_CHANGE = dict(request_id="c-1", from_account_id="cold-a", to_account_id="warm-b", amount_sats=BTC,
                 reason="key ceremony", txid="ab" * 32, network_fee_sats=1000)


def test_purchases_transfers_and_custody_changes_move_balances_as_recorded(clients):
    """The happy path of every command, checked through the query RPCs."""
    open_account(clients.alice, "cold-a")
    opened = open_account(clients.erin, "warm-b", custodian="Central Bank", kind=pb.ACCOUNT_KIND_WARM)
    assert opened.account.account_id == "warm-b" and opened.result.event_type == "AccountOpened"
    small = purchase(clients.alice, "cold-a", 5, "buy-small")
    assert small.result.event_type == "ReservePurchased" and not small.pending_approval
    large = purchase(clients.alice, "cold-a", 20, "buy-large", price="55000.50", currency="EUR")
    assert large.pending_approval
    clients.bob.ApprovePurchase(pb.ApprovePurchaseRequest(request_id="ok-large", purchase_id=large.purchase_id))
    rejected = purchase(clients.alice, "cold-a", 11, "buy-rejected")
    clients.bob.RejectPurchase(pb.RejectPurchaseRequest(request_id="no", purchase_id=rejected.purchase_id,
                                                        reason="limit"))
    transfer = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(**OK_TRANSFER))
    assert balance_of(clients, "cold-a").held_sats == BTC
    clients.carol.ApproveTransfer(pb.ApproveTransferRequest(request_id="a-1", transfer_id=transfer.transfer_id))
    second = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(**{**OK_TRANSFER, "request_id": "t-2"}))
    clients.bob.RejectTransfer(pb.RejectTransferRequest(request_id="r-2", transfer_id=second.transfer_id))
    change = clients.alice.ProposeCustodyChange(pb.ProposeCustodyChangeRequest(
        **OK_CHANGE, new_quorum=pb.Quorum(required=3, total=5)))
    clients.bob.ApproveCustodyChange(pb.ApproveCustodyChangeRequest(request_id="a-c",
                                                                    custody_change_id=change.custody_change_id))
    other = clients.alice.ProposeCustodyChange(pb.ProposeCustodyChangeRequest(**{**OK_CHANGE, "request_id": "c-2"}))
    clients.carol.RejectCustodyChange(pb.RejectCustodyChangeRequest(request_id="r-c",
                                                                    custody_change_id=other.custody_change_id))
    cold, warm = balance_of(clients, "cold-a"), balance_of(clients, "warm-b")
    assert (cold.balance_sats, cold.held_sats) == (25 * BTC - 2 * BTC, 0)
    assert warm.balance_sats == 2 * BTC - 1000
    assert balance_of(clients, "nominal:network-fees").balance_sats == 1000
    assert balance_of(clients, "nominal:acquisitions").balance_sats == -25 * BTC
    holdings = clients.dave.GetHoldings(pb.GetHoldingsRequest())
    assert holdings.total_sats == 25 * BTC - 1000
    assert {c.custodian: c.balance_sats for c in holdings.custodians} == {
        "BNY Mellon": 23 * BTC, "Central Bank": 2 * BTC - 1000}
    accounts = clients.dave.ListAccounts(pb.ListAccountsRequest()).accounts
    assert {a.account_id: (a.quorum.required, a.quorum.total) for a in accounts}["warm-b"] == (3, 5)
    cost = clients.dave.GetCostBasis(pb.GetCostBasisRequest())
    usd = {c.currency_code: c for c in cost.currencies}["USD"]
    assert (usd.quantity_sats, usd.fiat_total, usd.average_price_per_btc) == (5 * BTC, "300000.00", "60000.00000000")
    assert sum(c.remaining_sats for c in cost.currencies) == 25 * BTC - 1000  # the fee left the reserve (FIFO)
    assert clients.dave.ListPending(pb.ListPendingRequest()).pending == []


def test_freeze_unfreeze_and_close_follow_the_account_life_cycle(clients):
    """Frozen accounts refuse movements; closing needs a zero balance."""
    funded(clients, "cold-a", 1)
    open_account(clients.alice, "warm-b")
    clients.erin.FreezeAccount(pb.FreezeAccountRequest(request_id="f", account_id="cold-a", reason="review"))
    error = rpc_error(clients.alice.ProposeTransfer, pb.ProposeTransferRequest(**OK_TRANSFER))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "ACCOUNT_FROZEN"
    clients.erin.UnfreezeAccount(pb.UnfreezeAccountRequest(request_id="u", account_id="cold-a"))
    error = rpc_error(clients.erin.CloseAccount, pb.CloseAccountRequest(request_id="c", account_id="cold-a"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "ACCOUNT_NOT_EMPTY"
    clients.erin.CloseAccount(pb.CloseAccountRequest(request_id="c2", account_id="warm-b"))
    error = rpc_error(clients.alice.ProposeTransfer, pb.ProposeTransferRequest(**OK_TRANSFER))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "ACCOUNT_CLOSED"


def test_an_expired_transfer_releases_its_hold_and_cannot_be_approved(clients):
    """Expiry voids the proposal exactly once; approval after expiry is refused."""
    funded(clients, "cold-a", 2)
    open_account(clients.alice, "warm-b")
    expire_at_s = time.time() + 3  # whole seconds would leave as little as 0 s on a loaded machine
    soon = timestamp_pb2.Timestamp(seconds=int(expire_at_s), nanos=int(expire_at_s % 1 * 1e9))
    transfer = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(**OK_TRANSFER, expire_time=soon))
    error = rpc_error(clients.alice.ExpireTransfer, pb.ExpireTransferRequest(request_id="e0",
                                                                             transfer_id=transfer.transfer_id))
    assert error_reason(error) == "PENDING_NOT_YET_EXPIRED"
    time.sleep(max(0.0, expire_at_s - time.time()) + 0.2)
    error = rpc_error(clients.bob.ApproveTransfer, pb.ApproveTransferRequest(request_id="late",
                                                                             transfer_id=transfer.transfer_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "PENDING_EXPIRED"
    clients.alice.ExpireTransfer(pb.ExpireTransferRequest(request_id="e1", transfer_id=transfer.transfer_id))
    assert balance_of(clients, "cold-a").held_sats == 0
    error = rpc_error(clients.alice.ExpireTransfer, pb.ExpireTransferRequest(request_id="e2",
                                                                             transfer_id=transfer.transfer_id))
    assert error_reason(error) == "PENDING_ALREADY_RESOLVED"


BAD_INPUTS = [
    # (case, method, request, code, field)
    ("zero amount", "ProposeTransfer", pb.ProposeTransferRequest(**{**OK_TRANSFER, "amount_sats": 0}),
     grpc.StatusCode.INVALID_ARGUMENT, "amount_sats"),
    ("negative amount", "ProposeTransfer", pb.ProposeTransferRequest(**{**OK_TRANSFER, "amount_sats": -5}),
     grpc.StatusCode.INVALID_ARGUMENT, "amount_sats"),
    ("overflowing amount", "ProposeTransfer", pb.ProposeTransferRequest(**{**OK_TRANSFER, "amount_sats": 2**62}),
     grpc.StatusCode.INVALID_ARGUMENT, "amount_sats"),
    ("same account both sides", "ProposeTransfer",
     pb.ProposeTransferRequest(**{**OK_TRANSFER, "credit_account_id": "cold-a"}),
     grpc.StatusCode.INVALID_ARGUMENT, "credit_account_id"),
    ("unknown account", "ProposeTransfer", pb.ProposeTransferRequest(**{**OK_TRANSFER, "debit_account_id": "nope"}),
     grpc.StatusCode.NOT_FOUND, None),
    ("missing request id", "ProposeTransfer", pb.ProposeTransferRequest(**{**OK_TRANSFER, "request_id": ""}),
     grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ("oversize memo", "ProposeTransfer", pb.ProposeTransferRequest(**OK_TRANSFER, memo="x" * 513),
     grpc.StatusCode.INVALID_ARGUMENT, "memo"),
    ("overdraft", "ProposeTransfer", pb.ProposeTransferRequest(**{**OK_TRANSFER, "amount_sats": 6 * BTC}),
     grpc.StatusCode.FAILED_PRECONDITION, None),
    ("malformed price", "RecordPurchase", pb.RecordPurchaseRequest(**{**OK_PURCHASE, "price_per_btc": "6e4"}),
     grpc.StatusCode.INVALID_ARGUMENT, "price_per_btc"),
    ("negative price", "RecordPurchase", pb.RecordPurchaseRequest(**{**OK_PURCHASE, "price_per_btc": "-1"}),
     grpc.StatusCode.INVALID_ARGUMENT, "price_per_btc"),
    ("unknown currency", "RecordPurchase", pb.RecordPurchaseRequest(**{**OK_PURCHASE, "currency_code": "usd"}),
     grpc.StatusCode.INVALID_ARGUMENT, "currency_code"),
    ("fiat total mismatch", "RecordPurchase", pb.RecordPurchaseRequest(**{**OK_PURCHASE, "fiat_total": "600.00"}),
     grpc.StatusCode.INVALID_ARGUMENT, "fiat_total"),
    ("bad trade date", "RecordPurchase", pb.RecordPurchaseRequest(**{**OK_PURCHASE, "trade_date": "2026-13-01"}),
     grpc.StatusCode.INVALID_ARGUMENT, "trade_date"),
    ("zero quantity", "RecordPurchase", pb.RecordPurchaseRequest(**{**OK_PURCHASE, "quantity_sats": 0}),
     grpc.StatusCode.INVALID_ARGUMENT, "quantity_sats"),
    ("oversize counterparty", "RecordPurchase",
     pb.RecordPurchaseRequest(**{**OK_PURCHASE, "counterparty": "v" * 129}),
     grpc.StatusCode.INVALID_ARGUMENT, "counterparty"),
    ("purchase into nominal account", "RecordPurchase",
     pb.RecordPurchaseRequest(**{**OK_PURCHASE, "account_id": "nominal:disposals"}),
     grpc.StatusCode.FAILED_PRECONDITION, None),
    ("bad account id", "OpenAccount", pb.OpenAccountRequest(request_id="o", account_id="Bad Id!", kind=1,
                                                            custodian="C", wallet_label="W",
                                                            quorum=pb.Quorum(required=1, total=1)),
     grpc.StatusCode.INVALID_ARGUMENT, "account_id"),
    ("quorum m > n", "OpenAccount", pb.OpenAccountRequest(request_id="o", account_id="new-acct", kind=1,
                                                          custodian="C", wallet_label="W",
                                                          quorum=pb.Quorum(required=4, total=3)),
     grpc.StatusCode.INVALID_ARGUMENT, "quorum.required"),
    ("account exists", "OpenAccount", pb.OpenAccountRequest(request_id="o", account_id="cold-a", kind=1,
                                                            custodian="C", wallet_label="W",
                                                            quorum=pb.Quorum(required=1, total=1)),
     grpc.StatusCode.ALREADY_EXISTS, None),
    ("custody change bad txid", "ProposeCustodyChange",
     pb.ProposeCustodyChangeRequest(**{**OK_CHANGE, "txid": "xyz"}), grpc.StatusCode.INVALID_ARGUMENT, "txid"),
    ("custody change fee above amount", "ProposeCustodyChange",
     pb.ProposeCustodyChangeRequest(**{**OK_CHANGE, "network_fee_sats": 2 * BTC}),
     grpc.StatusCode.INVALID_ARGUMENT, "network_fee_sats"),
    ("unknown transfer", "ApproveTransfer", pb.ApproveTransferRequest(request_id="a", transfer_id="tr-999"),
     grpc.StatusCode.NOT_FOUND, None),
    ("malformed transfer id", "ApproveTransfer", pb.ApproveTransferRequest(request_id="a", transfer_id="x"),
     grpc.StatusCode.INVALID_ARGUMENT, "transfer_id"),
    ("negative page size", "ListEvents", pb.ListEventsRequest(page_size=-1),
     grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
    ("forged page token", "ListAccounts", pb.ListAccountsRequest(page_token="bm9wZQ=="),
     grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
    ("as-of beyond the log", "GetBalances", pb.GetBalancesRequest(as_of=pb.AsOf(position=10**6)),
     grpc.StatusCode.INVALID_ARGUMENT, "as_of.position"),
]
CALLER_FOR = {"ProposeTransfer": "alice", "RecordPurchase": "alice", "OpenAccount": "alice",
              "ProposeCustodyChange": "alice", "ApproveTransfer": "bob", "ListEvents": "dave",
              "ListAccounts": "dave", "GetBalances": "dave"}


@pytest.mark.parametrize("case,method,request_message,code,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_with_its_status_and_field_and_records_nothing(clients, case, method, request_message,
                                                                         code, field):
    """Each malformed or forbidden request gets the documented code and field violation; nothing is persisted."""
    funded(clients, "cold-a", 5)
    open_account(clients.alice, "warm-b")
    size_before = log_size(clients)
    error = rpc_error(getattr(getattr(clients, CALLER_FOR[method]), method), request_message)
    assert error.code() == code, error.details()
    if field:
        assert field in violations(error), violations(error)
    assert error_reason(error)
    assert log_size(clients) == size_before


WRONG_ROLES = [
    ("ProposeTransfer", "bob", pb.ProposeTransferRequest(**OK_TRANSFER)),
    ("ProposeTransfer", "dave", pb.ProposeTransferRequest(**OK_TRANSFER)),
    ("ApproveTransfer", "alice", pb.ApproveTransferRequest(request_id="x", transfer_id="tr-1")),
    ("ApprovePurchase", "erin", pb.ApprovePurchaseRequest(request_id="x", purchase_id="pu-1")),
    ("RecordPurchase", "dave", pb.RecordPurchaseRequest(**OK_PURCHASE)),
    ("FreezeAccount", "alice", pb.FreezeAccountRequest(request_id="x", account_id="cold-a")),
    ("CloseAccount", "bob", pb.CloseAccountRequest(request_id="x", account_id="cold-a")),
    ("OpenAccount", "dave", pb.OpenAccountRequest(request_id="x", account_id="zz-top")),
    ("ProposeCustodyChange", "carol", pb.ProposeCustodyChangeRequest(**OK_CHANGE)),
    ("StreamEvents", "alice", pb.StreamEventsRequest()),
]


@pytest.mark.parametrize("method,who,request_message", WRONG_ROLES, ids=[f"{m}-as-{w}" for m, w, _ in WRONG_ROLES])
def test_a_role_not_in_the_method_table_is_denied_and_records_nothing(clients, method, who, request_message):
    """The method -> roles table is enforced for every RPC; denial changes nothing."""
    funded(clients, "cold-a", 5)
    open_account(clients.alice, "warm-b")
    size_before = log_size(clients)
    call = getattr(getattr(clients, who), method)
    if method == "StreamEvents":
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(call(request_message, timeout=5)))
        error = raised.value
    else:
        error = rpc_error(call, request_message)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert log_size(clients) == size_before


def test_approval_by_the_proposer_is_refused_even_with_an_approver_certificate(clients):
    """Four-eyes compares identities: frank proposing as operator cannot approve as approver."""
    funded(clients, "cold-a", 2)
    open_account(clients.alice, "warm-b")
    transfer = clients.frank_operator.ProposeTransfer(pb.ProposeTransferRequest(**OK_TRANSFER))
    size_before = log_size(clients)
    error = rpc_error(clients.frank_approver.ApproveTransfer,
                      pb.ApproveTransferRequest(request_id="self", transfer_id=transfer.transfer_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "APPROVER_MUST_DIFFER_FROM_PROPOSER"
    assert log_size(clients) == size_before
    clients.bob.ApproveTransfer(pb.ApproveTransferRequest(request_id="other", transfer_id=transfer.transfer_id))
    assert balance_of(clients, "warm-b").balance_sats == BTC


def test_a_purchase_above_the_threshold_needs_a_different_approver(clients):
    """Large purchases wait; the proposer's own approval is refused; nothing is credited until approved."""
    open_account(clients.alice, "cold-a")
    reply = purchase(clients.frank_operator, "cold-a", 11, "big")
    assert reply.pending_approval and balance_of(clients, "cold-a").balance_sats == 0
    error = rpc_error(clients.frank_approver.ApprovePurchase,
                      pb.ApprovePurchaseRequest(request_id="self", purchase_id=reply.purchase_id))
    assert error_reason(error) == "APPROVER_MUST_DIFFER_FROM_PROPOSER"
    clients.carol.ApprovePurchase(pb.ApprovePurchaseRequest(request_id="ok", purchase_id=reply.purchase_id))
    assert balance_of(clients, "cold-a").balance_sats == 11 * BTC


def test_idempotent_retries_replay_and_a_reused_request_id_names_the_difference(clients):
    """Same request_id + payload -> original result, no new event; different payload -> ALREADY_EXISTS."""
    funded(clients, "cold-a", 5)
    open_account(clients.alice, "warm-b")
    first = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(**OK_TRANSFER))
    size = log_size(clients)
    again = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(**OK_TRANSFER))
    assert again.result.replayed and again.result.position == first.result.position
    assert again.transfer_id == first.transfer_id and log_size(clients) == size
    error = rpc_error(clients.alice.ProposeTransfer, pb.ProposeTransferRequest(**{**OK_TRANSFER, "amount_sats": 7}))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "amount_sats" in error.details()
    error = rpc_error(clients.oscar.ProposeTransfer, pb.ProposeTransferRequest(**OK_TRANSFER))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "caller" in error.details()
    assert log_size(clients) == size


def test_a_pending_transfer_resolves_exactly_once(clients):
    """A second approval, or a rejection after approval, is refused and records nothing."""
    funded(clients, "cold-a", 5)
    open_account(clients.alice, "warm-b")
    transfer = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(**OK_TRANSFER))
    clients.bob.ApproveTransfer(pb.ApproveTransferRequest(request_id="a1", transfer_id=transfer.transfer_id))
    size = log_size(clients)
    for call, message in ((clients.carol.ApproveTransfer, pb.ApproveTransferRequest(
            request_id="a2", transfer_id=transfer.transfer_id)), (clients.carol.RejectTransfer, pb.RejectTransferRequest(
            request_id="r2", transfer_id=transfer.transfer_id))):
        error = rpc_error(call, message)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "PENDING_ALREADY_RESOLVED"
    assert log_size(clients) == size
    assert balance_of(clients, "warm-b").balance_sats == BTC


def test_history_pages_and_the_follow_stream_deliver_every_event_in_order(clients):
    """ListEvents pages cover the log once; StreamEvents sends batches then follows new events."""
    funded(clients, "cold-a", 5)
    for i in range(7):
        open_account(clients.alice, f"acct-{i}")
    seen, token = [], ""
    while True:
        page = clients.dave.ListEvents(pb.ListEventsRequest(page_size=3, page_token=token))
        seen.extend(e.position for e in page.events)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(9))
    stream = clients.dave.StreamEvents(pb.StreamEventsRequest(start_position=2, batch_size=4), timeout=20)
    batches = [next(stream), next(stream)]
    assert [e.position for b in batches for e in b.events] == list(range(2, 9))
    assert all(len(e.canonical_bytes) > 0 and len(e.leaf_hash) == 32 for b in batches for e in b.events)
    open_account(clients.alice, "late-acct")
    follow = next(stream)
    while not follow.events:  # heartbeats may come first
        follow = next(stream)
    assert follow.events[0].position == 9 and follow.events[0].actor == "alice"
    stream.cancel()
