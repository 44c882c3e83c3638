"""Proof and sealing of saved states (projection and checkpoint rows): ledger.application.SavedStateProofs.

A saved state is used only when (1) its seal is a valid signature by the tree-head key over its bytes and
position (ledger/saved_states.py) and (2) the root in the seal belongs to this log: it is consistent with
the newest signed tree head, through an RFC 9162 consistency proof built from stored nodes (untrusted
input to the check; the head's root is trusted because it is signed). Cost: one signature, one head
signature and O(log n) stored nodes, whatever the length of the history.
"""

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import merkle
from ledger.saved_states import StateSeal, seal_holds, seal_state
from ledger.tree_heads import raw_public_key, verify_tree_head

log = logging.getLogger("reserve_ledger.projections")


class StateProofs:
    """Checks saved states against the public key; seals new ones when given the private key too."""

    def __init__(self, store, public_key_raw: bytes, private_key: Ed25519PrivateKey | None = None):
        assert private_key is None or raw_public_key(private_key.public_key()) == public_key_raw
        self._store = store
        self._public_key_raw = public_key_raw
        self._private_key = private_key

    @property
    def can_seal(self) -> bool:
        return self._private_key is not None

    def unproven_reason(self, position: int, state_bytes: bytes) -> str | None:
        """None when the state at `position` is proven to be the fold of this log; otherwise why not."""
        seal = self._store.load_seal(position)
        if seal is None:
            return "it carries no seal"
        if not seal_holds(self._public_key_raw, seal, position, state_bytes):
            return "its seal does not verify (the state was changed, or sealed by another key)"
        return self._root_unproven_reason(position + 1, seal.root_hash)

    def _root_unproven_reason(self, size: int, root: bytes) -> str | None:
        if size > self._store.log_size():
            return f"it claims {size} events; the log holds {self._store.log_size()}"
        head = self._store.load_tree_head()
        if head is None or not verify_tree_head(self._public_key_raw, head):
            return "no signed tree head to bind it to"
        first, second = sorted([(size, root), (head.tree_size, head.root_hash)])
        try:
            proof = merkle.consistency_proof(self._store, first[0], second[0])
        except merkle.ProofError as error:
            return f"no consistency proof to the signed tree head of size {head.tree_size} ({error})"
        if not merkle.verify_consistency(first[0], second[0], first[1], second[1], proof):
            return f"its log root is not consistent with the signed tree head of size {head.tree_size}"
        return None

    def seal(self, position: int, state_bytes: bytes) -> StateSeal | None:
        """A seal for the state at `position` (None without the private key, or when no root can be had)."""
        if self._private_key is None:
            return None
        try:
            root = merkle.root_hash(self._store, position + 1)
        except merkle.ProofError as error:
            log.warning("not saving the state at position %d: no log root (%s); run `reserve-ledger verify`",
                        position, error)
            return None
        return seal_state(self._private_key, position, root, state_bytes)
