"""The domain validates at its own entry and keeps every amount inside the supply cap and int64, whoever calls
`ReserveLedger.execute` (no servicer in front), on a real SQLite store."""

import pytest

from ledger import commands as cmd
from ledger import errors, limits
from ledger.application import Recorded, ReserveLedger
from ledger.limits import SATS_PER_BTC as BTC
from ledger.limits import SUPPLY_CAP_SATS as CAP
from ledger.rules import Policy
from ledger.state import balances, cost_basis, holdings
from services.store.config import sqlite_env

OPERATOR, APPROVER = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver")
T0 = 1_790_000_000_000_000
INT64_MAX = 2**63 - 1


@pytest.fixture
def ledger(tmp_path):
    app = ReserveLedger(sqlite_env(tmp_path), policy=Policy(purchase_approval_threshold_sats=CAP))
    for account_id in ("cold-a", "cold-b"):
        assert isinstance(run(app, cmd.OpenAccount(f"o-{account_id}", account_id, "cold", "C", "L", 1, 1)), Recorded)
    yield app
    app.close()


def run(app, command, caller=OPERATOR, time_us=T0):
    return app.execute([(command, caller)], time_us)[0]


def purchase(request_id, quantity_sats, account_id="cold-a", **changes):
    """At 1e8 USD per BTC the fiat total in USD is the quantity in sats."""
    fields = dict(request_id=request_id, account_id=account_id, quantity_sats=quantity_sats,
                  price_per_btc="100000000", currency_code="USD", fiat_total=str(quantity_sats), counterparty="V",
                  trade_reference="T", trade_date="2026-01-01")
    return cmd.RecordPurchase(**{**fields, **changes})


def refused_rules(app, command, caller=OPERATOR) -> list[str]:
    """The rules the ledger names when it refuses `command`; asserts nothing was recorded."""
    size = app.store.log_size()
    outcome = run(app, command, caller)
    assert isinstance(outcome, errors.LedgerError), outcome
    assert app.store.log_size() == size
    return [v.rule for v in outcome.violations] if isinstance(outcome, errors.RequestInvalid) else [outcome.reason]


@pytest.mark.parametrize("command, rule", [
    (purchase("p", -5 * BTC), "AMOUNT_MUST_BE_POSITIVE"),
    (purchase("p", BTC, currency_code="ZZZ"), "CURRENCY_CODE_UNKNOWN"),
    (purchase("p", BTC, account_id="cold-a\n"), "ACCOUNT_ID_MALFORMED"),
    (purchase("p", BTC, price_per_btc="60000.00\n"), "DECIMAL_MALFORMED"),
    (purchase("p", BTC, fiat_total="1\n"), "DECIMAL_MALFORMED"),
    (purchase("p", BTC, trade_date="2024-W01-1"), "DATE_MALFORMED"),
    (purchase("p", BTC, trade_date="２０２４-01-01"), "DATE_MALFORMED"),
    (purchase("p\n", BTC), "REQUEST_ID_MALFORMED"),
    (purchase("p", True), "FIELD_TYPE_INVALID"),
    (purchase("p", 1.0 * BTC), "FIELD_TYPE_INVALID"),
    (cmd.ProposeTransfer("t", "cold-a", "cold-b", 1, expire_time_us=0), "EXPIRE_TIME_OUT_OF_RANGE"),
    (cmd.ProposeTransfer("t", "cold-a", "cold-b", 1, corrects_position=-5), "POSITION_INVALID"),
    (cmd.ProposeTransfer("t", "cold-a", "cold-b", 1, expire_time_us=10**20), "EXPIRE_TIME_INVALID"),
    (cmd.ApproveTransfer("a", "tr-1\n"), "PENDING_ID_MALFORMED"),
    (cmd.ExpireTransfer("e", "transfer-1"), "PENDING_ID_MALFORMED"),
])
def test_execute_itself_refuses_malformed_commands_and_records_nothing(ledger, command, rule):
    run(ledger, purchase("funds", 5 * BTC))
    assert rule in refused_rules(ledger, command)


def test_an_expiry_of_exactly_the_epoch_is_a_time_not_unset(ledger):
    """0 µs is 1970-01-01T00:00:00Z: in the past, so refused; only None asks for the default expiry."""
    run(ledger, purchase("funds", 5 * BTC))
    assert refused_rules(ledger, cmd.ProposeTransfer("t0", "cold-a", "cold-b", 1, expire_time_us=0)) == [
        "EXPIRE_TIME_OUT_OF_RANGE"]
    recorded = run(ledger, cmd.ProposeTransfer("t1", "cold-a", "cold-b", 1, expire_time_us=None))
    assert recorded.data["expire_time_us"] == T0 + limits.EXPIRY_DEFAULT_US


def test_position_zero_is_a_correction_target(ledger):
    run(ledger, purchase("funds", 5 * BTC))
    recorded = run(ledger, cmd.ProposeTransfer("fix", "cold-a", "nominal:adjustments", 1, corrects_position=0))
    assert recorded.data["corrects_position"] == 0


def test_expire_transfer_names_only_transfers(ledger):
    """A purchase's or custody change's id is not a transfer: NOT_FOUND naming transfer_id, nothing voided."""
    ledger.policy = Policy(purchase_approval_threshold_sats=0)
    proposed = run(ledger, purchase("big", 2 * BTC))
    late = T0 + limits.EXPIRY_DEFAULT_US + 1
    size = ledger.store.log_size()
    outcome = ledger.execute([(cmd.ExpireTransfer("x", proposed.data["purchase_id"]), OPERATOR)], late)[0]
    assert isinstance(outcome, errors.PendingNotFound) and outcome.field == "transfer_id"
    assert ledger.store.log_size() == size
    malformed = ledger.execute([(cmd.ExpireTransfer("y", "tr-x"), OPERATOR)], late)[0]
    assert [v.field for v in malformed.violations] == ["transfer_id"]


# --- the supply cap ------------------------------------------------------------------------------------------

def test_two_purchases_cannot_put_42_million_btc_in_one_account(ledger):
    assert isinstance(run(ledger, purchase("p1", CAP)), Recorded)
    outcome = run(ledger, purchase("p2", CAP))
    assert isinstance(outcome, errors.SupplyCapExceeded) and outcome.account_id == "cold-a"
    assert outcome.reason == "SUPPLY_CAP_EXCEEDED" and "cold-a" in str(outcome)


def test_the_cap_holds_exactly_at_its_boundary_across_accounts(ledger):
    """Exactly 21 million BTC is accepted; one more satoshi anywhere is refused."""
    assert isinstance(run(ledger, purchase("p1", CAP - 1, account_id="cold-a")), Recorded)
    assert isinstance(run(ledger, purchase("p2", 1, account_id="cold-b")), Recorded)
    refused = run(ledger, purchase("p3", 1, account_id="cold-b"))
    assert isinstance(refused, errors.SupplyCapExceeded) and refused.account_id == "cold-b"


def test_holds_on_the_adjustments_account_are_capped(ledger):
    """Corrections from nominal:adjustments hold no balance; their holds still stop at the cap."""
    run(ledger, cmd.ProposeTransfer("fix-1", "nominal:adjustments", "cold-a", CAP, corrects_position=0))
    outcome = run(ledger, cmd.ProposeTransfer("fix-2", "nominal:adjustments", "cold-b", 1, corrects_position=0))
    assert isinstance(outcome, errors.SupplyCapExceeded) and outcome.account_id == "nominal:adjustments"


def test_turnover_stops_before_int64_and_every_query_fits_int64(ledger):
    """Coins moved back and forth grow credits without bound: refused just below 2^63, and every integer a
    query returns (balances, holdings, cost basis) stays inside int64."""
    run(ledger, purchase("funds", 5 * BTC))
    with ledger.reading() as state:  # as if 4,392 round trips of the whole supply had been recorded
        state.accounts["cold-b"].credits_sats = INT64_MAX - 3 * BTC
        state.accounts["cold-b"].debits_sats = INT64_MAX - 3 * BTC
    ledger._decisions = None
    transfer = run(ledger, cmd.ProposeTransfer("big", "cold-a", "cold-b", 4 * BTC))
    assert isinstance(transfer, errors.TurnoverLimitExceeded) and transfer.account_id == "cold-b"
    small = run(ledger, cmd.ProposeTransfer("small", "cold-a", "cold-b", 3 * BTC))
    assert isinstance(run(ledger, cmd.ApproveTransfer("ok", small.data["transfer_id"]), APPROVER), Recorded)
    with ledger.reading() as state:
        assert state.accounts["cold-b"].credits_sats == INT64_MAX
        numbers = [v for row in balances(state) for v in row.values() if type(v) is int]
        view = holdings(state)
        numbers += [view["total_sats"]] + [v for row in view["custodians"] for v in row.values() if type(v) is int]
        basis = cost_basis(state)
        numbers += [v for row in basis["lots"] + basis["currencies"] for v in row.values() if type(v) is int]
    assert numbers and all(-(2**63) <= n <= INT64_MAX for n in numbers)
