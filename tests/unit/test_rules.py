"""The small core: rules and the fold, without storage."""

import pytest

from ledger import commands as cmd
from ledger import errors
from ledger.limits import SATS_PER_BTC as BTC
from ledger.rules import Policy, decide
from ledger.state import STATE_FORMAT_VERSION, InvariantBroken, ReserveState, StateFormatUnknown

ALICE, BOB = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver")


def apply(state, command, caller, time_us=1_000):
    event_type, data = decide(state, command, caller, time_us, Policy())
    state.apply({"format_version": 1, "position": state.position + 1, "type": event_type, "time_us": time_us, "actor": caller.identity,
                 "actor_role": caller.role, "request_id": command.request_id, "request_digest": "", "data": data})
    return data


@pytest.fixture
def state():
    s = ReserveState()
    for account_id in ("cold-a", "warm-b"):
        apply(s, cmd.OpenAccount(f"o-{account_id}", account_id, "cold", "C", "L", 1, 1), ALICE)
    apply(s, cmd.RecordPurchase("p", "cold-a", 2 * BTC, "100", "USD", "200", "V", "T", "2026-01-01"), ALICE)
    return s


def test_pending_holds_count_against_the_available_balance(state):
    """Two proposals may not together exceed the balance: the first one's hold blocks the second."""
    apply(state, cmd.ProposeTransfer("t1", "cold-a", "warm-b", BTC + 1), ALICE)
    with pytest.raises(errors.InsufficientAvailableBalance):
        decide(state, cmd.ProposeTransfer("t2", "cold-a", "warm-b", BTC), ALICE, 1_000, Policy())


def test_the_proposer_cannot_approve_their_own_transfer(state):
    transfer = apply(state, cmd.ProposeTransfer("t1", "cold-a", "warm-b", BTC), ALICE)
    with pytest.raises(errors.ApproverMustDifferFromProposer):
        decide(state, cmd.ApproveTransfer("a", transfer["transfer_id"]), cmd.Caller("alice", "approver"), 1_000,
               Policy())


def test_debits_always_equal_credits_and_a_forged_overdraft_is_caught_by_the_fold(state):
    """The fold refuses an event sequence that overdraws, whatever produced it (e.g. a tampered log)."""
    apply(state, cmd.ProposeTransfer("t1", "cold-a", "warm-b", BTC), ALICE)
    assert state.debits_sats == state.credits_sats == 2 * BTC
    forged = {"position": state.position + 1, "type": "TransferProposed", "time_us": 2_000, "actor": "x",
              "actor_role": "operator", "request_id": "f", "request_digest": "",
              "data": {"transfer_id": "tr-99", "debit_account_id": "cold-a", "credit_account_id": "warm-b",
                       "amount_sats": 5 * BTC, "memo": "", "expire_time_us": 10**12, "corrects_position": -1}}
    with pytest.raises(InvariantBroken):
        state.apply(forged)


def test_validation_reports_every_bad_field_at_once():
    with pytest.raises(errors.RequestInvalid) as raised:
        cmd.RecordPurchase("", "X", -1, "1.2.3", "usd", "x", "", "", "2026-02-30").validate()
    fields = {v.field for v in raised.value.violations}
    assert fields >= {"request_id", "account_id", "quantity_sats", "price_per_btc", "currency_code", "fiat_total",
                      "counterparty", "trade_reference", "trade_date"}


def test_an_account_closes_only_at_zero(state):
    with pytest.raises(errors.AccountNotEmpty):
        decide(state, cmd.CloseAccount("c", "cold-a"), cmd.Caller("erin", "admin"), 1_000, Policy())
    apply(state, cmd.CloseAccount("c", "warm-b"), cmd.Caller("erin", "admin"))
    with pytest.raises(errors.AccountClosed):
        decide(state, cmd.ProposeTransfer("t", "cold-a", "warm-b", 1), ALICE, 1_000, Policy())


def test_state_bytes_round_trip_and_another_format_version_is_refused_by_name(state):
    """Snapshots restore byte for byte (typed records, pending holds and lots included); bytes written by another
    STATE_FORMAT_VERSION are refused with a named error rather than misread."""
    apply(state, cmd.ProposeTransfer("t", "cold-a", "warm-b", BTC // 2), ALICE)
    restored = ReserveState.from_bytes(state.to_bytes())
    assert restored.to_bytes() == state.to_bytes()
    assert restored.accounts["cold-a"] == state.accounts["cold-a"] and restored.pending == state.pending
    older = state.to_bytes().replace(b'"format_version":%d' % STATE_FORMAT_VERSION, b'"format_version":1')
    with pytest.raises(StateFormatUnknown, match="format version 1"):
        ReserveState.from_bytes(older)
