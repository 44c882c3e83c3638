"""Per-event proofs to a Bitcoin block: gathers the pieces from the store and the chain backend.

The formats and their checks are in ledger/event_proofs.py (pure); this module only fetches: the event's
canonical bytes, its inclusion proof at the first confirmed anchor that covers it, the anchor transaction,
the block's merkleblock proof and the block height.
"""

import dataclasses
import json
import pathlib

from ledger import merkle
from ledger.errors import EventNotAnchoredYet
from ledger.anchor_policy import CONFIRMED_STATES
from ledger.anchors import Anchor
from ledger.anchoring import ChainBackend, parse_transaction
from ledger.application import ReserveLedger
from ledger.event_proofs import build_event_timestamp, event_proof_json, serialize_ots




@dataclasses.dataclass(frozen=True)
class EventProof:
    event_bytes: bytes
    ots: bytes
    proof: dict
    anchor_txid: str
    block_hash: str
    block_height: int

    def write(self, directory: str | pathlib.Path) -> list[pathlib.Path]:
        out = pathlib.Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "event.bin", out / "event.bin.ots", out / "proof.json"]
        paths[0].write_bytes(self.event_bytes)
        paths[1].write_bytes(self.ots)
        paths[2].write_text(json.dumps(self.proof, indent=2, sort_keys=True) + "\n")
        return paths


def covering_anchor(anchors: list[Anchor], position: int) -> Anchor:
    confirmed = [a for a in anchors if a.state in CONFIRMED_STATES and a.tree_size > position]
    if not confirmed:
        raise EventNotAnchoredYet(f"no confirmed anchor covers position {position} yet")
    return min(confirmed, key=lambda a: a.tree_size)


def event_proof(ledger: ReserveLedger, backend: ChainBackend, position: int) -> EventProof:
    anchor = covering_anchor(ledger.store.list_anchors(), position)
    (_, event_bytes), = ledger.read_events(position, 1)
    path = merkle.inclusion_proof(ledger.store, position, anchor.tree_size)
    block_hash, confirmations = backend.transaction_status(anchor.txid)
    if block_hash is None:
        raise EventNotAnchoredYet(f"anchor {anchor.txid} is not in the best chain right now")
    height = backend.tip_height() - confirmations + 1
    merkleblock = backend.txout_proof(anchor.txid, block_hash)
    no_witness = parse_transaction(anchor.raw_tx).no_witness
    ots = serialize_ots(build_event_timestamp(event_bytes, position, anchor.tree_size, path, no_witness,
                                              merkleblock, height))
    proof = event_proof_json(event_bytes, position, anchor.tree_size, path, anchor.raw_tx, merkleblock, height)
    return EventProof(event_bytes, ots, proof, anchor.txid, block_hash, height)
