"""One anchor transaction as the ledger records it: the one definition of its fields.

The store's anchors table has one column per field (ANCHOR_FIELDS), the audit bundle's anchors.json and the
AuditService's Anchor message carry the fields not marked local (BUNDLE_FIELDS; bytes as hex in JSON), and
only the fields marked mutable change after the anchor is recorded (ANCHOR_MUTABLE_FIELDS).
States and transitions: ledger/anchor_policy.py.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

_LOCAL = {"local": True}                       # kept by the store; not exported
_MUTABLE = {"mutable": True}                   # changed by the anchor worker after recording
_LOCAL_MUTABLE = {"local": True, "mutable": True}


@dataclass(frozen=True, slots=True)
class Anchor:
    anchor_id: int                             # 1, 2, ... in the order the anchors were built (0: not yet recorded)
    tree_size: int                             # the signed tree head it commits to
    root_hash: bytes
    txid: str
    raw_tx: bytes                              # the signed transaction
    vsize: int
    fee_sats: int
    prev_txid: str                             # the coin it spends ...
    prev_vout: int
    prev_value_sats: int
    change_vout: int                           # ... and its change, which the next anchor spends
    change_value_sats: int
    state: str = field(default="built", metadata=_MUTABLE)
    replaces: int | None = None                # anchor_id of the stuck anchor it replaces (full RBF)
    broadcast_height: int | None = field(default=None, metadata=_LOCAL_MUTABLE)
    block_hash: str | None = field(default=None, metadata=_MUTABLE)
    block_height: int | None = field(default=None, metadata=_MUTABLE)
    confirmations: int = field(default=0, metadata=_MUTABLE)
    created_us: int = field(default=0, metadata=_LOCAL)
    updated_us: int = field(default=0, metadata=_LOCAL_MUTABLE)
    block_header: bytes | None = field(default=None, metadata=_MUTABLE)
    txout_proof: bytes | None = field(default=None, metadata=_MUTABLE)   # the merkleblock proving it in its block

    def to_json(self) -> dict[str, Any]:
        """The bundle's anchors.json entry: BUNDLE_FIELDS, bytes as lowercase hex, None as null."""
        return {name: value.hex() if isinstance(value, bytes) else value
                for name, value in ((name, getattr(self, name)) for name in BUNDLE_FIELDS)}


def _is_bytes(annotation) -> bool:
    return annotation is bytes or bytes in typing.get_args(annotation)


ANCHOR_FIELDS = tuple(f.name for f in dataclasses.fields(Anchor))
ANCHOR_MUTABLE_FIELDS = tuple(f.name for f in dataclasses.fields(Anchor) if f.metadata.get("mutable"))
ANCHOR_BYTES_FIELDS = tuple(f.name for f in dataclasses.fields(Anchor) if _is_bytes(f.type))
BUNDLE_FIELDS = tuple(f.name for f in dataclasses.fields(Anchor) if not f.metadata.get("local"))
