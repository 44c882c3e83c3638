"""The API's own mapping of the boundary cases the domain decides, over real gRPC with real mTLS: the same
violations and reasons, never UNKNOWN; and after the supply cap refused a purchase every query still answers."""

import grpc
from google.protobuf import timestamp_pb2

from reserve_ledger.v1 import ledger_pb2 as pb
from tests.e2e.helpers import BTC, error_reason, funded, log_size, open_account, purchase, rpc_error, violations

TRANSFER = dict(request_id="t-1", debit_account_id="cold-a", credit_account_id="warm-b", amount_sats=BTC)


def test_timestamps_outside_the_protobuf_ranges_and_the_epoch_are_refused_by_name(clients):
    funded(clients)
    open_account(clients.alice, "warm-b")
    size = log_size(clients)
    cases = {"EXPIRE_TIME_INVALID": timestamp_pb2.Timestamp(seconds=2_000_000_000, nanos=2_000_000_000),
             "EXPIRE_TIME_INVALID ": timestamp_pb2.Timestamp(seconds=2_000_000_000, nanos=-5),
             "EXPIRE_TIME_INVALID  ": timestamp_pb2.Timestamp(seconds=253_402_300_800),
             "EXPIRE_TIME_OUT_OF_RANGE": timestamp_pb2.Timestamp(seconds=0, nanos=0)}
    for rule, stamp in cases.items():
        error = rpc_error(clients.alice.ProposeTransfer, pb.ProposeTransferRequest(**TRANSFER, expire_time=stamp))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(error) == {"expire_time": rule.strip()}
    bad_as_of = pb.GetBalancesRequest(as_of=pb.AsOf(time=timestamp_pb2.Timestamp(seconds=1, nanos=10**9)))
    error = rpc_error(clients.dave.GetBalances, bad_as_of)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(error) == {"as_of.time": "TIMESTAMP_INVALID"}
    assert log_size(clients) == size


def test_corrects_position_zero_is_kept_and_a_trailing_newline_is_malformed(clients):
    funded(clients)
    fix = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="fix", debit_account_id="cold-a", credit_account_id="nominal:adjustments", amount_sats=1,
        corrects_position=0), timeout=10)
    events = clients.dave.ListEvents(pb.ListEventsRequest(start_position=fix.result.position, page_size=1))
    assert '"corrects_position":0' in events.events[0].payload_json
    error = rpc_error(clients.alice.RecordPurchase, pb.RecordPurchaseRequest(
        request_id="p", account_id="cold-a\n", quantity_sats=BTC, price_per_btc="60000.00\n", currency_code="USD",
        fiat_total="60000.00", counterparty="V", trade_reference="T", trade_date="2024-W01-1"))
    assert violations(error) == {"account_id": "ACCOUNT_ID_MALFORMED", "price_per_btc": "DECIMAL_MALFORMED",
                                 "trade_date": "DATE_MALFORMED"}


def test_expire_transfer_refuses_a_purchase_id_as_not_found_naming_transfer_id(clients):
    funded(clients)
    large = purchase(clients.alice, "cold-a", 20, "buy-large")
    assert large.pending_approval
    error = rpc_error(clients.alice.ExpireTransfer, pb.ExpireTransferRequest(request_id="x",
                                                                             transfer_id=large.purchase_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "transfer" in error.details()
    malformed = rpc_error(clients.alice.ExpireTransfer, pb.ExpireTransferRequest(request_id="y", transfer_id="tr-"))
    assert violations(malformed) == {"transfer_id": "PENDING_ID_MALFORMED"}


def test_the_supply_cap_refuses_a_second_21_million_btc_and_queries_keep_answering(clients):
    open_account(clients.alice, "cold-a")
    whole_supply = 21_000_000
    first = purchase(clients.alice, "cold-a", whole_supply, "buy-1", price="1")
    clients.bob.ApprovePurchase(pb.ApprovePurchaseRequest(request_id="ok-1", purchase_id=first.purchase_id))
    error = rpc_error(lambda request, timeout: purchase(clients.alice, "cold-a", whole_supply, "buy-2", price="1"),
                      None)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "SUPPLY_CAP_EXCEEDED"
    assert "cold-a" in error.details()
    assert clients.dave.GetHoldings(pb.GetHoldingsRequest(), timeout=10).total_sats == whole_supply * BTC
    assert clients.dave.GetCostBasis(pb.GetCostBasisRequest(), timeout=10).currencies[0].quantity_sats == \
        whole_supply * BTC
