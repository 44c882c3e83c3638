"""Anchor state thresholds, the replacement trigger and RBF fee rules."""

from decimal import Decimal

from ledger.anchor_policy import AnchorPolicy, needs_replacement, replacement_fee_rate, state_for_confirmations

POLICY = AnchorPolicy(confirmations_included=1, confirmations_anchored=6, confirmations_final=100,
                      replace_after_blocks=3, fee_rate_max_sat_per_vb=Decimal(20))


def test_states_follow_the_configured_confirmation_thresholds():
    expected = {0: "broadcast", 1: "included", 5: "included", 6: "anchored", 99: "anchored", 100: "final"}
    for confirmations, state in expected.items():
        assert state_for_confirmations(confirmations, POLICY) == state, confirmations


def test_replacement_is_due_only_after_the_configured_number_of_blocks():
    assert not needs_replacement(broadcast_height=200, tip_height=202, policy=POLICY)
    assert needs_replacement(broadcast_height=200, tip_height=203, policy=POLICY)


def test_replacement_pays_at_least_the_old_rate_plus_the_incremental_relay_fee():
    """161 vB at 1 sat/vB -> the replacement pays >= 2 sat/vB, i.e. >= old fee + 1 sat/vB x vsize."""
    rate = replacement_fee_rate(old_fee_sats=161, vsize_vb=161, estimate_sat_per_vb=Decimal(1), policy=POLICY)
    assert rate == 2 and rate * 161 >= 161 + 161
    assert replacement_fee_rate(161, 161, Decimal(7), POLICY) == 7  # a higher estimate wins
    assert replacement_fee_rate(161 * 30, 161, Decimal(1), POLICY) == 20  # never above the cap
