"""The log's side of witnessing: each signed tree head as a C2SP checkpoint note signed with the tree-head key,
and the cosignatures witnesses returned for it (stored by services/witness/gatherer.py).

The checkpoint signs only (origin, size, root): the same tree-head key signs it as a plain Ed25519 note
signature (key ID byte 0x01), so any signed-note implementation checks it with the log's vkey. Ed25519 is
deterministic: the note of a given head is the same bytes every time it is made.
"""

import hashlib

from ledger.tree_heads import TreeHead
from services.witness import note

DEFAULT_ORIGIN_PREFIX = "reserve-ledger.local/"


def default_origin(public_key_raw: bytes) -> str:
    """A name unique to this log when none is configured: derived from its first tree-head key.
    Production logs set --log-origin to a name they control (reserves.bank.example/ledger)."""
    return DEFAULT_ORIGIN_PREFIX + hashlib.sha256(public_key_raw).hexdigest()[:16]


class LogCheckpoints:
    """Makes signed checkpoints of tree heads, and joins them with the stored cosignatures."""

    def __init__(self, origin: str | None, signer: note.Signer):
        self.origin = origin or default_origin(signer.public_key_raw)
        self._signer = signer
        self.vkey = note.verifier_key(self.origin, note.ALG_ED25519, signer.public_key_raw)

    def signed(self, head: TreeHead) -> note.Note:
        return note.sign_checkpoint(note.checkpoint(self.origin, head.tree_size, head.root_hash), self._signer)

    def with_cosignatures(self, head: TreeHead, store) -> tuple[note.Note, list[dict]]:
        """The head's checkpoint with every cosignature stored for it (rows: witness, signature_line, timestamp_s).

        A head that was cosigned is served as it was sent to the witnesses (the same bytes a local export
        reads), whatever origin this process is configured with; any other head is signed now."""
        return cosigned(store, head.tree_size, head.root_hash) or (self.signed(head), [])


def cosigned(store, tree_size: int, root_hash: bytes | None = None) -> tuple[note.Note, list[dict]] | None:
    """The log-signed checkpoint of ``tree_size`` as stored when it was sent, with every stored cosignature of
    it (read without the key: exports, and heads pruned since); None when none is stored (for that root)."""
    rows = store.list_cosignatures(tree_size)
    if not rows:
        return None
    first = note.parse_note(rows[0]["checkpoint"].encode())
    if root_hash is not None and note.parse_checkpoint(first.text).root_hash != root_hash:
        return None
    same = [row for row in rows if row["checkpoint"] == rows[0]["checkpoint"]]
    lines = tuple(note.parse_signature_line(row["signature_line"].rstrip("\n")) for row in same)
    return note.Note(first.text, first.signatures + lines), same


def stored_checkpoint(store, tree_size: int) -> bytes | None:
    found = cosigned(store, tree_size)
    return None if found is None else found[0].encode()


def log_vkey_text(origin: str | None, public_key_raw: bytes) -> str:
    """The log's vkey: its origin (or the default one) and its tree-head key."""
    return note.verifier_key(origin or default_origin(public_key_raw), note.ALG_ED25519, public_key_raw).text()


def origin_of(note_text: str) -> str:
    return note.parse_checkpoint(note.parse_note(note_text.encode()).text).origin
