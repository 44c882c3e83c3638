"""Per-event proofs: the .ots chain from SHA256(event) to a block header and the JSON proof, built for a
synthetic block (our anchor among dummy txids, a header committing to them) and refused when tampered.

Independent references: opentimestamps' own deserialiser and `all_attestations()` evaluate our files;
`opentimestamps.bitcoin.make_timestamp_from_block` builds the tx-to-header segment for a block of real
transactions, which must equal ours op for op; ledger.merkle.verify_inclusion checks the log segment.
"""

import hashlib
import json
import struct

import bitcoin.core
import pytest
from opentimestamps.bitcoin import make_timestamp_from_block
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.op import OpAppend, OpPrepend, OpSHA1, OpSHA256
from opentimestamps.core.serialize import BytesDeserializationContext
from opentimestamps.core.timestamp import DetachedTimestampFile, Timestamp

from ledger import anchoring as an
from ledger import event_proofs as ep
from ledger import merkle
from services.bitcoin import anchor_tx as at

KEY = at.AnchorKey(hashlib.sha256(b"event proofs key").digest(), "regtest")
HEIGHT = 812_345


def header_for(root: bytes) -> bytes:
    return struct.pack("<I", 0x20000000) + bytes(32) + root + struct.pack("<III", 1_700_000_000, 0x207FFFFF, 0)


class Anchored:
    """A log of ``size`` events anchored by one transaction at ``position`` among ``block_size`` txids."""

    def __init__(self, size: int, block_size: int = 9, position: int = 6):
        self.events = [b'{"position":%d}' % i for i in range(size)]
        self.store = merkle.MemoryNodeStore()
        for event in self.events:
            self.store.append(merkle.leaf_hash(event))
        self.size, self.root = size, merkle.root_hash(self.store, size)
        funding = an.Utxo(hashlib.sha256(b"funding %d" % size).hexdigest(), 0, 50_000)
        self.anchor = at.build_anchor_tx(funding, KEY, an.encode_payload(size, self.root), 1, 5_000, HEIGHT - 1)
        self.tx = an.parse_transaction(self.anchor.raw)
        ids = [hashlib.sha256(b"dummy %d" % i).digest() for i in range(block_size - 1)]
        ids.insert(position, self.tx.txid_internal)
        self.header = header_for(an.block_merkle_levels(ids)[-1][0])
        self.merkleblock = an.build_txout_proof(self.header, ids, position)

    def proof(self, index: int) -> list[bytes]:
        return merkle.inclusion_proof(self.store, index, self.size)

    def ots(self, index: int) -> bytes:
        return ep.serialize_ots(ep.build_event_timestamp(
            self.events[index], index, self.size, self.proof(index), self.tx.no_witness, self.merkleblock, HEIGHT))

    def json(self, index: int) -> dict:
        return ep.event_proof_json(self.events[index], index, self.size, self.proof(index), self.anchor.raw,
                                   self.merkleblock, HEIGHT)


@pytest.fixture(scope="module")
def log37():
    return Anchored(37)


def ops_of(timestamp_file: DetachedTimestampFile) -> list:
    ops, node = [], timestamp_file.timestamp
    while node.ops:
        (op, node), = node.ops.items()
        ops.append(op)
    return ops


def chain(digest: bytes, ops: list, height: int = HEIGHT) -> bytes:
    """A linear .ots from a list of ops (for tampered variants)."""
    timestamp = node = Timestamp(digest)
    for op in ops:
        node = node.ops.add(op)
    node.attestations.add(BitcoinBlockHeaderAttestation(height))
    return ep.serialize_ots(DetachedTimestampFile(OpSHA256(), timestamp))


# --- .ots -------------------------------------------------------------------------------------------------

def test_ots_for_every_event_evaluates_to_the_header_with_the_stock_library(log37):
    for index in range(log37.size):
        ots = log37.ots(index)
        parsed = DetachedTimestampFile.deserialize(BytesDeserializationContext(ots))
        assert parsed.file_digest == hashlib.sha256(log37.events[index]).digest()
        assert list(parsed.timestamp.all_attestations()) == [
            (log37.header[36:68], BitcoinBlockHeaderAttestation(HEIGHT))], index
        assert ep.verify_event_timestamp(log37.events[index], ots, log37.header) == HEIGHT


def test_ots_log_segment_follows_rfc9162_for_every_shape():
    """Every index of every tree size 1..33: the ops reach the root the log's verify_inclusion accepts."""
    for size in range(1, 34):
        log = Anchored(size, block_size=1, position=0)
        for index in range(size):
            ots = log.ots(index)
            assert ep.verify_event_timestamp(log.events[index], ots, log.header) == HEIGHT, (size, index)
            node = DetachedTimestampFile.deserialize(BytesDeserializationContext(ots)).timestamp
            steps = 2 + sum(2 if left else 3 for left, _ in ep.inclusion_steps(index, size, log.proof(index)))
            for _ in range(steps):
                (_op, node), = node.ops.items()
            assert node.msg == log.root, (size, index)


def test_ots_op_sequence_is_the_documented_one(log37):
    """Leaf: prepend 00, sha256; log: prepend 01||L, sha256 or prepend 01, append R, sha256; tx; block."""
    index = 5  # in a 37-leaf tree the siblings are 4, [6,8), [0,4), [8,16), [16,32), [32,37)
    ops = ops_of(DetachedTimestampFile.deserialize(BytesDeserializationContext(log37.ots(index))))
    proof = log37.proof(index)
    expected = [OpPrepend(b"\x00"), OpSHA256()]
    for sibling, side in zip(proof, "LRLRRR", strict=True):
        if side == "L":
            expected += [OpPrepend(b"\x01" + sibling), OpSHA256()]
        else:
            expected += [OpPrepend(b"\x01"), OpAppend(sibling), OpSHA256()]
    assert ops[:len(expected)] == expected
    nw = log37.tx.no_witness
    start = nw.index(log37.root)
    assert ops[len(expected):len(expected) + 4] == [OpPrepend(nw[:start]), OpAppend(nw[start + 32:]),
                                                    OpSHA256(), OpSHA256()]
    assert len(ops) == len(expected) + 4 + 3 * 4  # 9 txids: a 4-level block tree


def test_tx_to_header_segment_equals_opentimestamps_own_builder():
    """For a block of real transactions, our segment from the root on equals make_timestamp_from_block's."""
    log = Anchored(20)
    others = [at.build_anchor_tx(an.Utxo(hashlib.sha256(b"other %d" % i).hexdigest(), 0, 60_000), KEY,
                                 an.encode_payload(i, hashlib.sha256(b"%d" % i).digest()), 1, 5_000, 7).raw
              for i in range(4)]
    raws = others[:3] + [log.anchor.raw] + others[3:]
    ids = [an.parse_transaction(raw).txid_internal for raw in raws]
    header = header_for(an.block_merkle_levels(ids)[-1][0])
    block = bitcoin.core.CBlock(nVersion=0x20000000, hashMerkleRoot=header[36:68], nTime=1_700_000_000,
                                nBits=0x207FFFFF, vtx=[bitcoin.core.CTransaction.deserialize(raw) for raw in raws])
    theirs = make_timestamp_from_block(log.root, block, HEIGHT)
    timestamp_file = ep.build_event_timestamp(log.events[9], 9, 20, log.proof(9), log.tx.no_witness,
                                              an.build_txout_proof(header, ids, 3), HEIGHT)
    node = timestamp_file.timestamp
    while node.msg != log.root:
        (_op, node), = node.ops.items()
    assert node == theirs


def test_ots_for_changed_event_bytes_is_refused(log37):
    with pytest.raises(ep.EventDigestMismatch):
        ep.verify_event_timestamp(log37.events[3] + b" ", log37.ots(3), log37.header)
    with pytest.raises(ep.EventDigestMismatch):
        ep.verify_event_timestamp(log37.events[4], log37.ots(3), log37.header)


def test_ots_with_any_op_changed_is_refused(log37):
    """Each op in turn: its argument altered, prepend and append swapped, sha256 replaced, or dropped."""
    event = log37.events[21]
    digest = hashlib.sha256(event).digest()
    ops = ops_of(DetachedTimestampFile.deserialize(BytesDeserializationContext(log37.ots(21))))
    assert ep.verify_event_timestamp(event, chain(digest, ops), log37.header) == HEIGHT
    for k, op in enumerate(ops):
        if isinstance(op, OpSHA256):
            variants = [OpSHA1()]
        else:
            swapped = OpAppend if isinstance(op, OpPrepend) else OpPrepend
            variants = [type(op)(op[0][:-1] + bytes([op[0][-1] ^ 1])), swapped(op[0])]
        for variant in variants + [None]:
            changed = ops[:k] + ([variant] if variant else []) + ops[k + 1:]
            with pytest.raises(ep.EventProofInvalid):
                ep.verify_event_timestamp(event, chain(digest, changed), log37.header)


def test_ots_with_any_byte_flipped_is_refused_except_the_height(log37):
    """The height is not committed to by the header's merkle root: the caller checks it in its own chain."""
    ots = log37.ots(30)
    height_bytes = 3  # varuint(812345)
    for position in range(len(ots) - height_bytes):
        bad = bytearray(ots)
        bad[position] ^= 0x01
        with pytest.raises(ep.EventProofInvalid):
            ep.verify_event_timestamp(log37.events[30], bytes(bad), log37.header)
    bad = bytearray(ots)
    bad[-height_bytes] ^= 0x01
    assert ep.verify_event_timestamp(log37.events[30], bytes(bad), log37.header) != HEIGHT


def test_ots_against_another_header_is_refused(log37):
    with pytest.raises(ep.OtsRootMismatch):
        ep.verify_event_timestamp(log37.events[0], log37.ots(0), header_for(bytes(32)))
    with pytest.raises(ep.BlockHeaderMismatch):
        ep.verify_event_timestamp(log37.events[0], log37.ots(0), log37.header[:79])


def test_ots_that_branches_or_carries_other_attestations_is_refused(log37):
    event = log37.events[2]
    timestamp_file = DetachedTimestampFile.deserialize(BytesDeserializationContext(log37.ots(2)))
    timestamp_file.timestamp.ops.add(OpAppend(b"x")).attestations.add(PendingAttestation("https://example.org"))
    with pytest.raises(ep.OtsShapeUnexpected):
        ep.verify_event_timestamp(event, ep.serialize_ots(timestamp_file), log37.header)
    digest = hashlib.sha256(event).digest()
    pending = Timestamp(digest)
    pending.attestations.add(PendingAttestation("https://example.org"))
    with pytest.raises(ep.OtsShapeUnexpected):
        ep.verify_event_timestamp(event, ep.serialize_ots(DetachedTimestampFile(OpSHA256(), pending)), log37.header)


def test_malformed_ots_bytes_are_refused(log37):
    ots = log37.ots(2)
    for bad in (b"", b"garbage", ots[:-1], ots + b"\x00", ots[:20]):
        with pytest.raises(ep.OtsMalformed):
            ep.verify_event_timestamp(log37.events[2], bad, log37.header)


def test_building_refuses_inputs_that_do_not_link(log37):
    args = (log37.events[7], 7, log37.size, log37.proof(7), log37.tx.no_witness, log37.merkleblock, HEIGHT)
    with pytest.raises(ep.InclusionProofInvalid):
        ep.build_event_timestamp(log37.events[8], *args[1:])
    with pytest.raises(ep.AnchorPayloadMismatch):
        ep.build_event_timestamp(args[0], 7, 38, *args[3:])
    twin = at.build_anchor_tx(an.Utxo("ef" * 32, 0, 50_000), KEY, an.encode_payload(37, log37.root), 1, 5_000, 9)
    with pytest.raises(ep.AnchorTxNotInBlock):
        ep.build_event_timestamp(*args[:4], an.parse_transaction(twin.raw).no_witness, log37.merkleblock, HEIGHT)


def test_rebuilding_is_byte_identical(log37):
    assert log37.ots(11) == Anchored(37).ots(11)
    assert ep.dumps_proof(log37.json(11)) == ep.dumps_proof(Anchored(37).json(11))


def test_ots_size_for_a_million_leaf_log_in_a_3000_tx_block():
    """20 inclusion steps; 12 block levels. A left sibling costs 36 bytes, a right one 38, a block level 36."""
    size, event = 1_000_000, b'{"position":0}'
    sizes = {}
    for index in (0, 300_000, 524_287):  # every leaf left of 2**19 has a 20-step path
        proof = [hashlib.sha256(b"sibling %d %d" % (index, i)).digest() for i in range(20)]
        steps = ep.inclusion_steps(index, size, proof)
        node = merkle.leaf_hash(event)
        for left, sibling in steps:
            node = merkle.node_hash(sibling, node) if left else merkle.node_hash(node, sibling)
        assert merkle.verify_inclusion(merkle.leaf_hash(event), index, size, proof, node)
        funding = an.Utxo("cd" * 32, 0, 50_000)
        anchor = at.build_anchor_tx(funding, KEY, an.encode_payload(size, node), 1, 5_000, HEIGHT - 1)
        tx = an.parse_transaction(anchor.raw)
        ids = [hashlib.sha256(b"dummy %d" % i).digest() for i in range(2999)]
        ids.insert(1234, tx.txid_internal)
        header = header_for(an.block_merkle_levels(ids)[-1][0])
        ots = ep.serialize_ots(ep.build_event_timestamp(
            event, index, size, proof, tx.no_witness, an.build_txout_proof(header, ids, 1234), HEIGHT))
        assert ep.verify_event_timestamp(event, ots, header) == HEIGHT
        lefts = sum(left for left, _ in steps)
        # file header and digest 65 + leaf 4 + log + tx 107 (133-byte tx) + block 12 x 36 + attestation 13
        assert len(ots) == 65 + 4 + 36 * lefts + 38 * (20 - lefts) + 107 + 12 * 36 + 13, (index, lefts)
        sizes[index] = len(ots)
    print("ots sizes, 1,000,000-leaf log in a 3000-tx block:", sizes)
    assert sizes[0] == 1381 and sizes[524_287] == 65 + 4 + 19 * 36 + 38 + 107 + 432 + 13 == 1343


# --- JSON -------------------------------------------------------------------------------------------------

def test_json_proof_verifies_after_a_text_round_trip(log37):
    for index in (0, 17, 36):
        proof = json.loads(ep.dumps_proof(log37.json(index)))
        ep.verify_event_proof_json(log37.events[index], proof, log37.header)
        assert proof["anchor_txid"] == log37.anchor.txid and proof["block_height"] == HEIGHT
        assert proof["block_hash"] == an.display_hex(an.sha256d(log37.header))


def _flip_hex(text: str, position: int = -1) -> str:
    raw = bytearray(bytes.fromhex(text))
    raw[position] ^= 0x01
    return raw.hex()


def _tampered(proof: dict) -> list[tuple[str, dict]]:
    root_at = proof["anchor_tx"].index(proof["root"]) // 2
    changes = {
        "format": ["reserve-ledger/event-proof/v2"],
        "event_sha256": [_flip_hex(proof["event_sha256"])],
        "leaf_index": [proof["leaf_index"] + 1, proof["leaf_index"] - 1, True],
        "tree_size": [proof["tree_size"] + 1, proof["tree_size"] * 2, proof["tree_size"] - 1],
        "root": [_flip_hex(proof["root"]), proof["root"].upper()],
        "inclusion_proof": [[_flip_hex(proof["inclusion_proof"][0])] + proof["inclusion_proof"][1:],
                            proof["inclusion_proof"][:-1], proof["inclusion_proof"] + [proof["root"]],
                            proof["inclusion_proof"][::-1]],
        "anchor_txid": [_flip_hex(proof["anchor_txid"])],
        "anchor_tx": [_flip_hex(proof["anchor_tx"], root_at), _flip_hex(proof["anchor_tx"], 10),
                      _flip_hex(proof["anchor_tx"]), proof["anchor_tx"] + "00"],
        "merkleblock": [_flip_hex(proof["merkleblock"], 100), _flip_hex(proof["merkleblock"], 40),
                        proof["merkleblock"] + "00"],
        "block_hash": [_flip_hex(proof["block_hash"])],
        "block_header": [_flip_hex(proof["block_header"], 0)],
    }
    return [(name, {**proof, name: value}) for name, values in changes.items() for value in values]


def test_json_proof_with_any_field_tampered_is_refused(log37):
    """block_height is the one field the header cannot check; the caller looks it up in its own chain."""
    proof = log37.json(22)
    for name, bad in _tampered(proof):
        with pytest.raises(an.AnchoringError):
            ep.verify_event_proof_json(log37.events[22], bad, log37.header)
            pytest.fail(f"tampered {name} was accepted")


def test_json_proof_for_other_bytes_or_header_or_shape_is_refused(log37):
    proof = log37.json(22)
    with pytest.raises(ep.EventDigestMismatch):
        ep.verify_event_proof_json(log37.events[23], proof, log37.header)
    with pytest.raises(ep.BlockHeaderMismatch):
        ep.verify_event_proof_json(log37.events[22], proof, header_for(bytes(32)))
    for bad in ({k: v for k, v in proof.items() if k != "root"}, {**proof, "extra": 1}, [proof]):
        with pytest.raises(ep.ProofFieldInvalid):
            ep.verify_event_proof_json(log37.events[22], bad, log37.header)


def test_json_proof_through_another_logs_anchor_is_refused(log37):
    """Every link holds except one: the block's anchor commits to another log's root of the same size."""
    foreign_root = merkle.root_from_leaves([merkle.leaf_hash(b"foreign %d" % i) for i in range(37)])
    anchor = at.build_anchor_tx(an.Utxo("ef" * 32, 0, 50_000), KEY, an.encode_payload(37, foreign_root), 1,
                                5_000, HEIGHT - 1)
    tx = an.parse_transaction(anchor.raw)
    header = header_for(tx.txid_internal)
    forged = {**log37.json(22), "anchor_txid": tx.txid, "anchor_tx": tx.no_witness.hex(),
              "merkleblock": an.build_txout_proof(header, [tx.txid_internal], 0).hex(),
              "block_hash": an.display_hex(an.sha256d(header)), "block_header": header.hex()}
    with pytest.raises(ep.AnchorPayloadMismatch):
        ep.verify_event_proof_json(log37.events[22], forged, header)
