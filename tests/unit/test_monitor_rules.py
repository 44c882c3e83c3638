"""The reserves monitor's decisions in the domain: which movements the ledger explains, how a discrepancy is
recorded once, follows the best chain and is closed only by an approved correction (four eyes)."""

import pytest

from ledger import commands as cmd
from ledger import errors
from ledger import monitor
from ledger.limits import SATS_PER_BTC as BTC
from ledger.rules import Policy, decide
from ledger.state import InvariantBroken, ReserveState

ALICE, BOB, SYSTEM = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver"), cmd.Caller("system", "system")
TX_A, TX_B, TX_C = "a" * 64, "b" * 64, "c" * 64
BLOCK_1, BLOCK_2 = "1" * 64, "2" * 64


def apply(state, command, caller, time_us=1_000):
    event_type, data = decide(state, command, caller, time_us, Policy())
    state.apply({"format_version": 1, "position": state.position + 1, "type": event_type, "time_us": time_us,
                 "actor": caller.identity, "actor_role": caller.role, "request_id": command.request_id,
                 "request_digest": "", "data": data})
    return data


def observe(account_id="warm-b", txids=(TX_A,), movement_sats=BTC // 2, onchain_sats=BTC // 2, block=BLOCK_1,
            request_id="obs-1"):
    return cmd.ObserveReserveDiscrepancy(request_id, account_id, 101, block, tuple(txids), movement_sats,
                                         onchain_sats)


@pytest.fixture
def state():
    s = ReserveState()
    for account_id in ("cold-a", "warm-b"):
        apply(s, cmd.OpenAccount(f"o-{account_id}", account_id, "cold", "C", "L", 1, 1), ALICE)
    apply(s, cmd.RecordPurchase("p", "cold-a", 2 * BTC, "100", "USD", "200", "V", "T", "2026-01-01", txid=TX_C),
          ALICE)
    return s


def test_an_unrecorded_arrival_is_recorded_with_the_ledger_balance_decided_by_the_domain(state):
    """Coins the ledger never recorded arrive: the event carries the balance the ledger holds, decided by the
    domain, next to the coins on chain."""
    data = apply(state, observe(), SYSTEM)
    assert data["finding"] == monitor.FINDING_UNRECORDED
    assert (data["onchain_sats"], data["ledger_sats"], data["discrepancy_id"]) == (BTC // 2, 0, "rd-3")
    assert [d.status for d in state.discrepancies.values()] == [monitor.OPEN]


def test_a_purchase_naming_the_txid_with_its_quantity_explains_the_arrival(state):
    """The purchase named TX_C for 2 BTC into cold-a: that arrival is no discrepancy; 3 BTC would be one."""
    with pytest.raises(errors.MovementExplained):
        decide(state, observe("cold-a", (TX_C,), 2 * BTC, 3 * BTC), SYSTEM, 1_000, Policy())
    assert apply(state, observe("cold-a", (TX_C,), 3 * BTC, 3 * BTC), SYSTEM)["finding"] == "amounts-differ"


def test_an_unnamed_movement_that_leaves_the_books_equal_to_the_chain_is_no_discrepancy(state):
    """Coins arriving for a purchase recorded without its txid: on chain equals the ledger, nothing to alert."""
    with pytest.raises(errors.MovementExplained):
        decide(state, observe("cold-a", (TX_A,), 2 * BTC, 2 * BTC), SYSTEM, 1_000, Policy())


def _custody_change(state, txid=TX_B, amount_sats=BTC, fee_sats=1_000):
    change = apply(state, cmd.ProposeCustodyChange("cc", "cold-a", "warm-b", amount_sats, "move", txid=txid,
                                                   network_fee_sats=fee_sats), ALICE)
    apply(state, cmd.ApproveCustodyChange("acc", change["custody_change_id"]), BOB)


def test_an_approved_custody_change_explains_exactly_its_amounts_and_fee(state):
    """Source moves by -amount (the fee inside it), destination by +(amount - fee); anything else alerts."""
    _custody_change(state)
    for account_id, movement_sats in (("cold-a", -BTC), ("warm-b", BTC - 1_000)):
        with pytest.raises(errors.MovementExplained):
            decide(state, observe(account_id, (TX_B,), movement_sats, 0), SYSTEM, 1_000, Policy())
    data = apply(state, observe("cold-a", (TX_B,), -BTC - 5_000, BTC - 5_000), SYSTEM)
    assert data["finding"] == monitor.FINDING_AMOUNTS_DIFFER


def test_a_custody_change_only_proposed_explains_nothing(state):
    """Coins that move before the second identity approved are exactly what four eyes should prevent."""
    apply(state, cmd.ProposeCustodyChange("cc", "cold-a", "warm-b", BTC, "move", txid=TX_B), ALICE)
    assert apply(state, observe("cold-a", (TX_B,), -BTC, BTC), SYSTEM)["finding"] == monitor.FINDING_UNRECORDED


def test_the_same_account_and_block_is_recorded_once(state):
    """Idempotent across restarts and replicas: a second observation of the same block is refused by name."""
    apply(state, observe(), SYSTEM)
    with pytest.raises(errors.DiscrepancyAlreadyObserved):
        decide(state, observe(request_id="obs-again"), SYSTEM, 1_000, Policy())


def test_a_discrepancy_reorged_out_stops_standing_and_may_be_raised_again_in_another_block(state):
    """The alert follows the best chain: reorged out, then re-raised when the movement is mined again."""
    first = apply(state, observe(), SYSTEM)
    apply(state, cmd.RecordDiscrepancyReorgedOut("gone", first["discrepancy_id"], BLOCK_2), SYSTEM)
    assert state.discrepancies[first["discrepancy_id"]].status == monitor.REORGED_OUT
    with pytest.raises(errors.DiscrepancyNotOpen):
        decide(state, cmd.RecordDiscrepancyReorgedOut("gone-2", first["discrepancy_id"], BLOCK_2), SYSTEM, 1_000,
               Policy())
    again = apply(state, observe(block=BLOCK_2, request_id="obs-2"), SYSTEM)
    assert [d.status for d in state.discrepancies.values()] == [monitor.REORGED_OUT, monitor.OPEN]
    assert again["block_hash"] == BLOCK_2


def test_a_block_still_on_the_best_chain_cannot_be_called_reorged_out(state):
    first = apply(state, observe(), SYSTEM)
    with pytest.raises(errors.RequestInvalid):
        decide(state, cmd.RecordDiscrepancyReorgedOut("x", first["discrepancy_id"], BLOCK_1), SYSTEM, 1_000,
               Policy())


def test_only_an_approved_correction_closes_a_discrepancy_and_its_sibling(state):
    """0.5 BTC moved cold-a -> warm-b unrecorded: both sides alert; a correction transfer naming one of them,
    approved by a second identity, closes both (they share the txid); its proposal alone closes nothing."""
    apply(state, observe("cold-a", (TX_A,), -BTC // 2, 3 * BTC // 2, request_id="o-cold"), SYSTEM)
    cold_id = "rd-3"
    apply(state, observe("warm-b", (TX_A,), BTC // 2, BTC // 2, request_id="o-warm"), SYSTEM)
    proposal = apply(state, cmd.ProposeTransfer("fix", "cold-a", "warm-b", BTC // 2,
                                                corrects_position=monitor.position_of(cold_id)), ALICE)
    assert len(monitor.open_discrepancies(state)) == 2
    with pytest.raises(errors.ApproverMustDifferFromProposer):
        decide(state, cmd.ApproveTransfer("self", proposal["transfer_id"]), cmd.Caller("alice", "approver"), 1_000,
               Policy())
    approval = apply(state, cmd.ApproveTransfer("ok", proposal["transfer_id"]), BOB)
    assert approval["closes_discrepancy_ids"] == ["rd-3", "rd-4"]
    assert monitor.open_discrepancies(state) == []
    assert {d.resolved_position for d in state.discrepancies.values()} == {state.position}


def test_a_correction_must_touch_the_discrepancys_account(state):
    apply(state, cmd.OpenAccount("o-hot", "hot-c", "hot", "C", "L", 1, 1), ALICE)
    apply(state, observe(), SYSTEM)
    with pytest.raises(errors.CorrectionMustTouchAccount):
        decide(state, cmd.ProposeTransfer("fix", "cold-a", "hot-c", 1, corrects_position=4), ALICE, 1_000, Policy())


def test_a_plain_transfer_approval_keeps_its_canonical_bytes(state):
    """Optional fields appear only when set: an approval that closes nothing has exactly the old fields."""
    proposal = apply(state, cmd.ProposeTransfer("t", "cold-a", "warm-b", 1), ALICE)
    assert apply(state, cmd.ApproveTransfer("a", proposal["transfer_id"]), BOB) == {
        "transfer_id": proposal["transfer_id"], "proposer": "alice"}
    purchase = cmd.RecordPurchase("p2", "cold-a", 1, "100", "USD", "0.000001", "V", "T", "2026-01-01")
    assert "txid" not in purchase.payload()


def test_a_forged_closure_is_refused_by_the_fold(state):
    """A TransferApproved claiming to close a discrepancy its correction does not name breaks the replay."""
    apply(state, observe(), SYSTEM)
    proposal = apply(state, cmd.ProposeTransfer("t", "cold-a", "warm-b", 1), ALICE)
    forged = {"format_version": 1, "position": state.position + 1, "type": "TransferApproved", "time_us": 2_000,
              "actor": "bob", "actor_role": "approver", "request_id": "f", "request_digest": "",
              "data": {"transfer_id": proposal["transfer_id"], "proposer": "alice", "closes_discrepancy_ids": ["rd-3"]}}
    with pytest.raises(InvariantBroken) as raised:
        state.apply(forged)
    assert raised.value.rule == "EVENT_NOT_AS_DECIDED"


def test_the_state_with_discrepancies_survives_its_bytes(state):
    """Saved projections carry discrepancies and expected movements: from_bytes(to_bytes) is the identity."""
    _custody_change(state)
    apply(state, observe(), SYSTEM)
    assert ReserveState.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()


def test_among_unnamed_movements_the_one_that_unbalances_the_books_is_reported_alone(state):
    """cold-a holds 2 BTC in the ledger and none on chain; one block brings 2 BTC (the purchase's coins, recorded
    without a txid) and 0.5 BTC (unrecorded): only the 0.5 BTC is named."""
    moves = {TX_A: 2 * BTC, TX_B: BTC // 2}
    assert monitor.discrepant_movements(state, "cold-a", moves, 2 * BTC + BTC // 2) == {TX_B: BTC // 2}
    both_odd = {TX_A: BTC, TX_B: BTC // 2}   # no single transaction accounts for the difference: both reported
    assert monitor.discrepant_movements(state, "cold-a", both_odd, 3 * BTC // 2) == both_odd
