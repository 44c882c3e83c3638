"""C2SP signed notes, checkpoints and Ed25519 cosignatures (c2sp.org/signed-note, tlog-checkpoint,
tlog-cosignature): the text formats any transparency-log tool reads. Pure: no storage, no clock, no network.

A note is a UTF-8 text of newline-terminated lines, a blank line, then signature lines
``— <key name> <base64(4-byte key ID || signature)>`` (U+2014). For a key of algorithm byte ``alg`` the key ID
is SHA-256(name || "\\n" || alg || public key)[:4]: 0x01 for a plain Ed25519 note signature (the log's),
0x04 for a ``cosignature/v1`` (a witness's), whose signature bytes are an 8-byte big-endian timestamp and an
Ed25519 signature over "cosignature/v1\\ntime <t>\\n" + the checkpoint body. Verifier keys travel as *vkeys*:
``<name>+<key ID, 8 hex digits>+<base64(alg || public key)>``. docs/FORMATS.md §8 describes every byte.
"""

import base64
import binascii
import dataclasses
import hashlib
import struct
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger import limits, merkle

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
ALGORITHMS = (ALG_ED25519, ALG_COSIGNATURE_V1)
SIGNATURE_DASH = "\u2014 "
KEY_ID_BYTES = 4
PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
TIMESTAMP = struct.Struct(">Q")
COSIGNATURE_HEADER = "cosignature/v1\n"
TIMESTAMP_MAX_S = 2**63 - 1


class NoteInvalid(ValueError):
    """A note, checkpoint, vkey or signature line that does not follow the format."""


class Signer(Protocol):
    """An Ed25519 key that signs without showing itself (a key file or a PKCS#11 token)."""

    public_key_raw: bytes

    def sign(self, message: bytes) -> bytes: ...


class KeySigner:
    """A Signer over an in-memory Ed25519 private key (a key file)."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_key_raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


# --- key names, key IDs and vkeys -------------------------------------------------------------------------

def check_key_name(name: str) -> str:
    """A key name is non-empty, at most KEY_NAME_LENGTH_MAX characters, without spaces, '+' or control characters."""
    if not name or len(name) > limits.KEY_NAME_LENGTH_MAX or "+" in name or any(
            c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise NoteInvalid(f"key name {name[:64]!r} must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, alg: int, public_key_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key_raw).digest()[:KEY_ID_BYTES]


@dataclasses.dataclass(frozen=True)
class VerifierKey:
    name: str
    alg: int
    public_key_raw: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key_raw)

    def text(self) -> str:
        """The vkey form, as golang.org/x/mod/sumdb/note reads it."""
        encoded = base64.b64encode(bytes([self.alg]) + self.public_key_raw).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"


def verifier_key(name: str, alg: int, public_key_raw: bytes) -> VerifierKey:
    if alg not in ALGORITHMS or len(public_key_raw) != PUBLIC_KEY_BYTES:
        raise NoteInvalid(f"a verifier key is an Ed25519 key (32 bytes) of algorithm 0x01 or 0x04, not {alg:#04x}")
    return VerifierKey(check_key_name(name), alg, bytes(public_key_raw))


def parse_vkey(text: str) -> VerifierKey:
    """Parse ``name+hexid+base64``; refuses a wrong ID, algorithm, length or encoding."""
    name, sep1, rest = text.partition("+")
    hex_id, sep2, encoded = rest.partition("+")
    if not (sep1 and sep2) or len(hex_id) != 2 * KEY_ID_BYTES or hex_id != hex_id.lower():
        raise NoteInvalid("a vkey is NAME+KEYID+BASE64 with an 8-hex-digit key ID")
    raw = _b64decode(encoded, "vkey")
    if len(raw) != 1 + PUBLIC_KEY_BYTES:
        raise NoteInvalid("a vkey carries one algorithm byte and a 32-byte Ed25519 key")
    key = verifier_key(name, raw[0], raw[1:])
    if key.key_id.hex() != hex_id:
        raise NoteInvalid(f"vkey {name!r}: key ID {hex_id} does not match its key ({key.key_id.hex()})")
    return key


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise NoteInvalid(f"{what}: not standard base64") from None
    if base64.b64encode(raw).decode() != text:
        raise NoteInvalid(f"{what}: not canonical base64")
    return raw


# --- notes ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes   # the bytes after the key ID

    def line(self) -> str:
        return f"{SIGNATURE_DASH}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


@dataclasses.dataclass(frozen=True)
class Note:
    text: str                           # the body, newline-terminated, signatures excluded
    signatures: tuple[Signature, ...]

    def encode(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()


def check_text(text: str) -> str:
    """A note body: newline-terminated lines, no control characters but newline (signed-note)."""
    if not text.endswith("\n") or any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in text):
        raise NoteInvalid("a note text is newline-terminated lines without control characters")
    return text


def parse_signature_line(line: str) -> Signature:
    if not line.startswith(SIGNATURE_DASH):
        raise NoteInvalid(f"signature line {line[:40]!r} does not start with '\u2014 '")
    name, sep, encoded = line[len(SIGNATURE_DASH):].partition(" ")
    if not sep:
        raise NoteInvalid("a signature line is '\u2014 NAME BASE64'")
    raw = _b64decode(encoded, f"signature of {name[:64]!r}")
    if len(raw) <= KEY_ID_BYTES:
        raise NoteInvalid(f"signature of {name[:64]!r} is too short")
    return Signature(check_key_name(name), raw[:KEY_ID_BYTES], raw[KEY_ID_BYTES:])


def parse_signature_lines(text: str) -> tuple[Signature, ...]:
    """Newline-terminated signature lines (a witness's response, or the end of a note)."""
    if not text.endswith("\n"):
        raise NoteInvalid("signature lines must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) > limits.NOTE_SIGNATURES_MAX:
        raise NoteInvalid(f"more than {limits.NOTE_SIGNATURES_MAX} signatures")
    return tuple(parse_signature_line(line) for line in lines)


def parse_note(data: bytes) -> Note:
    """Split a signed note into its text and signature lines (syntax only; nothing is verified here)."""
    if len(data) > limits.NOTE_SIZE_MAX_BYTES:
        raise NoteInvalid(f"a note is at most {limits.NOTE_SIZE_MAX_BYTES} bytes")
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteInvalid("a note is UTF-8 text") from None
    split = whole.rfind("\n\n")
    if split < 0:
        raise NoteInvalid("a note needs a blank line before its signatures")
    text, signatures = whole[:split + 1], whole[split + 2:]
    return Note(check_text(text), parse_signature_lines(signatures))


def matching(note: Note, key: VerifierKey) -> list[Signature]:
    """The note's signatures whose name and key ID are the key's (others are ignored, as the spec says)."""
    return [s for s in note.signatures if s.name == key.name and s.key_id == key.key_id]


def _ed25519_verifies(public_key_raw: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- plain Ed25519 note signatures (the log's) ------------------------------------------------------------

def sign_text(text: str, name: str, signer: Signer) -> Signature:
    key = verifier_key(name, ALG_ED25519, signer.public_key_raw)
    return Signature(key.name, key.key_id, signer.sign(check_text(text).encode()))


def verify_signature(text: str, signature: Signature, key: VerifierKey) -> bool:
    """True only if ``signature`` is ``key``'s Ed25519 note signature over ``text``."""
    return (key.alg == ALG_ED25519 and (signature.name, signature.key_id) == (key.name, key.key_id)
            and len(signature.signature) == ED25519_SIGNATURE_BYTES
            and _ed25519_verifies(key.public_key_raw, signature.signature, text.encode()))


def open_note(data: bytes, key: VerifierKey) -> Note:
    """Parse a note and require a valid signature by ``key``; a signature line that names the key but does not
    verify makes the whole note invalid (as in the Go reference implementation)."""
    note = parse_note(data)
    candidates = matching(note, key)
    if not candidates:
        raise NoteInvalid(f"the note carries no signature by {key.name}+{key.key_id.hex()}")
    if not all(verify_signature(note.text, s, key) for s in candidates):
        raise NoteInvalid(f"invalid signature for key {key.name}+{key.key_id.hex()}")
    return note


# --- checkpoints (tlog-checkpoint) --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.tree_size), base64.b64encode(self.root_hash).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)


def checkpoint(origin: str, tree_size: int, root_hash: bytes, extensions: tuple[str, ...] = ()) -> Checkpoint:
    if not origin or len(origin) > limits.KEY_NAME_LENGTH_MAX or tree_size < 0 or \
            len(root_hash) != merkle.HASH_SIZE_BYTES:
        raise NoteInvalid("a checkpoint has a non-empty origin, a size of 0 or more and a 32-byte root")
    made = Checkpoint(origin, tree_size, bytes(root_hash), tuple(extensions))
    check_text(made.text())
    if "\n" in origin or any(not line or "\n" in line for line in extensions):
        raise NoteInvalid("checkpoint lines must be non-empty single lines")
    return made


def parse_checkpoint(text: str) -> Checkpoint:
    lines = check_text(text)[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise NoteInvalid("a checkpoint is at least three non-empty lines: origin, size, root")
    origin, size, root = lines[:3]
    if not size.isascii() or not size.isdigit() or (size != "0" and size.startswith("0")):
        raise NoteInvalid(f"checkpoint size {size[:32]!r} is not a decimal without leading zeros")
    root_hash = _b64decode(root, "checkpoint root")
    if len(root_hash) != merkle.HASH_SIZE_BYTES:
        raise NoteInvalid("a checkpoint root is 32 bytes")
    return checkpoint(origin, int(size), root_hash, tuple(lines[3:]))


def sign_checkpoint(made: Checkpoint, signer: Signer, name: str | None = None) -> Note:
    """The checkpoint as a note signed by the log's key, named by its origin unless ``name`` is given."""
    text = made.text()
    return Note(text, (sign_text(text, name or made.origin, signer),))


# --- cosignature/v1 (a witness's Ed25519 cosignature) ------------------------------------------------------

def cosignature_message(text: str, timestamp_s: int) -> bytes:
    return (COSIGNATURE_HEADER + f"time {timestamp_s}\n" + check_text(text)).encode()


def cosign(text: str, name: str, signer: Signer, timestamp_s: int) -> Signature:
    """A cosignature/v1 over the checkpoint body ``text`` at ``timestamp_s`` (seconds since the epoch)."""
    if not 0 < timestamp_s <= TIMESTAMP_MAX_S:
        raise NoteInvalid("a cosignature's timestamp is between 1 and 2^63 - 1")
    key = verifier_key(name, ALG_COSIGNATURE_V1, signer.public_key_raw)
    signed = signer.sign(cosignature_message(text, timestamp_s))
    return Signature(key.name, key.key_id, TIMESTAMP.pack(timestamp_s) + signed)


def cosignature_time_s(text: str, signature: Signature, key: VerifierKey) -> int | None:
    """The cosignature's timestamp if it is ``key``'s valid cosignature/v1 over ``text``; None otherwise."""
    if key.alg != ALG_COSIGNATURE_V1 or (signature.name, signature.key_id) != (key.name, key.key_id):
        return None
    if len(signature.signature) != TIMESTAMP.size + ED25519_SIGNATURE_BYTES:
        return None
    (timestamp_s,) = TIMESTAMP.unpack(signature.signature[:TIMESTAMP.size])
    if not 0 < timestamp_s <= TIMESTAMP_MAX_S:
        return None
    message = cosignature_message(text, timestamp_s)
    return timestamp_s if _ed25519_verifies(key.public_key_raw, signature.signature[TIMESTAMP.size:], message) else None
