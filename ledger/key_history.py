"""The tree-head key's history: the first key (pinned by the auditor) and each SigningKeyRotated event after it.

A rotation recorded at log position p hands the log from key A to key B: heads of tree size <= p are signed
by A, heads of size >= p + 1 (those that include the rotation) by B. The event carries B and two Ed25519
signatures over the same statement (docs/FORMATS.md §3a), 95 bytes:
  b"reserve-ledger/key-rotation/v1\\n"   31 bytes, domain separation
  previous_public_key                   32 bytes, raw Ed25519 (A)
  public_key                            32 bytes, raw Ed25519 (B)
signed by A (A hands over) and by B (B exists and accepts). Whoever follows the history starts from the
first key it trusts and takes a rotation only when it names the current key and both signatures hold; a
rotation that does not leaves every later head without a key.
"""

import dataclasses

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ROTATION_DOMAIN = b"reserve-ledger/key-rotation/v1\n"
ROTATION_EVENT = "SigningKeyRotated"


def rotation_message(previous_public_key: bytes, public_key: bytes) -> bytes:
    if len(previous_public_key) != 32 or len(public_key) != 32:
        raise ValueError("Ed25519 public keys are 32 bytes")
    return ROTATION_DOMAIN + previous_public_key + public_key


def rotation_signatures_hold(previous_public_key: bytes, public_key: bytes, previous_key_signature: bytes,
                             new_key_signature: bytes) -> bool:
    """Both keys signed the statement "previous_public_key hands over to public_key"."""
    try:
        message = rotation_message(previous_public_key, public_key)
        Ed25519PublicKey.from_public_bytes(previous_public_key).verify(previous_key_signature, message)
        Ed25519PublicKey.from_public_bytes(public_key).verify(new_key_signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Rotation:
    position: int                 # of the SigningKeyRotated event
    previous_public_key: bytes
    public_key: bytes
    signatures_hold: bool


def rotation_of(event: dict) -> Rotation | None:
    """The rotation a canonical event records (None for any other event; a malformed one never holds)."""
    if event.get("type") != ROTATION_EVENT:
        return None
    data = event.get("data") or {}
    try:
        fields = [bytes.fromhex(data[name]) for name in
                  ("previous_public_key", "public_key", "previous_key_signature", "new_key_signature")]
    except (KeyError, TypeError, ValueError):
        return Rotation(event.get("position", -1), b"", b"", False)
    return Rotation(event["position"], fields[0], fields[1], rotation_signatures_hold(*fields))


class KeyHistory:
    """Follows the rotations of a log, in order, from its first key."""

    def __init__(self) -> None:
        self.rotations: list[Rotation] = []

    def observe(self, event: dict) -> None:
        rotation = rotation_of(event)
        if rotation is not None:
            self.rotations.append(rotation)

    def first_key(self, current_key: bytes) -> bytes:
        """The first key of the log, from the key it is signed with now: the first rotation's previous key."""
        return self.rotations[0].previous_public_key if self.rotations else current_key

    def first_key_for(self, given_key: bytes) -> bytes:
        """The first key to follow the history from, given the first key itself or the key in force now (what
        an operator holds): the first rotation's previous key when the rotations lead from it to the key given;
        otherwise the key given (and heads signed by any other key fail)."""
        first = self.first_key(given_key)
        return first if given_key in (first, self.last_key(first)) else given_key

    def problems(self, first_key: bytes) -> list[tuple[int, str]]:
        """(position, why) for each rotation that does not hand over from the key current at its position."""
        found, current = [], first_key
        for rotation in self.rotations:
            if current is None:
                break
            if rotation.previous_public_key != current:
                found.append((rotation.position, "the key rotation does not start from the key in force "
                                                 f"({current.hex()[:16]}…)"))
                current = None
            elif not rotation.signatures_hold:
                found.append((rotation.position, "the key rotation's signatures by the old and the new key do not "
                                                 "both verify"))
                current = None
            else:
                current = rotation.public_key
        return found

    def key_at(self, tree_size: int, first_key: bytes) -> bytes | None:
        """The key that signs heads of `tree_size`; None after a rotation that does not hold."""
        current: bytes | None = first_key
        for rotation in self.rotations:
            if rotation.position >= tree_size or current is None:
                break
            holds = rotation.previous_public_key == current and rotation.signatures_hold
            current = rotation.public_key if holds else None
        return current

    def last_key(self, first_key: bytes) -> bytes | None:
        return self.key_at(2 ** 63, first_key)
