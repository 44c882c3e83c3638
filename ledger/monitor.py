"""The reserves monitor's decisions: which on-chain movements the ledger explains, and discrepancy records.

The service (services/monitor) watches the coins at each custody account's addresses block by block and
reports, per account and block, the transactions that moved them and by how much (net sats, signed). The
ledger explains a transaction's movement at an account when an event names its txid with that amount:
  - an approved custody change with `txid`: the source moves by -amount_sats (the network fee is inside it),
    the destination by +(amount_sats - network_fee_sats);
  - a posted purchase with `txid`: its account moves by +quantity_sats.
What is left is a discrepancy when one of its txids is named by the ledger (the transaction moved other
amounts than recorded: `amounts-differ`), or, for transactions the ledger names nowhere, when the account's
coins after the block differ from its ledger balance (`unrecorded`). Pure: state in, a finding out.
"""

import dataclasses
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from ledger.state import ReserveState

ID_PREFIX = "rd"
FINDING_UNRECORDED = "unrecorded"
FINDING_AMOUNTS_DIFFER = "amounts-differ"
OPEN, CLOSED, REORGED_OUT = "open", "closed", "reorged-out"


def discrepancy_id(position: int) -> str:
    return f"{ID_PREFIX}-{position}"


def position_of(discrepancy_id_: str) -> int:
    return int(discrepancy_id_.partition("-")[2])


@dataclasses.dataclass(slots=True)
class Discrepancy:
    """One observed discrepancy as the fold keeps it. Mutable only in `status` and `resolved_position`
    (closed by an approved correction, or reorged out); only ReserveState.apply writes it."""

    discrepancy_id: str
    account_id: str
    block_height: int
    block_hash: str
    txids: tuple[str, ...]
    movement_sats: int
    onchain_sats: int
    ledger_sats: int
    finding: str
    position: int
    time_us: int
    status: str = OPEN
    resolved_position: int = -1     # the TransferApproved that closed it, or the ReserveDiscrepancyReorgedOut


def expected_movement_sats(state: "ReserveState", txid: str, account_id: str) -> int | None:
    """What the ledger says `txid` moved at `account_id` (net sats), or None when it says nothing."""
    return state.expected_movements.get(txid, {}).get(account_id)


def explains(state: "ReserveState", txid: str, account_id: str, movement_sats: int) -> bool:
    return expected_movement_sats(state, txid, account_id) == movement_sats


def finding_of(state: "ReserveState", account_id: str, txids: Iterable[str], movement_sats: int,
               onchain_sats: int) -> str | None:
    """The finding these movements make at the account (see the module's docstring), or None when the ledger
    explains them."""
    txids = tuple(txids)
    expected = [expected_movement_sats(state, txid, account_id) for txid in txids]
    if None not in expected and sum(expected) == movement_sats:
        return None
    if any(txid in state.expected_movements for txid in txids):
        return FINDING_AMOUNTS_DIFFER
    if onchain_sats != state.balance_sats(account_id):
        return FINDING_UNRECORDED
    return None


def discrepant_movements(state: "ReserveState", account_id: str, movements: dict[str, int],
                         onchain_sats: int) -> dict[str, int]:
    """Of one block's movements at an account (txid -> net sats), those to report: the ones the ledger does not
    explain; and when none of those is named anywhere and exactly one of them moved the account by the books'
    difference after the block (on chain - ledger), that one alone: the others brought the chain to the books
    (coins for a purchase recorded without its txid), it took them apart."""
    left = {txid: sats for txid, sats in movements.items() if not explains(state, txid, account_id, sats)}
    if len(left) > 1 and not any(txid in state.expected_movements for txid in left):
        difference_sats = onchain_sats - state.balance_sats(account_id)
        culprits = [txid for txid, sats in left.items() if sats == difference_sats]
        if len(culprits) == 1:
            return {culprits[0]: difference_sats}
    return left


def standing_at(state: "ReserveState", account_id: str, block_hash: str) -> Discrepancy | None:
    """The discrepancy already recorded for this account in this block, unless it was reorged out."""
    for discrepancy in state.discrepancies.values():
        if discrepancy.account_id == account_id and discrepancy.block_hash == block_hash \
                and discrepancy.status != REORGED_OUT:
            return discrepancy
    return None


def closed_by_correction(state: "ReserveState", corrected_position: int, debit_account_id: str,
                         credit_account_id: str) -> list[str]:
    """The discrepancies an approved correction naming `corrected_position` closes: that one if it is open, and
    the open ones on the correction's other account that name one of its txids (both sides of one movement)."""
    named = state.discrepancies.get(discrepancy_id(corrected_position))
    if named is None or named.status != OPEN:
        return []
    other = credit_account_id if named.account_id == debit_account_id else debit_account_id
    siblings = [d.discrepancy_id for d in state.discrepancies.values()
                if d.status == OPEN and d.account_id == other and set(d.txids) & set(named.txids)]
    return [named.discrepancy_id, *siblings]


def open_discrepancies(state: "ReserveState") -> list[Discrepancy]:
    return [d for d in state.discrepancies.values() if d.status == OPEN]
