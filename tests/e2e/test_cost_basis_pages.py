"""GetCostBasis pages through the open lots over real gRPC with real mTLS: the pages join into exactly the open
lots at the first page's position, even when the log grows between pages, with the same exact totals on every
page; a bad page size or page token is refused by name."""

from decimal import Decimal, localcontext

import grpc
import pytest

from ledger import limits, lots
from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.paging import token_of
from services.compose import ServerConfig, build_server
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, rpc_error, violations

CHUNK_LOTS = 4   # small chunks, so that pages start inside, at and across chunk boundaries


@pytest.fixture
def clients(storage, certs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(lots, "LOT_CHUNK_LOTS", CHUNK_LOTS)
    data_dir, database_url = storage
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir,
                                       database_url=database_url, certs_dir=str(certs_dir),
                                       signing_key_path=str(tmp_path / "signing.key"))).start()
    try:
        yield Clients(f"127.0.0.1:{server.port}", certs_dir)
    finally:
        server.stop(grace_s=1)


class Reserve:
    """Purchases and spends through the API, and the FIFO lots a naive model expects."""

    def __init__(self, clients: Clients):
        self.clients, self.bought, self.spent_sats = clients, [], 0
        open_account(clients.alice, "cold-a")

    def buy(self, count: int) -> None:
        for _ in range(count):
            n = len(self.bought)
            quantity_sats, price, currency = 1000 * (n + 1), f"{60000 + n}.25", ("USD", "EUR")[n % 2]
            reply = self.clients.alice.RecordPurchase(pb.RecordPurchaseRequest(
                request_id=f"buy-{n}", account_id="cold-a", quantity_sats=quantity_sats, price_per_btc=price,
                currency_code=currency, fiat_total=str((Decimal(price) * quantity_sats / limits.SATS_PER_BTC).quantize(
                    Decimal("0.01"))),
                counterparty="Coinbase Prime", trade_reference=f"T-{n}", trade_date="2026-11-02"), timeout=30)
            self.bought.append((reply.purchase_id, currency, price, quantity_sats))

    def spend(self, amount_sats: int) -> None:
        reply = self.clients.alice.ProposeTransfer(pb.ProposeTransferRequest(
            request_id=f"spend-{self.spent_sats}", debit_account_id="cold-a", credit_account_id="nominal:adjustments",
            amount_sats=amount_sats, corrects_position=0), timeout=30)
        self.clients.bob.ApproveTransfer(pb.ApproveTransferRequest(
            request_id=f"ok-{self.spent_sats}", transfer_id=reply.transfer_id), timeout=30)
        self.spent_sats += amount_sats

    def open_lots(self) -> list[tuple[str, int]]:
        """(purchase id, remaining sats) of each lot not fully consumed, oldest first."""
        left, expected = self.spent_sats, []
        for purchase_id, _, _, quantity_sats in self.bought:
            taken_sats = min(left, quantity_sats)
            left -= taken_sats
            if taken_sats < quantity_sats:
                expected.append((purchase_id, quantity_sats - taken_sats))
        return expected

    def remaining_cost(self) -> dict[str, str]:
        with localcontext() as ctx:
            ctx.prec = 60
            left, cost = self.spent_sats, {"USD": Decimal(0), "EUR": Decimal(0)}
            for _, currency, price, quantity_sats in self.bought:
                taken_sats = min(left, quantity_sats)
                left -= taken_sats
                cost[currency] += Decimal(price) * (quantity_sats - taken_sats) / limits.SATS_PER_BTC
            return {code: format(total.quantize(Decimal("0.00000001")), "f") for code, total in cost.items()}


def listing(stub, page_size: int, first: pb.GetCostBasisResponse, between=lambda: None):
    """Every page after `first`, calling `between()` after each."""
    pages, token = [first], first.next_page_token
    while token:
        between()
        pages.append(stub.GetCostBasis(pb.GetCostBasisRequest(page_size=page_size, page_token=token), timeout=30))
        token = pages[-1].next_page_token
    return pages


@pytest.mark.parametrize("snapshots_kept", [limits.COST_BASIS_SNAPSHOTS_MAX, 0], ids=["kept", "folded-again"])
def test_pages_join_into_the_open_lots_at_the_first_position_while_the_log_grows(clients, monkeypatch,
                                                                                  snapshots_kept):
    """Many lots, the oldest consumed and one partly: the pages (page size 5 against chunks of 4) list exactly
    the open lots at the first page's position, oldest first, each with the first page's position, totals and
    lots_total, although purchases and spends are recorded between pages; whether the server kept the
    snapshot or folds the log again to that position."""
    monkeypatch.setattr(limits, "COST_BASIS_SNAPSHOTS_MAX", snapshots_kept)
    reserve = Reserve(clients)
    reserve.buy(23)
    reserve.spend(sum(quantity for *_, quantity in reserve.bought[:7]) + 3500)   # 7 lots and 3500 sats of the 8th
    expected, costs = reserve.open_lots(), reserve.remaining_cost()
    first = clients.dave.GetCostBasis(pb.GetCostBasisRequest(page_size=5), timeout=30)
    growth = iter(range(100))

    def grow():
        if next(growth) < 2:
            reserve.buy(3)
            reserve.spend(20_000)

    pages = listing(clients.dave, 5, first, grow)
    assert [(lot.purchase_id, lot.remaining_sats) for page in pages for lot in page.lots] == expected
    assert len(pages) == -(-len(expected) // 5) and all(len(page.lots) == 5 for page in pages[:-1])
    assert {(page.position, page.lots_total) for page in pages} == {(first.position, len(expected))}
    assert all(page.currencies == first.currencies for page in pages)
    assert {c.currency_code: c.remaining_cost_fifo for c in first.currencies} == costs
    assert sum(c.remaining_sats for c in first.currencies) == sum(left for _, left in expected)
    now = clients.dave.GetCostBasis(pb.GetCostBasisRequest(page_size=1000), timeout=30)
    assert now.position > first.position and now.lots_total == len(now.lots) == len(reserve.open_lots())


def test_an_as_of_listing_pages_at_that_position(clients):
    """A listing as of a past position pages through that position's lots (as_of is read on the first page)."""
    reserve = Reserve(clients)
    reserve.buy(9)
    past = clients.dave.GetCostBasis(pb.GetCostBasisRequest(), timeout=30).position
    expected = reserve.open_lots()
    reserve.spend(5000)
    reserve.buy(2)
    first = clients.dave.GetCostBasis(pb.GetCostBasisRequest(page_size=2, as_of=pb.AsOf(position=past)), timeout=30)
    pages = listing(clients.dave, 2, first)
    assert [(lot.purchase_id, lot.remaining_sats) for page in pages for lot in page.lots] == expected
    assert {page.position for page in pages} == {past}


def test_a_negative_page_size_and_tokens_never_issued_are_refused_by_name(clients):
    """INVALID_ARGUMENT with a field violation for page_size < 0, and for page tokens that are not ours: garbage,
    another list's, a position beyond the log, a lot number outside the open lots of its position."""
    reserve = Reserve(clients)
    reserve.buy(6)
    reserve.spend(1000 + 2000)   # lots 0 and 1 consumed: lots 2..5 open
    first = clients.dave.GetCostBasis(pb.GetCostBasisRequest(page_size=2), timeout=30)
    assert first.next_page_token and first.lots_total == 4
    error = rpc_error(clients.dave.GetCostBasis, pb.GetCostBasisRequest(page_size=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(error) == {"page_size": "PAGE_SIZE_NEGATIVE"}
    position = first.position
    for token in ["garbage", token_of("events", 3), token_of("cost_basis", position),
                  token_of("cost_basis", position, 4, 1), token_of("cost_basis", position + 1, 4),
                  token_of("cost_basis", position, 1), token_of("cost_basis", position, 6),
                  token_of("cost_basis", 2**63, 2)]:
        error = rpc_error(clients.dave.GetCostBasis, pb.GetCostBasisRequest(page_size=2, page_token=token))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, token
        assert violations(error) == {"page_token": "PAGE_TOKEN_INVALID"}, token
    second = clients.dave.GetCostBasis(pb.GetCostBasisRequest(page_size=2, page_token=token_of(
        "cost_basis", position, 4)), timeout=30)
    assert [lot.purchase_id for lot in second.lots] == [reserve.bought[4][0], reserve.bought[5][0]]


def test_more_lots_than_a_chunk_page_through_at_the_default_and_the_largest_page_size(storage, certs_dir, tmp_path):
    """With the real chunk size (1,000 lots), 1,100 lots page through at the default page size (100) and at a
    page size above the maximum (lowered to 1,000) to exactly the lots recorded, lots_total on every page."""
    data_dir, database_url = storage
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir,
                                       database_url=database_url, certs_dir=str(certs_dir),
                                       signing_key_path=str(tmp_path / "signing.key"))).start()
    try:
        reserve = Reserve(Clients(f"127.0.0.1:{server.port}", certs_dir))
        reserve.buy(1100)
        reserve.spend(1000)
        expected = reserve.open_lots()
        for page_size, pages_expected in ((0, 11), (5000, 2)):
            first = reserve.clients.dave.GetCostBasis(pb.GetCostBasisRequest(page_size=page_size), timeout=30)
            pages = listing(reserve.clients.dave, page_size, first)
            assert len(pages) == pages_expected and {page.lots_total for page in pages} == {len(expected)}
            assert [(lot.purchase_id, lot.remaining_sats) for page in pages for lot in page.lots] == expected
    finally:
        server.stop(grace_s=1)
