"""When an anchor moves between states, when it is replaced, and at what fee: pure decisions.

States of an anchor transaction (docs/FORMATS-anchoring.md):
  built      signed and recorded, not yet accepted by the backend (a crash here: it is re-broadcast)
  broadcast  accepted by the backend, unconfirmed (also where a reorged-out anchor returns)
  included   in the best chain with >= included confirmations (1)
  anchored   >= anchored confirmations (6)
  final      >= final confirmations (100); never checked again
  replaced   superseded by a higher-fee transaction spending the same coin (full RBF)
  abandoned  a replacement that lost to the transaction it tried to replace
"""

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

LIVE_STATES = ("built", "broadcast", "included", "anchored")
CONFIRMED_STATES = ("included", "anchored", "final")
IN_FLIGHT_STATES = ("built", "broadcast")


@dataclass(frozen=True)
class AnchorPolicy:
    interval_s: float = 600.0                  # how often the worker looks for a new tree head to anchor
    block_poll_interval_s: float = 10.0        # how often it asks for the tip; a new block refreshes the anchors
    confirmations_included: int = 1
    confirmations_anchored: int = 6
    confirmations_final: int = 100
    replace_after_blocks: int = 3              # unconfirmed this many blocks after broadcast -> replace
    fee_rate_max_sat_per_vb: Decimal = Decimal(50)
    fee_max_sats: int = 20_000
    confirmation_target_blocks: int = 6
    incremental_fee_rate_sat_per_vb: Decimal = Decimal(1)


def state_for_confirmations(confirmations: int, policy: AnchorPolicy) -> str:
    """The state a transaction with this many best-chain confirmations is in (0: unconfirmed)."""
    if confirmations >= policy.confirmations_final:
        return "final"
    if confirmations >= policy.confirmations_anchored:
        return "anchored"
    if confirmations >= policy.confirmations_included:
        return "included"
    return "broadcast"


def needs_replacement(broadcast_height: int, tip_height: int, policy: AnchorPolicy) -> bool:
    return tip_height - broadcast_height >= policy.replace_after_blocks


def replacement_fee_rate(old_fee_sats: int, vsize_vb: int, estimate_sat_per_vb: Decimal,
                         policy: AnchorPolicy) -> Decimal:
    """At least the estimate, and enough over the old fee to satisfy RBF (absolute fee + incremental relay)."""
    old_rate = Decimal(old_fee_sats) / Decimal(vsize_vb)
    needed = (old_rate + policy.incremental_fee_rate_sat_per_vb).to_integral_value(rounding=ROUND_CEILING)
    return min(max(needed, Decimal(estimate_sat_per_vb)), policy.fee_rate_max_sat_per_vb)
