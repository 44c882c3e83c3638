"""Seals on saved states: a saved projection or checkpoint is evidence, used only once proven.

A saved state (ledger.state.ReserveState.to_bytes()) claims to be the fold of the log's events 0..position.
The service seals it with the tree-head key (a key the database does not hold); the seal binds it to the
log it summarises. Signed message (docs/FORMATS.md §6), 94 bytes:
  b"reserve-ledger/state/v1\\n"   24 bytes, domain separation (never a valid tree-head message)
  position                      8 bytes, unsigned big-endian: the last event folded in
  root_hash                     32 bytes, RFC 9162 root of the log of size position + 1
  state_digest                  32 bytes, SHA-256 of the state bytes
The signature proves who computed the state; the root ties it to this log: the loader must check it
against a root it trusts (a signed tree head, through a consistency proof), never against stored nodes alone.
"""

import dataclasses
import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.tree_heads import key_id

SEAL_DOMAIN = b"reserve-ledger/state/v1\n"
SEAL_MESSAGE_BYTES = len(SEAL_DOMAIN) + 8 + 32 + 32
POSITION_MAX = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class StateSeal:
    position: int
    root_hash: bytes
    signature: bytes
    key_id: str


def seal_message(position: int, root_hash: bytes, state_bytes: bytes) -> bytes:
    """What a seal signs: the position, the log's root at size position + 1 and the state's digest."""
    if not 0 <= position <= POSITION_MAX:
        raise ValueError(f"a saved state's position must be from 0 to {POSITION_MAX}, not {position}")
    if len(root_hash) != 32:
        raise ValueError("root hash must be 32 bytes")
    return SEAL_DOMAIN + struct.pack(">Q", position) + root_hash + hashlib.sha256(state_bytes).digest()


def seal_state(private_key: Ed25519PrivateKey, position: int, root_hash: bytes, state_bytes: bytes) -> StateSeal:
    signature = private_key.sign(seal_message(position, root_hash, state_bytes))
    return StateSeal(position, root_hash, signature, key_id(private_key.public_key()))


def seal_holds(public_key_raw: bytes, seal: StateSeal, position: int, state_bytes: bytes) -> bool:
    """True only if `seal` is a valid signature by the key over these state bytes at this position."""
    try:
        public_key = Ed25519PublicKey.from_public_bytes(public_key_raw)
        if seal.position != position or seal.key_id != key_id(public_key):
            return False
        public_key.verify(seal.signature, seal_message(position, seal.root_hash, state_bytes))
    except (InvalidSignature, ValueError):
        return False
    return True
