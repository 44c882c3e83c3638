"""BIP-322 generic signed messages, as proofs of key control: the formats, pure.

A signature proves control of an output script by being a valid spend of a virtual transaction:
  to_spend: version 0, locktime 0; one input (prevout 00..00:0xFFFFFFFF, sequence 0, scriptSig
            OP_0 PUSH32 message_hash); one output of 0 sats paying the script.
  to_sign:  version 0, locktime 0; one input spending to_spend:0 (sequence 0) whose witness (and, for a
            wrapped script, scriptSig) is the proof; one output of 0 sats paying OP_RETURN.
`message_hash` is the BIP-340 tagged hash with tag "BIP0322-signed-message". A "simple" signature is the
witness stack only; a "full" one is the whole to_sign transaction (needed when a scriptSig is). Running the
script is NOT done here: services/reserves/control.py hands both transactions to Bitcoin Core's interpreter
(libbitcoinkernel). docs/FORMATS-audit.md specifies the challenge and the signatures directory.
"""

import base64
import binascii
import hashlib
import struct

from ledger.anchoring import AnchoringError, ParsedTx, parse_transaction, sha256d

TAG = b"BIP0322-signed-message"
OP_RETURN_SCRIPT = b"\x6a"
SIGNATURE_SIZE_MAX_BYTES = 10_000      # a 15-of-15 P2WSH witness is under 1,200 bytes
WITNESS_ITEMS_MAX = 100
CHALLENGE_FORMAT = "reserve-ledger/control-challenge/v1"
SIGNATURES_FORMAT = "reserve-ledger/control-signatures/v1"
PROOF_REPORT_FORMAT = "reserve-ledger/control-proof/v1"


class SignatureMalformed(ValueError):
    """Not a BIP-322 signature: bad base64, a witness stack that does not parse, or a to_sign of the wrong form."""


def message_hash(message: bytes) -> bytes:
    tag = hashlib.sha256(TAG).digest()
    return hashlib.sha256(tag + tag + message).digest()


def _compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def _push(data: bytes) -> bytes:
    assert len(data) < 0x4C, len(data)
    return bytes([len(data)]) + data


def _serialize(version: int, prevout: bytes, vout: int, script_sig: bytes, sequence: int, value: int,
               script_pubkey: bytes, witness: tuple[bytes, ...], locktime: int) -> bytes:
    body = (b"\x01" + prevout + struct.pack("<I", vout) + _compact_size(len(script_sig)) + script_sig
            + struct.pack("<I", sequence) + b"\x01" + struct.pack("<q", value) + _compact_size(len(script_pubkey))
            + script_pubkey)
    if not witness:
        return struct.pack("<i", version) + body + struct.pack("<I", locktime)
    stack = _compact_size(len(witness)) + b"".join(_compact_size(len(item)) + item for item in witness)
    return struct.pack("<i", version) + b"\x00\x01" + body + stack + struct.pack("<I", locktime)


def to_spend(script_pubkey: bytes, message: bytes) -> bytes:
    """The virtual transaction whose output 0 pays the script; its txid binds the message."""
    script_sig = b"\x00" + _push(message_hash(message))
    return _serialize(0, bytes(32), 0xFFFFFFFF, script_sig, 0, 0, script_pubkey, (), 0)


def to_sign(to_spend_raw: bytes, witness: tuple[bytes, ...], script_sig: bytes = b"") -> bytes:
    """The virtual transaction spending to_spend:0 with this witness (a simple signature's transaction)."""
    return _serialize(0, sha256d(to_spend_raw), 0, script_sig, 0, 0, OP_RETURN_SCRIPT, witness, 0)


def encode_witness(witness: tuple[bytes, ...]) -> str:
    """A simple signature: base64 of the witness stack as serialised in a transaction."""
    return base64.b64encode(_compact_size(len(witness)) + b"".join(_compact_size(len(i)) + i for i in witness)).decode()


def signed_transaction(signature_b64: str, to_spend_raw: bytes) -> bytes:
    """The to_sign transaction a signature stands for: rebuilt from a simple signature's witness, or the full
    signature itself once checked to spend to_spend:0 into one OP_RETURN output of 0 sats."""
    raw = _decoded(signature_b64)
    witness = _witness_stack(raw)
    if witness is not None:
        return to_sign(to_spend_raw, witness)
    try:
        tx = parse_transaction(raw)
    except AnchoringError as error:
        raise SignatureMalformed(f"neither a witness stack nor a transaction ({error})") from None
    _check_full(tx, to_spend_raw)
    return raw


def _decoded(signature_b64: str) -> bytes:
    if not isinstance(signature_b64, str) or len(signature_b64) > SIGNATURE_SIZE_MAX_BYTES * 4 // 3 + 4:
        raise SignatureMalformed("not a base64 string of a plausible size")
    try:
        return base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureMalformed("not valid base64") from None


def _witness_stack(raw: bytes) -> tuple[bytes, ...] | None:
    """The stack when `raw` is exactly one serialised witness stack, else None."""
    position, items = 0, []

    def size() -> int:
        nonlocal position
        if position >= len(raw):
            raise IndexError
        first = raw[position]
        width = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first, 0)
        value = int.from_bytes(raw[position + 1:position + 1 + width], "little") if width else first
        position += 1 + width
        return value

    try:
        count = size()
        if not 0 < count <= WITNESS_ITEMS_MAX:
            return None
        for _ in range(count):
            length = size()
            if position + length > len(raw):
                return None
            items.append(raw[position:position + length])
            position += length
    except IndexError:
        return None
    return tuple(items) if position == len(raw) else None


def _check_full(tx: ParsedTx, to_spend_raw: bytes) -> None:
    if len(tx.inputs) != 1 or len(tx.outputs) != 1:
        raise SignatureMalformed("a full signature has exactly one input and one output")
    if (tx.inputs[0].prev_txid_internal, tx.inputs[0].vout) != (sha256d(to_spend_raw), 0):
        raise SignatureMalformed("the full signature does not spend this challenge's to_spend:0 (another message "
                                 "or another script)")
    if tx.outputs[0].value_sats != 0 or tx.outputs[0].script_pubkey != OP_RETURN_SCRIPT:
        raise SignatureMalformed("a full signature's output must be 0 sats to OP_RETURN")


# --- the challenge ------------------------------------------------------------------------------------------

def challenge_message(challenge: dict, account_id: str) -> bytes:
    """The message each script of an account signs: the auditor's nonce, the tree head and block the challenge
    refers to, and the account; one line each, UTF-8, no trailing newline."""
    return "\n".join([
        "Reserve Ledger proof of control",
        f"nonce {challenge['nonce']}",
        f"tree head {challenge['tree_size']} {challenge['root_hash']}",
        f"block {challenge['height']} {challenge['block_hash']}",
        f"account {account_id}"]).encode()
