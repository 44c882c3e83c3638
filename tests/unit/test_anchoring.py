"""Anchoring building blocks: the payload, the transaction reader, fee maths, anchor transactions checked by
Bitcoin Core's consensus code (libbitcoinkernel), the PSBT flow, the key file, and Core's merkleblock format.

Independent references: python-bitcoinlib (the OpenTimestamps dependency) re-parses our transactions; a
real mainnet block (80000) and its Core merkleblock are the format vector; BIP173 gives the address vector.
"""

import base64
import hashlib
import os
import stat
import struct
from decimal import Decimal

import bitcoin.core
import pbk
import pytest
from bitcoinutils.psbt import PSBT
from pbk.script import PrecomputedTransactionData

from ledger import anchoring as an
from services.bitcoin import anchor_tx as at

# Mainnet block 80000 (000000000043a8c0fd1d6f726790caa2a406010d19efd2780db27bdbbd93baf6), two transactions;
# `bitcoin-cli getblock <hash> 0`. Its merkleblock for the second tx is `gettxoutproof '["5a4ebf66..."]'`.
BLOCK_80000 = bytes.fromhex(
    "01000000ba8b9cda965dd8e536670f9ddec10e53aab14b20bacad27b9137190000000000190760b278fe7b8565fda3b968b918d5"
    "fd997f993b23674c0af3b6fde300b38f33a5914ce6ed5b1b01e32f570201000000010000000000000000000000000000000000"
    "000000000000000000000000000000ffffffff0704e6ed5b1b014effffffff0100f2052a01000000434104b68a50eaa0287eff"
    "855189f949c1c6e5f58b37c88231373d8a59809cbae83059cc6469d65c665ccfd1cfeb75c6e8e19413bba7fbff9bc762419a76"
    "d87b16086eac000000000100000001a6b97044d03da79c005b20ea9c0e1a6d9dc12d9f7b91a5911c9030a439eed8f500000000"
    "4948304502206e21798a42fae0e854281abd38bacd1aeed3ee3738d9e1446618c4571d1090db022100e2ac980643b0b82c0e88"
    "ffdfec6b64e3e6ba35e7ba5fdd7d5d6cc8d25c6b241501ffffffff0100f2052a010000001976a914404371705fa9bd789a2fcd"
    "52d2c580b65d35549d88ac00000000")
BLOCK_80000_HASH = "000000000043a8c0fd1d6f726790caa2a406010d19efd2780db27bdbbd93baf6"
BLOCK_80000_TX1 = "5a4ebf66822b0b2d56bd9dc64ece0bc38ee7844a23ff1d7320a88c5fdb2ad3e2"
MERKLEBLOCK_80000_TX1 = bytes.fromhex(
    "01000000ba8b9cda965dd8e536670f9ddec10e53aab14b20bacad27b9137190000000000190760b278fe7b8565fda3b968b918d5"
    "fd997f993b23674c0af3b6fde300b38f33a5914ce6ed5b1b01e32f570200000002252bf9d75c4f481ebb6278d708257d1f12be"
    "b6dd30301d26c623f789b2ba6fc0e2d32adb5f8ca820731dff234a84e78ec30bce4ec69dbd562d0b2b8266bf4e5a0105")

ROOT = hashlib.sha256(b"root").digest()
PAYLOAD = an.encode_payload(1_000_000, ROOT)
FUNDING = an.Utxo("ab" * 32, 3, 100_000)


@pytest.fixture(scope="module")
def key():
    return at.AnchorKey(hashlib.sha256(b"anchor key").digest(), "regtest")


def consensus_ok(raw: bytes, script_pubkey: bytes, amount_sats: int) -> bool:
    """Bitcoin Core's script interpreter on input 0, every consensus flag."""
    tx = pbk.Transaction(raw)
    spk = pbk.ScriptPubkey(script_pubkey)
    precomputed = PrecomputedTransactionData(tx, [pbk.TransactionOutput(spk, amount_sats)])
    return bool(spk.verify(amount_sats, tx, precomputed, 0, pbk.ScriptVerificationFlags.ALL))


def with_witness_item(raw: bytes, item_index: int, new_item: bytes) -> bytes:
    """Rebuild a one-input segwit tx with one witness item replaced (same length)."""
    tx = an.parse_transaction(raw)
    stack = list(tx.witnesses[0])
    assert len(new_item) == len(stack[item_index])
    stack[item_index] = new_item
    witness = an.compact_size(len(stack)) + b"".join(an.compact_size(len(i)) + i for i in stack)
    return tx.no_witness[:4] + b"\x00\x01" + tx.no_witness[4:-4] + witness + tx.no_witness[-4:]


def block_80000_txs() -> list[bytes]:
    """The block's transactions as python-bitcoinlib splits them."""
    return [tx.serialize() for tx in bitcoin.core.CBlock.deserialize(BLOCK_80000).vtx]


# --- payload ----------------------------------------------------------------------------------------------

def test_payload_layout_is_magic_version_size_root():
    """40 bytes: RLA, 0x01, uint32 big-endian tree size, root; the OP_RETURN script is 6a 28 <payload>."""
    payload = an.encode_payload(0x01020304, bytes(range(32)))
    assert payload == b"RLA\x01\x01\x02\x03\x04" + bytes(range(32))
    assert an.op_return_script(payload) == b"\x6a\x28" + payload


@pytest.mark.parametrize("tree_size", [0, 1, 1_000_000, 2**32 - 1])
def test_payload_round_trips(tree_size):
    assert an.decode_payload(an.encode_payload(tree_size, ROOT)) == (tree_size, ROOT)


@pytest.mark.parametrize("tree_size, root", [(-1, ROOT), (2**32, ROOT), (1, ROOT[:31]), (1, ROOT + b"\x00")])
def test_unencodable_payload_fields_are_refused(tree_size, root):
    with pytest.raises(an.PayloadFieldInvalid):
        an.encode_payload(tree_size, root)


def test_payload_of_wrong_length_is_refused():
    for data in (PAYLOAD[:-1], PAYLOAD + b"\x00", b""):
        with pytest.raises(an.PayloadLengthWrong):
            an.decode_payload(data)


def test_payload_with_wrong_magic_is_refused():
    with pytest.raises(an.PayloadMagicWrong):
        an.decode_payload(b"RLB" + PAYLOAD[3:])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_payload_with_unknown_version_is_refused(version):
    with pytest.raises(an.PayloadVersionUnknown):
        an.decode_payload(PAYLOAD[:3] + bytes([version]) + PAYLOAD[4:])


def test_op_return_script_refuses_a_foreign_payload():
    with pytest.raises(an.PayloadMagicWrong):
        an.op_return_script(b"XYZ" + PAYLOAD[3:])


# --- transaction reader against independent parsers -------------------------------------------------------

def test_reader_matches_a_real_block():
    """Block 80000's two transactions hash to its merkle root and to the known txid."""
    header = BLOCK_80000[:80]
    txs = [an.parse_transaction(raw) for raw in block_80000_txs()]
    assert txs[1].txid == BLOCK_80000_TX1
    assert an.sha256d(txs[0].txid_internal + txs[1].txid_internal) == header[36:68]
    assert an.display_hex(an.sha256d(header)) == BLOCK_80000_HASH


def test_reader_matches_python_bitcoinlib_on_an_anchor(key):
    anchor = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200)
    ours = an.parse_transaction(anchor.raw)
    theirs = bitcoin.core.CTransaction.deserialize(anchor.raw)
    assert ours.txid_internal == theirs.GetTxid()
    assert ours.weight == theirs.calc_weight()
    assert ours.no_witness == theirs.serialize(params={"include_witness": False})
    assert ours.outputs[0].script_pubkey == bytes(theirs.vout[0].scriptPubKey)


def test_reader_refuses_trailing_truncated_and_non_canonical_bytes(key):
    raw = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200).raw
    nw = an.parse_transaction(raw).no_witness
    for bad in (raw + b"\x00", raw[:-1], nw + b"\x00", nw[:-1], nw[:5] + nw[6:],
                nw[:4] + b"\xfd\x01\x00" + nw[5:]):  # input count 1 written as a 3-byte size
        with pytest.raises(an.TransactionMalformed):
            an.parse_transaction(bad)


def test_find_anchor_payload_reads_ours_and_ignores_others(key):
    anchor = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200)
    assert an.find_anchor_payload(anchor.raw) == (1_000_000, ROOT)
    assert an.find_anchor_payload(an.parse_transaction(anchor.raw).no_witness) == (1_000_000, ROOT)
    assert [an.find_anchor_payload(raw) for raw in block_80000_txs()] == [None, None]


def _tx_with_scripts(scripts: list[bytes]) -> bytes:
    outputs = b"".join(struct.pack("<Q", 0) + an.compact_size(len(s)) + s for s in scripts)
    txin = bytes(32) + b"\x00" * 4 + b"\x00" + b"\xff" * 4
    return struct.pack("<I", 2) + b"\x01" + txin + an.compact_size(len(scripts)) + outputs + bytes(4)


def test_two_payloads_in_one_transaction_are_ambiguous():
    script = an.op_return_script(PAYLOAD)
    with pytest.raises(an.AnchorPayloadAmbiguous):
        an.find_anchor_payload(_tx_with_scripts([script, script]))


def test_a_malformed_payload_in_a_transaction_is_refused_not_ignored():
    with pytest.raises(an.PayloadVersionUnknown):
        an.find_anchor_payload(_tx_with_scripts([b"\x6a\x28" + PAYLOAD[:3] + b"\x02" + PAYLOAD[4:]]))
    with pytest.raises(an.PayloadLengthWrong):
        an.find_anchor_payload(_tx_with_scripts([b"\x6a\x27" + PAYLOAD[:-1]]))
    assert an.find_anchor_payload(_tx_with_scripts([b"\x6a\x04ABCD"])) is None


# --- fees -------------------------------------------------------------------------------------------------

def test_fee_is_vsize_times_rate_rounded_up_with_a_floor_of_one():
    assert an.fee_sats(161, 1) == 161
    assert an.fee_sats(161, Decimal("2.5")) == 403
    assert an.fee_sats(161, Decimal("0.1")) == 161
    assert an.fee_sats(161, 0) == 161


def test_fee_rate_is_clamped_between_floor_and_cap():
    assert an.fee_rate_for_anchor(Decimal("0.1"), 50) == 1
    assert an.fee_rate_for_anchor(Decimal("12.5"), 50) == Decimal("12.5")
    assert an.fee_rate_for_anchor(500, 50) == 50
    with pytest.raises(an.FeeRateInvalid):
        an.fee_rate_for_anchor(5, Decimal("0.5"))


@pytest.mark.parametrize("rate", [1.5, Decimal("NaN"), Decimal("-1"), "3", True])
def test_floats_and_nonsense_fee_rates_are_refused(rate):
    with pytest.raises(an.FeeRateInvalid):
        an.fee_sats(161, rate)


def test_change_below_p2wpkh_dust_is_refused():
    assert an.change_value_sats(455, 161) == 294
    with pytest.raises(an.ChangeBelowDust):
        an.change_value_sats(454, 161)


# --- anchor transactions ----------------------------------------------------------------------------------

def test_anchor_is_accepted_by_core_consensus_code(key):
    anchor = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200)
    assert consensus_ok(anchor.raw, key.script_pubkey, FUNDING.value_sats)


def test_anchor_with_a_tampered_signature_or_amount_fails_consensus(key):
    anchor = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200)
    signature = an.parse_transaction(anchor.raw).witnesses[0][0]
    for position in (10, 40, len(signature) - 2):  # inside r, inside s, last byte of s
        tampered = bytearray(signature)
        tampered[position] ^= 0x01
        assert not consensus_ok(with_witness_item(anchor.raw, 0, bytes(tampered)), key.script_pubkey,
                                FUNDING.value_sats)
    assert not consensus_ok(anchor.raw, key.script_pubkey, FUNDING.value_sats + 1)


def test_anchor_shape_size_and_fee_at_one_sat_per_vbyte(key):
    """One input (nSequence 0xfffffffd: RBF-signalling, no BIP68 lock), OP_RETURN first, change second."""
    anchor = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 812_345)
    tx = an.parse_transaction(anchor.raw)
    assert 160 <= anchor.vsize <= 162 and anchor.vsize == tx.vsize == 161
    assert anchor.fee_sats == 161
    assert (tx.version, tx.locktime, tx.inputs[0].sequence) == (2, 812_345, 0xFFFFFFFD)
    assert tx.inputs[0].prev_txid_internal == bytes.fromhex(FUNDING.txid)[::-1]
    assert tx.inputs[0].vout == FUNDING.vout
    assert (tx.outputs[0].value_sats, tx.outputs[0].script_pubkey) == (0, an.op_return_script(PAYLOAD))
    assert (tx.outputs[1].value_sats, tx.outputs[1].script_pubkey) == (anchor.change_value_sats, key.script_pubkey)
    assert anchor.change_vout == 1 and anchor.change_value_sats == FUNDING.value_sats - 161
    assert anchor.txid == tx.txid == an.display_hex(an.sha256d(tx.no_witness))


def test_fee_follows_the_rate(key):
    anchor = at.build_anchor_tx(FUNDING, key, PAYLOAD, Decimal("2.5"), 10_000, 200)
    assert anchor.fee_sats == 403 and anchor.change_value_sats == FUNDING.value_sats - 403


def test_anchors_chain_through_their_change(key):
    first = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200)
    change = an.Utxo(first.txid, first.change_vout, first.change_value_sats)
    second = at.build_anchor_tx(change, key, an.encode_payload(1_000_001, ROOT), 1, 10_000, 201)
    assert consensus_ok(second.raw, key.script_pubkey, first.change_value_sats)
    assert an.parse_transaction(second.raw).inputs[0].prev_txid_internal == bytes.fromhex(first.txid)[::-1]


def test_anchor_whose_change_would_be_dust_is_refused(key):
    assert at.build_anchor_tx(an.Utxo("ab" * 32, 0, 161 + 294), key, PAYLOAD, 1, 10_000, 200).change_value_sats == 294
    with pytest.raises(an.ChangeBelowDust):
        at.build_anchor_tx(an.Utxo("ab" * 32, 0, 161 + 293), key, PAYLOAD, 1, 10_000, 200)


def test_anchor_above_the_fee_cap_is_refused(key):
    assert at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 161, 200).fee_sats == 161
    with pytest.raises(an.FeeAboveCap):
        at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 160, 200)
    with pytest.raises(an.FeeAboveCap):
        at.build_anchor_tx(FUNDING, key, PAYLOAD, 100, 10_000, 200)


def test_anchor_can_be_signed_from_a_wif(key):
    assert at.build_anchor_tx(FUNDING, key.wif, PAYLOAD, 1, 10_000, 200) == \
        at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200)


def test_anchor_refuses_an_invalid_payload(key):
    with pytest.raises(an.PayloadMagicWrong):
        at.build_anchor_tx(FUNDING, key, b"XYZ" + PAYLOAD[3:], 1, 10_000, 200)


# --- PSBT -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def funded(key):
    """A previous anchor whose change the PSBT spends, so the full previous tx can be attached."""
    first = at.build_anchor_tx(FUNDING, key, PAYLOAD, 1, 10_000, 200)
    return first, an.Utxo(first.txid, first.change_vout, first.change_value_sats)


def _signed(b64: str, private_key) -> str:
    psbt = PSBT.from_base64(b64)
    assert psbt.sign_input(0, private_key)
    return psbt.to_base64()


def _finalize(signed_b64: str, unsigned_b64: str, prev: an.Utxo, key, payload=PAYLOAD, fee_max_sats=10_000):
    return at.finalize_signed_psbt(signed_b64, unsigned_b64=unsigned_b64, prev=prev, payload=payload,
                                   script_pubkey=key.script_pubkey, fee_max_sats=fee_max_sats)


def test_psbt_round_trip_gives_the_directly_signed_anchor(key, funded):
    first, prev = funded
    unsigned = at.build_anchor_psbt(prev, key.public_key, PAYLOAD, 1, 10_000, 201, prev_tx_raw=first.raw)
    raw = _finalize(_signed(unsigned, key.signing_key), unsigned, prev, key)
    assert consensus_ok(raw, key.script_pubkey, prev.value_sats)
    assert raw == at.build_anchor_tx(prev, key, PAYLOAD, 1, 10_000, 201).raw  # RFC 6979: deterministic


def test_psbt_carries_witness_and_non_witness_utxo(key, funded):
    first, prev = funded
    psbt = PSBT.from_base64(at.build_anchor_psbt(prev, key, PAYLOAD, 1, 10_000, 201, prev_tx_raw=first.raw))
    entry = psbt.inputs[0]
    assert entry.witness_utxo.amount == prev.value_sats
    assert entry.witness_utxo.script_pubkey.to_bytes() == key.script_pubkey
    assert an.sha256d(entry.non_witness_utxo.to_bytes(False)) == bytes.fromhex(first.txid)[::-1]
    assert psbt.tx.inputs[0].sequence == b"\xfd\xff\xff\xff"


def test_psbt_refuses_a_previous_tx_that_is_not_the_utxo(key, funded):
    first, prev = funded
    for wrong in (an.Utxo(prev.txid, prev.vout, prev.value_sats + 1), an.Utxo(prev.txid, 0, prev.value_sats),
                  an.Utxo("cd" * 32, prev.vout, prev.value_sats)):
        with pytest.raises(at.PrevTxMismatch):
            at.build_anchor_psbt(wrong, key, PAYLOAD, 1, 10_000, 201, prev_tx_raw=first.raw)


def test_signed_psbt_with_another_payload_is_refused(key, funded):
    _first, prev = funded
    ours = at.build_anchor_psbt(prev, key, PAYLOAD, 1, 10_000, 201)
    theirs = at.build_anchor_psbt(prev, key, an.encode_payload(666, ROOT), 1, 10_000, 201)
    with pytest.raises(at.SignedPsbtChanged):
        _finalize(_signed(theirs, key.signing_key), ours, prev, key)


def test_signed_psbt_with_a_smaller_change_is_refused(key, funded):
    _first, prev = funded
    ours = at.build_anchor_psbt(prev, key, PAYLOAD, 1, 10_000, 201)
    theirs = at.build_anchor_psbt(prev, key, PAYLOAD, 20, 10_000, 201)
    with pytest.raises(at.SignedPsbtChanged):
        _finalize(_signed(theirs, key.signing_key), ours, prev, key)


def test_expectations_that_do_not_match_our_own_psbt_are_refused(key, funded):
    """Even an unchanged PSBT is refused when it is not the anchor we expect (payload, fee cap, input)."""
    _first, prev = funded
    ours = at.build_anchor_psbt(prev, key, PAYLOAD, 1, 10_000, 201)
    signed = _signed(ours, key.signing_key)
    with pytest.raises(at.AnchorTxUnexpected):
        _finalize(signed, ours, prev, key, payload=an.encode_payload(7, ROOT))
    with pytest.raises(an.FeeAboveCap):
        _finalize(signed, ours, prev, key, fee_max_sats=100)
    with pytest.raises(at.AnchorTxUnexpected):
        _finalize(signed, ours, an.Utxo(prev.txid, prev.vout + 1, prev.value_sats), key)


def test_unsigned_or_foreign_or_broken_signatures_are_refused(key, funded):
    _first, prev = funded
    ours = at.build_anchor_psbt(prev, key, PAYLOAD, 1, 10_000, 201)
    with pytest.raises(at.PsbtNotSigned):
        _finalize(ours, ours, prev, key)
    with pytest.raises(at.SignedPsbtChanged):
        _finalize(_signed(ours, at.AnchorKey.generate("regtest").signing_key), ours, prev, key)
    psbt = PSBT.from_base64(_signed(ours, key.signing_key))
    (pubkey, signature), = psbt.inputs[0].partial_sigs.items()
    psbt.inputs[0].partial_sigs[pubkey] = signature[:10] + bytes([signature[10] ^ 1]) + signature[11:]
    with pytest.raises(at.SignatureInvalid):
        _finalize(psbt.to_base64(), ours, prev, key)
    with pytest.raises(at.PsbtMalformed):
        _finalize("not base64!", ours, prev, key)
    with pytest.raises(at.PsbtMalformed):
        _finalize(base64.b64encode(b"psbt\xff\x01").decode(), ours, prev, key)


def test_signature_that_does_not_commit_to_all_outputs_is_refused(key, funded):
    """SIGHASH_NONE|ANYONECANPAY verifies under consensus but would let anyone rewrite the outputs."""
    _first, prev = funded
    ours = at.build_anchor_psbt(prev, key, PAYLOAD, 1, 10_000, 201)
    psbt = PSBT.from_base64(ours)
    assert psbt.sign_input(0, key.signing_key, sighash=0x82)
    with pytest.raises(at.SignedPsbtChanged):
        _finalize(psbt.to_base64(), ours, prev, key)


# --- key file ---------------------------------------------------------------------------------------------

def test_key_vectors_from_bip173():
    """Secret 1 is the generator: its P2WPKH address is BIP173's example, its WIF the well-known one."""
    one = (1).to_bytes(32, "big")
    mainnet = at.AnchorKey(one, "mainnet")
    assert mainnet.address == "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    assert mainnet.wif == "KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn"
    assert mainnet.script_pubkey.hex() == "0014751e76e8199196d454941c45d1b3a323f1433bd6"
    assert at.AnchorKey(one, "regtest").address.startswith("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7k")


def test_key_file_round_trip_is_owner_only(tmp_path):
    key = at.AnchorKey.generate("regtest")
    path = tmp_path / "anchor.wif"
    key.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = at.AnchorKey.load(path, "regtest")
    assert (loaded.address, loaded.script_pubkey, loaded.wif) == (key.address, key.script_pubkey, key.wif)
    with pytest.raises(FileExistsError):
        key.save(path)


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "anchor.wif"
    at.AnchorKey.generate("regtest").save(path)
    os.chmod(path, 0o644)
    with pytest.raises(at.KeyFileTooOpen):
        at.AnchorKey.load(path, "regtest")


def test_key_for_another_network_is_refused(tmp_path):
    path = tmp_path / "anchor.wif"
    at.AnchorKey.generate("mainnet").save(path)
    with pytest.raises(at.KeyNetworkWrong):
        at.AnchorKey.load(path, "regtest")
    with pytest.raises(at.WifMalformed):
        at.AnchorKey.from_wif("KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWm", "mainnet")


# --- merkleblock ------------------------------------------------------------------------------------------

def ref_root(hashes: list[bytes]) -> bytes:
    """Bitcoin's block merkle root written out naively (an odd level repeats its last hash)."""
    while len(hashes) > 1:
        if len(hashes) % 2:
            hashes = hashes + hashes[-1:]
        hashes = [an.sha256d(hashes[i] + hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def txids(n: int) -> list[bytes]:
    return [hashlib.sha256(b"tx %d" % i).digest() for i in range(n)]


def header_for(root: bytes) -> bytes:
    return struct.pack("<I", 0x20000000) + bytes(32) + root + struct.pack("<III", 1_700_000_000, 0x207FFFFF, 0)


def test_core_merkleblock_vector_is_parsed_and_rebuilt_byte_for_byte():
    proof = an.verify_txout_proof(MERKLEBLOCK_80000_TX1)
    tx1 = bytes.fromhex(BLOCK_80000_TX1)[::-1]
    assert proof.matched == [(tx1, 1)] and proof.tx_count == 2 and proof.block_hash == BLOCK_80000_HASH
    assert an.merkle_root_from_branch(tx1, 1, proof.branch) == proof.merkle_root
    coinbase = proof.branch[0]
    assert an.build_txout_proof(MERKLEBLOCK_80000_TX1[:80], [coinbase, tx1], 1) == MERKLEBLOCK_80000_TX1


def test_merkleblock_round_trips_for_every_size_and_match():
    for n in range(1, 41):
        ids = txids(n)
        header = header_for(ref_root(ids))
        for index in range(n):
            proof = an.verify_txout_proof(an.build_txout_proof(header, ids, index))
            assert proof.matched == [(ids[index], index)] and proof.tx_count == n, (n, index)
            assert an.merkle_root_from_branch(ids[index], index, proof.branch) == ref_root(ids), (n, index)


def test_a_corrupted_merkleblock_never_proves_a_false_inclusion():
    """Flip bits in the merkle root and everything after the header: each proof is refused, or (a flag bit
    turned on for a sibling leaf, or a tx count that only changes the untouched right edge) still proves
    nothing but true (txid, position) pairs. Header fields other than the root are the caller's to check."""
    refused = accepted = 0
    for n, index in ((1, 0), (2, 1), (3, 2), (7, 4), (9, 8), (40, 17)):
        ids = txids(n)
        good = an.build_txout_proof(header_for(ref_root(ids)), ids, index)
        for position in [*range(36, 68), *range(80, len(good))]:
            for mask in (0x01, 0x80):
                bad = bytearray(good)
                bad[position] ^= mask
                try:
                    proof = an.verify_txout_proof(bytes(bad))
                except an.TxoutProofInvalid:
                    refused += 1
                    continue
                accepted += 1
                assert position >= 80 and proof.header == good[:80], (n, index, position)
                assert all(ids[i] == txid for txid, i in proof.matched), (n, index, position)
    assert refused > 20 * accepted, (refused, accepted)


def _parts(proof: bytes):
    """(header+count, hashes, flags) of a merkleblock with fewer than 253 hashes and flag bytes."""
    count = proof[84]
    hashes = [proof[85 + 32 * i: 117 + 32 * i] for i in range(count)]
    flags = proof[86 + 32 * count:]
    assert proof[85 + 32 * count] == len(flags)
    return proof[:84], hashes, flags


def _assemble(head: bytes, hashes: list[bytes], flags: bytes) -> bytes:
    return head + an.compact_size(len(hashes)) + b"".join(hashes) + an.compact_size(len(flags)) + flags


def test_duplicated_last_transaction_is_refused():
    """CVE-2012-2459: [a, b, c, c] has the root of [a, b, c]; a proof through the copy must fail."""
    ids = txids(3)
    header = header_for(ref_root(ids))
    mutated = an.build_txout_proof(header, ids + ids[-1:], 3)
    with pytest.raises(an.TxoutProofDuplicateSubtree):
        an.verify_txout_proof(mutated)


def test_unused_hashes_flag_bytes_and_padding_bits_are_refused():
    ids = txids(5)
    head, hashes, flags = _parts(an.build_txout_proof(header_for(ref_root(ids)), ids, 2))
    with pytest.raises(an.TxoutProofUnusedData):
        an.verify_txout_proof(_assemble(head, hashes + [bytes(32)], flags))
    with pytest.raises(an.TxoutProofUnusedData):
        an.verify_txout_proof(_assemble(head, hashes, flags + b"\x00"))
    with pytest.raises(an.TxoutProofUnusedData):
        an.verify_txout_proof(_assemble(head, hashes, flags[:-1] + bytes([flags[-1] | 0x80])))


def test_absurd_transaction_counts_are_refused():
    ids = txids(5)
    head, hashes, flags = _parts(an.build_txout_proof(header_for(ref_root(ids)), ids, 2))
    for count in (0, an.BLOCK_TX_COUNT_MAX + 1, 2**32 - 1):
        with pytest.raises(an.TxoutProofTxCountInvalid):
            an.verify_txout_proof(_assemble(head[:80] + struct.pack("<I", count), hashes, flags))
    assert an.BLOCK_TX_COUNT_MAX == 16_666


def test_trailing_truncated_and_rootless_merkleblocks_are_refused():
    ids = txids(6)
    good = an.build_txout_proof(header_for(ref_root(ids)), ids, 5)
    for bad in (good + b"\x00", good[:-1], good[:80]):
        with pytest.raises(an.TxoutProofMalformed):
            an.verify_txout_proof(bad)
    with pytest.raises(an.TxoutProofRootMismatch):
        an.verify_txout_proof(header_for(ref_root(txids(7))) + good[80:])
    nothing = header_for(ref_root(ids)) + struct.pack("<I", 6) + b"\x01" + ref_root(ids) + b"\x01\x00"
    with pytest.raises(an.TxoutProofMatchesNothing):
        an.verify_txout_proof(nothing)


def test_builder_refuses_a_header_that_does_not_commit_to_the_txids():
    with pytest.raises(ValueError):
        an.build_txout_proof(header_for(bytes(32)), txids(3), 0)


# bitcoin-utils 0.8.8 pads s to 32 bytes when its top byte is zero (non-minimal DER, refused by consensus since
# BIP66). With secret 243 and this coin its signature is `3044 0220 … 0220 00…`: found by scanning secrets 1, 2, …
PADDED_S_SECRET = 243
PADDED_S_COIN = an.Utxo("ab" * 32, 0, 100_000)
PADDED_S_PAYLOAD = an.encode_payload(7, bytes(32))


def _padded_s_anchor():
    key = at.AnchorKey(PADDED_S_SECRET.to_bytes(32, "big"), "regtest")
    return key, at.build_anchor_tx(PADDED_S_COIN, key, PADDED_S_PAYLOAD, 1, 20_000, 200)


def test_an_anchor_whose_signature_bitcoin_utils_pads_is_signed_in_minimal_der(monkeypatch):
    key, anchor = _padded_s_anchor()
    signature = bitcoin.core.CTransaction.deserialize(anchor.raw).wit.vtxinwit[0].scriptWitness.stack[0]
    assert signature == bytes.fromhex(at.minimal_der_signature(signature.hex()))
    assert len(signature) == 70 and at.verify_p2wpkh_input(anchor.raw, key.script_pubkey, PADDED_S_COIN.value_sats)
    monkeypatch.setattr(at, "minimal_der_signature", lambda signature_hex: signature_hex)
    with pytest.raises(at.SignatureInvalid):  # the library's own encoding: what every node would refuse
        _padded_s_anchor()


def test_minimal_der_strips_only_needless_zero_bytes_and_refuses_what_is_not_der():
    padded = ("3044022067a791eaaf9c2498abe3ffcc3f432e1aa56c5168a0aed887eb391eac450fba55"
              "0220007b4ed5444d5e84f3e48c35f29b512e84e555543bf6e9c168933b2d49154b5f01")
    minimal = ("3043022067a791eaaf9c2498abe3ffcc3f432e1aa56c5168a0aed887eb391eac450fba55"
               "021f7b4ed5444d5e84f3e48c35f29b512e84e555543bf6e9c168933b2d49154b5f01")
    assert at.minimal_der_signature(padded) == minimal
    assert at.minimal_der_signature(minimal) == minimal
    high_r = "3045022100" + "80" + "11" * 31 + "0220" + "22" * 32 + "01"  # a top bit set keeps its 0x00
    assert at.minimal_der_signature(high_r) == high_r
    for broken in ("", "01", minimal[:-10] + "01", "31" + minimal[2:], padded.replace("3044", "3045", 1)):
        with pytest.raises(ValueError):
            at.minimal_der_signature(broken)


def test_a_signed_psbt_reads_the_same_in_binary_and_in_base64(key, funded):
    """BIP-174's file form (binary) and base64 give the same transaction; anything else is PsbtMalformed."""
    first, prev = funded
    unsigned = at.build_anchor_psbt(prev, key.public_key, PAYLOAD, 1, 10_000, 201, prev_tx_raw=first.raw)
    signed_b64 = _signed(unsigned, key.signing_key)
    binary = base64.b64decode(signed_b64)
    assert _finalize(binary, unsigned, prev, key) == _finalize(signed_b64, unsigned, prev, key) == \
        _finalize(signed_b64.encode() + b"\n", unsigned, prev, key)
    for garbage in (b"\xff\xfe", "not base64!", binary[:-3]):
        with pytest.raises(at.PsbtMalformed):
            _finalize(garbage, unsigned, prev, key)


@pytest.mark.parametrize("text, fingerprint, path", [
    ("d34db33f/84h/1h/0h/0/7", "d34db33f", (84 | 2**31, 1 | 2**31, 2**31, 0, 7)),
    ("[D34DB33F/84'/0]", "d34db33f", (84 | 2**31, 0)),
    ("00000000", "00000000", ()),
])
def test_key_origins_parse_as_descriptors_write_them(text, fingerprint, path):
    origin = at.parse_key_origin(text)
    assert (origin.fingerprint.hex(), origin.path) == (fingerprint, path)
    assert at.parse_key_origin(str(origin)) == origin


@pytest.mark.parametrize("text", ["d34db33", "d34db33g/1", "d34db33f/", "d34db33f/1x", "d34db33f/2147483648",
                                  "d34db33f/-1", "d34db33f" + "/0" * 256, ""])
def test_malformed_key_origins_are_refused(text):
    with pytest.raises(at.KeyOriginInvalid):
        at.parse_key_origin(text)


def test_the_key_origin_is_on_the_input_and_on_the_change(key, funded):
    """PSBT_IN_BIP32_DERIVATION (0x06) and PSBT_OUT_BIP32_DERIVATION (0x02), keyed by the public key, valued
    fingerprint || path as little-endian uint32s (BIP-174)."""
    first, prev = funded
    origin = at.parse_key_origin("d34db33f/84h/1h/0h/0/7")
    psbt = PSBT.from_base64(at.build_anchor_psbt(prev, key.public_key, PAYLOAD, 1, 10_000, 201, first.raw,
                                                 key_origin=origin))
    expected = {key.public_key: (origin.fingerprint, list(origin.path))}
    assert psbt.inputs[0].bip32_derivs == expected and psbt.outputs[1].bip32_derivs == expected
    assert psbt.outputs[0].bip32_derivs == {}


def test_a_rotation_anchor_pays_its_change_to_the_new_key_and_nothing_else_passes_for_it(key, funded):
    """The old key signs, the change pays the new key; checked against our own change script, a PSBT paying the
    change elsewhere is refused."""
    first, prev = funded
    new = at.AnchorKey(hashlib.sha256(b"new anchor key").digest(), "regtest")
    unsigned = at.build_anchor_psbt(prev, key.public_key, PAYLOAD, 1, 10_000, 201, first.raw,
                                    change_public_key=new.public_key)
    signed = _signed(unsigned, key.signing_key)
    raw = at.finalize_signed_psbt(signed, unsigned_b64=unsigned, prev=prev, payload=PAYLOAD,
                                  script_pubkey=key.script_pubkey, fee_max_sats=10_000,
                                  change_script_pubkey=new.script_pubkey)
    assert an.parse_transaction(raw).outputs[1].script_pubkey == new.script_pubkey
    assert an.continuation(an.parse_transaction(raw), key.script_pubkey) == (1, new.script_pubkey)
    with pytest.raises(at.AnchorTxUnexpected):
        _finalize(signed, unsigned, prev, key)  # expecting the change back to the old key
