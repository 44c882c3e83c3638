"""The pending kinds: for each, its proposal and resolution events, its id prefix and its id field.

A pending id is ``<prefix>-<position of the proposal>`` (``pu-12``, ``tr-40``, ``cc-7``).
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PendingKind:
    name: str          # the pending_kind of ListPending
    id_prefix: str
    id_field: str      # the field of every event of this kind that names the pending item
    proposed: str      # the event types of its life: proposed, then approved, rejected or expired
    approved: str
    rejected: str
    expired: str

    def new_id(self, position: int) -> str:
        return f"{self.id_prefix}-{position}"


PURCHASE = PendingKind("purchase", "pu", "purchase_id", "PurchaseProposed", "PurchaseApproved", "PurchaseRejected",
                       "PurchaseExpired")
TRANSFER = PendingKind("transfer", "tr", "transfer_id", "TransferProposed", "TransferApproved", "TransferRejected",
                       "TransferExpired")
CUSTODY_CHANGE = PendingKind("custody_change", "cc", "custody_change_id", "CustodyChangeProposed",
                             "CustodyChangeApproved", "CustodyChangeRejected", "CustodyChangeExpired")
PENDING_KINDS = (PURCHASE, TRANSFER, CUSTODY_CHANGE)
BY_PREFIX = {kind.id_prefix: kind for kind in PENDING_KINDS}
ID_FIELDS = tuple(kind.id_field for kind in PENDING_KINDS)
EXPIRED_EVENTS = frozenset(kind.expired for kind in PENDING_KINDS)


def kind_of_id(pending_id: str) -> PendingKind | None:
    """The kind a pending id's prefix names, or None."""
    return BY_PREFIX.get(pending_id.partition("-")[0])


@dataclass(frozen=True, slots=True)
class Pending:
    """A proposal waiting for a second identity's approval; its debit side is held until it is resolved."""

    pending_id: str
    pending_kind: str
    debit_account_id: str
    credit_account_id: str
    amount_sats: int
    proposer: str
    position: int
    expire_time_us: int
    network_fee_sats: int = 0                  # custody changes
    new_quorum: tuple[int, int] = (0, 0)       # custody changes: (required, total); (0, 0) keeps the quorum
    purchase: dict[str, Any] | None = None     # purchases: the proposed purchase's event data, recorded on approval
    txid: str = ""                             # custody changes: the on-chain transaction (the monitor matches it)
    corrects_position: int = -1                # transfers: the position a correction compensates (-1: none)
