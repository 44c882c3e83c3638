import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.limits import SATS_PER_BTC as BTC
from reserve_ledger.v1 import ledger_pb2 as pb


def rpc_error(call, request):
    """Call and return the grpc.RpcError it raises (fails the test if it does not)."""
    try:
        call(request, timeout=10)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{request.__class__.__name__} unexpectedly succeeded")


def violations(error) -> dict[str, str]:
    """field -> reason of every google.rpc.BadRequest field violation in the error's details."""
    status = rpc_status.from_call(error)
    found = {}
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.reason for v in bad.field_violations})
    return found


def error_reason(error) -> str:
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def log_size(clients) -> int:
    return clients.dave.GetBalances(pb.GetBalancesRequest(), timeout=10).position + 1


def open_account(stub, account_id, custodian="BNY Mellon", kind=pb.ACCOUNT_KIND_COLD, request_id=None):
    return stub.OpenAccount(pb.OpenAccountRequest(
        request_id=request_id or f"open-{account_id}", account_id=account_id, kind=kind, custodian=custodian,
        wallet_label=f"{account_id} wallet", quorum=pb.Quorum(required=2, total=3)), timeout=10)


def purchase(stub, account_id, btc, request_id, price="60000.00", currency="USD"):
    from decimal import Decimal
    total = Decimal(price) * btc
    return stub.RecordPurchase(pb.RecordPurchaseRequest(
        request_id=request_id, account_id=account_id, quantity_sats=btc * BTC, price_per_btc=price,
        currency_code=currency, fiat_total=str(total), counterparty="Coinbase Prime",
        trade_reference=f"T-{request_id}", trade_date="2026-11-02"), timeout=10)


def funded(clients, account_id="cold-a", btc=5):
    open_account(clients.alice, account_id)
    purchase(clients.alice, account_id, btc, f"buy-{account_id}")


def balance_of(clients, account_id) -> pb.Balance:
    for b in clients.dave.GetBalances(pb.GetBalancesRequest(), timeout=10).balances:
        if b.account_id == account_id:
            return b
    raise AssertionError(f"no balance for {account_id}")
