"""Per-event proofs: from one event's bytes to a Bitcoin block header, as OpenTimestamps and as JSON.

Both formats prove the same chain of commitments (docs/FORMATS-anchoring.md):
  SHA256(event) -> RFC 9162 leaf -> tree root (inclusion proof) -> anchor transaction (OP_RETURN payload)
  -> txid -> block merkle root (merkleblock branch) -> block header at a height.
Neither proves that the header is on the best chain: the verifier looks the height up in its own node.
"""

import hashlib
import json

from opentimestamps.core.notary import BitcoinBlockHeaderAttestation
from opentimestamps.core.op import Op, OpAppend, OpPrepend, OpSHA256
from opentimestamps.core.serialize import BytesDeserializationContext, BytesSerializationContext, DeserializationError
from opentimestamps.core.timestamp import DetachedTimestampFile, Timestamp

from ledger.anchoring import (
    HEADER_SIZE_BYTES, MERKLEBLOCK_SIZE_MAX_BYTES, TREE_SIZE_MAX, TX_SIZE_MAX_BYTES, AnchoringError, ParsedTx,
    TxoutProof, display_hex, find_anchor_output, parse_transaction, sha256d, verify_txout_proof,
)
from ledger import merkle
from ledger.merkle import LEAF_PREFIX, NODE_PREFIX, leaf_hash, verify_inclusion

PROOF_FORMAT = "reserve-ledger/event-proof/v1"
# A 2**32-leaf log needs at most 32 steps (the payload's tree size is a uint32); more is never valid.
INCLUSION_PROOF_LENGTH_MAX = 32
OTS_SIZE_MAX_BYTES = 65_536
# Longest valid op chain: 2 (leaf) + 3 x 32 (log) + 4 (tx) + 3 x 14 (block) = 144; leave room, stay bounded.
OTS_OPS_MAX = 200
# A transaction must not be 64 bytes long, or it could pass as an inner merkle node (CVE-2017-12842).
FORBIDDEN_TX_SIZE_BYTES = 64


class EventProofInvalid(AnchoringError):
    """Base: a per-event proof that does not prove what it claims."""


class EventDigestMismatch(EventProofInvalid):
    pass


class InclusionProofInvalid(EventProofInvalid):
    pass


class AnchorPayloadMissing(EventProofInvalid):
    pass


class AnchorPayloadMismatch(EventProofInvalid):
    """The anchor transaction commits to another (tree size, root) than the proof claims."""


class AnchorTxidMismatch(EventProofInvalid):
    pass


class AnchorTxNotInBlock(EventProofInvalid):
    pass


class BlockHeaderMismatch(EventProofInvalid):
    pass


class ProofFieldInvalid(EventProofInvalid):
    pass


class OtsMalformed(EventProofInvalid):
    pass


class OtsShapeUnexpected(EventProofInvalid):
    """Not one linear chain of append/prepend/sha256 ending in one Bitcoin block header attestation."""


class OtsRootMismatch(EventProofInvalid):
    pass


# --- the op chain -----------------------------------------------------------------------------------------

def inclusion_steps(index: int, tree_size: int, proof: list[bytes]) -> list[tuple[bool, bytes]]:
    """ledger.merkle.inclusion_steps, bounded, its refusal named as this module's."""
    if len(proof) > INCLUSION_PROOF_LENGTH_MAX:
        raise InclusionProofInvalid(f"leaf {index} of {tree_size} with {len(proof)} hashes")
    try:
        return merkle.inclusion_steps(index, tree_size, proof)
    except merkle.ProofError as error:
        raise InclusionProofInvalid(str(error)) from None


def _log_ops(index: int, tree_size: int, proof: list[bytes]) -> list[Op]:
    ops: list[Op] = [OpPrepend(LEAF_PREFIX), OpSHA256()]
    for sibling_on_left, sibling in inclusion_steps(index, tree_size, proof):
        if sibling_on_left:
            ops += [OpPrepend(NODE_PREFIX + sibling), OpSHA256()]
        else:
            ops += [OpPrepend(NODE_PREFIX), OpAppend(sibling), OpSHA256()]
    return ops


def _tx_ops(tx: ParsedTx, root: bytes) -> list[Op]:
    """From the root inside the payload to the txid: the bytes around it, then SHA256 twice."""
    found = find_anchor_output(tx)
    if found is None:
        raise AnchorPayloadMissing(f"{tx.txid} carries no Reserve Ledger payload")
    start = tx.outputs[found[0]].script_offset + 2 + 8  # OP_RETURN, push length, magic, version, tree size
    assert tx.no_witness[start:start + 32] == root == found[1].root, (tx.txid, start)
    return [OpPrepend(tx.no_witness[:start]), OpAppend(tx.no_witness[start + 32:]), OpSHA256(), OpSHA256()]


def _block_ops(merkleblock: TxoutProof) -> list[Op]:
    (_txid, index), = merkleblock.matched
    ops: list[Op] = []
    for level, sibling in enumerate(merkleblock.branch):
        ops += [OpPrepend(sibling) if index >> level & 1 else OpAppend(sibling), OpSHA256(), OpSHA256()]
    return ops


def _checked_anchor(tree_size: int, anchor_tx_raw: bytes,
                    txout_proof_bytes: bytes) -> tuple[ParsedTx, TxoutProof, bytes]:
    """The parsed anchor, its merkleblock and the root it commits to; refuses any link that does not hold."""
    tx = parse_transaction(anchor_tx_raw)
    if len(tx.no_witness) == FORBIDDEN_TX_SIZE_BYTES:
        raise AnchorTxidMismatch("a 64-byte transaction is ambiguous with a merkle node")
    found = find_anchor_output(tx)
    if found is None:
        raise AnchorPayloadMissing(f"{tx.txid} carries no Reserve Ledger payload")
    payload = found[1]
    if payload.tree_size != tree_size:
        raise AnchorPayloadMismatch(f"the anchor commits to tree size {payload.tree_size}, not {tree_size}")
    merkleblock = verify_txout_proof(txout_proof_bytes)
    if [txid for txid, _ in merkleblock.matched] != [tx.txid_internal]:
        raise AnchorTxNotInBlock(f"the merkleblock does not prove exactly {tx.txid}")
    return tx, merkleblock, payload.root


# --- OpenTimestamps ---------------------------------------------------------------------------------------

def build_event_timestamp(event_bytes: bytes, index: int, tree_size: int, inclusion_proof: list[bytes],
                          anchor_tx_raw_no_witness: bytes, txout_proof_bytes: bytes,
                          block_height: int) -> DetachedTimestampFile:
    """An .ots whose file digest is SHA256(event_bytes) and whose single path ends at the block's merkle root."""
    tx, merkleblock, root = _checked_anchor(tree_size, anchor_tx_raw_no_witness, txout_proof_bytes)
    digest = hashlib.sha256(event_bytes).digest()
    timestamp = node = Timestamp(digest)
    for op in _log_ops(index, tree_size, inclusion_proof):
        node = node.ops.add(op)
    if node.msg != root:
        raise InclusionProofInvalid(f"event {index} does not fold to the anchored root of tree size {tree_size}")
    for op in _tx_ops(tx, root) + _block_ops(merkleblock):
        node = node.ops.add(op)
    assert node.msg == merkleblock.merkle_root, "the checked merkleblock branch must reach the header root"
    node.attestations.add(BitcoinBlockHeaderAttestation(block_height))
    return DetachedTimestampFile(OpSHA256(), timestamp)


def serialize_ots(timestamp_file: DetachedTimestampFile) -> bytes:
    ctx = BytesSerializationContext()
    timestamp_file.serialize(ctx)
    return ctx.getbytes()


def _parse_ots(ots_bytes: bytes) -> DetachedTimestampFile:
    if not isinstance(ots_bytes, bytes) or len(ots_bytes) > OTS_SIZE_MAX_BYTES:
        raise OtsMalformed(f".ots must be bytes of at most {OTS_SIZE_MAX_BYTES} bytes")
    try:
        return DetachedTimestampFile.deserialize(BytesDeserializationContext(ots_bytes))
    except (DeserializationError, ValueError, TypeError) as error:
        raise OtsMalformed(f"not a detached OpenTimestamps file: {error}") from None


def verify_event_timestamp(event_bytes: bytes, ots_bytes: bytes, block_header: bytes) -> int:
    """The attested block height, if the .ots takes SHA256(event_bytes) to ``block_header``'s merkle root.

    The caller must still check that ``block_header`` is the best-chain header at that height.
    """
    if len(block_header) != HEADER_SIZE_BYTES:
        raise BlockHeaderMismatch("a block header is 80 bytes")
    timestamp_file = _parse_ots(ots_bytes)
    if not isinstance(timestamp_file.file_hash_op, OpSHA256):
        raise OtsShapeUnexpected(f"file hash op is {timestamp_file.file_hash_op}, expected sha256")
    message = hashlib.sha256(event_bytes).digest()
    if timestamp_file.file_digest != message:
        raise EventDigestMismatch("the .ots is for another file")
    node = timestamp_file.timestamp
    for _ in range(OTS_OPS_MAX):
        if node.ops and node.attestations or len(node.ops) > 1:
            raise OtsShapeUnexpected("the timestamp branches")
        if not node.ops:
            break
        (op, node), = node.ops.items()
        if not isinstance(op, (OpAppend, OpPrepend, OpSHA256)):
            raise OtsShapeUnexpected(f"op {op} is not append, prepend or sha256")
        message = op(message)
    else:
        raise OtsShapeUnexpected(f"more than {OTS_OPS_MAX} ops")
    attestations = list(node.attestations)
    if len(attestations) != 1 or not isinstance(attestations[0], BitcoinBlockHeaderAttestation):
        raise OtsShapeUnexpected("the path must end in exactly one Bitcoin block header attestation")
    if message != block_header[36:68]:
        raise OtsRootMismatch("the .ots does not evaluate to the header's merkle root")
    return attestations[0].height


# --- JSON -------------------------------------------------------------------------------------------------

def event_proof_json(event_bytes: bytes, index: int, tree_size: int, inclusion_proof: list[bytes],
                     anchor_tx_raw: bytes, txout_proof_bytes: bytes, block_height: int) -> dict:
    """The per-event proof as a JSON-ready dict (docs/FORMATS-anchoring.md); every link is checked first."""
    tx, merkleblock, root = _checked_anchor(tree_size, anchor_tx_raw, txout_proof_bytes)
    if not verify_inclusion(leaf_hash(event_bytes), index, tree_size, inclusion_proof, root):
        raise InclusionProofInvalid(f"event {index} is not in the anchored tree of size {tree_size}")
    return {
        "format": PROOF_FORMAT,
        "event_sha256": hashlib.sha256(event_bytes).hexdigest(),
        "leaf_index": index,
        "tree_size": tree_size,
        "root": root.hex(),
        "inclusion_proof": [h.hex() for h in inclusion_proof],
        "anchor_txid": tx.txid,
        "anchor_tx": tx.no_witness.hex(),
        "merkleblock": txout_proof_bytes.hex(),
        "block_hash": merkleblock.block_hash,
        "block_height": block_height,
        "block_header": merkleblock.header.hex(),
    }


_FIELDS = {
    "format": str, "event_sha256": str, "leaf_index": int, "tree_size": int, "root": str,
    "inclusion_proof": list, "anchor_txid": str, "anchor_tx": str, "merkleblock": str, "block_hash": str,
    "block_height": int, "block_header": str,
}


def _hex_field(proof: dict, name: str, length: int | None = None, length_max: int | None = None) -> bytes:
    text = proof[name]
    if text != text.lower():
        raise ProofFieldInvalid(f"{name} must be lowercase hex")
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ProofFieldInvalid(f"{name} is not hex") from None
    if length is not None and len(value) != length or length_max is not None and len(value) > length_max:
        raise ProofFieldInvalid(f"{name} has the wrong length ({len(value)} bytes)")
    return value


def _checked_fields(proof: dict) -> None:
    if not isinstance(proof, dict) or set(proof) != set(_FIELDS):
        raise ProofFieldInvalid(f"expected exactly the fields {sorted(_FIELDS)}")
    for name, kind in _FIELDS.items():
        if not isinstance(proof[name], kind) or isinstance(proof[name], bool):
            raise ProofFieldInvalid(f"{name} must be a JSON {kind.__name__}")
    if proof["format"] != PROOF_FORMAT:
        raise ProofFieldInvalid(f"unknown format {proof['format']!r}")
    if not 0 <= proof["leaf_index"] < proof["tree_size"] <= TREE_SIZE_MAX or proof["block_height"] < 0:
        raise ProofFieldInvalid("leaf index, tree size or block height out of range")
    if len(proof["inclusion_proof"]) > INCLUSION_PROOF_LENGTH_MAX:
        raise ProofFieldInvalid("inclusion proof too long")
    if not all(isinstance(h, str) for h in proof["inclusion_proof"]):
        raise ProofFieldInvalid("inclusion proof hashes must be hex strings")


def verify_event_proof_json(event_bytes: bytes, proof: dict, block_header: bytes) -> None:
    """Raise unless ``proof`` takes ``event_bytes`` to ``block_header``; the caller checks the header's
    place in its best chain (``block_height`` and ``block_hash``)."""
    _checked_fields(proof)
    if _hex_field(proof, "event_sha256", 32) != hashlib.sha256(event_bytes).digest():
        raise EventDigestMismatch("the proof is for another event")
    root = _hex_field(proof, "root", 32)
    path = [_hex_field({"h": h}, "h", 32) for h in proof["inclusion_proof"]]
    if not verify_inclusion(leaf_hash(event_bytes), proof["leaf_index"], proof["tree_size"], path, root):
        raise InclusionProofInvalid("the inclusion proof does not lead from the event to the root")
    tx_raw = _hex_field(proof, "anchor_tx", length_max=TX_SIZE_MAX_BYTES)
    merkleblock_raw = _hex_field(proof, "merkleblock", length_max=MERKLEBLOCK_SIZE_MAX_BYTES)
    tx, merkleblock, anchored_root = _checked_anchor(proof["tree_size"], tx_raw, merkleblock_raw)
    if anchored_root != root:
        raise AnchorPayloadMismatch("the anchor transaction commits to another root")
    if tx.txid != proof["anchor_txid"]:
        raise AnchorTxidMismatch(f"anchor_tx hashes to {tx.txid}, not {proof['anchor_txid']}")
    header = _hex_field(proof, "block_header", HEADER_SIZE_BYTES)
    if not header == merkleblock.header == block_header:
        raise BlockHeaderMismatch("block_header, the merkleblock's header and the given header differ")
    if proof["block_hash"] != display_hex(sha256d(block_header)):
        raise BlockHeaderMismatch("block_hash is not the hash of the header")


def dumps_proof(proof: dict) -> str:
    """Canonical text of a JSON proof: sorted keys, no spaces; byte-identical across rebuilds."""
    return json.dumps(proof, sort_keys=True, separators=(",", ":"))
