"""Signed tree heads: (tree size, root hash, timestamp) signed with the service's Ed25519 key.

Signed message (docs/FORMATS.md), 70 bytes:
  b"reserve-ledger/sth/v1\\n"   22 bytes, domain separation
  tree_size                     8 bytes, unsigned big-endian
  timestamp_us                  8 bytes, unsigned big-endian, microseconds since the Unix epoch (UTC)
  root_hash                     32 bytes, RFC 9162 root (ledger.merkle)
The key id is the lowercase hex SHA-256 of the raw 32-byte public key.
"""

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SIGNED_DOMAIN = b"reserve-ledger/sth/v1\n"


@dataclass(frozen=True)
class TreeHead:
    tree_size: int
    root_hash: bytes
    timestamp_us: int
    signature: bytes
    key_id: str


def signed_message(tree_size: int, root_hash: bytes, timestamp_us: int) -> bytes:
    if len(root_hash) != 32:
        raise ValueError("root hash must be 32 bytes")
    return SIGNED_DOMAIN + struct.pack(">QQ", tree_size, timestamp_us) + root_hash


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()


def sign_tree_head(private_key: Ed25519PrivateKey, tree_size: int, root_hash: bytes, timestamp_us: int) -> TreeHead:
    signature = private_key.sign(signed_message(tree_size, root_hash, timestamp_us))
    return TreeHead(tree_size, root_hash, timestamp_us, signature, key_id(private_key.public_key()))


def verify_tree_head(public_key_raw: bytes, head: TreeHead) -> bool:
    """True only if ``head`` carries a valid signature by the 32-byte Ed25519 key ``public_key_raw``."""
    try:
        public_key = Ed25519PublicKey.from_public_bytes(public_key_raw)
        if head.key_id != key_id(public_key):
            return False
        public_key.verify(head.signature, signed_message(head.tree_size, head.root_hash, head.timestamp_us))
    except (InvalidSignature, ValueError):
        return False
    return True


def superseded_head_kept(superseded_size: int, retained_size: int | None, keep_every_events: int) -> bool:
    """Whether the latest head stays stored once a newer head supersedes it (docs/FORMATS.md §3).

    ``retained_size`` is the size of the largest head kept before it (None: there is none). A head is kept
    when it is the first to reach a new multiple of ``keep_every_events``; the others are pruned, so a log of
    n events keeps about n / keep_every_events heads, each provably consistent with the ones before it.
    """
    assert keep_every_events > 0 and (retained_size is None or retained_size < superseded_size), retained_size
    return retained_size is None or superseded_size // keep_every_events > retained_size // keep_every_events
