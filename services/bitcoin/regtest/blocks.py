"""Regtest consensus constants and the pure building of transactions and blocks (proof of work included).

Nothing here decides validity: libbitcoinkernel does (services/bitcoin/regtest/chain.py).
"""

import functools
import os
import struct

from ledger.anchoring import ParsedTx, block_merkle_levels, compact_size, internal_from_display, parse_transaction, sha256d

REGTEST_BITS = 0x207FFFFF
POW_LIMIT = 0x7FFFFF << (8 * (0x20 - 3))
BLOCK_VERSION = 0x20000000
COINBASE_MATURITY_BLOCKS = 100
HALVING_INTERVAL_BLOCKS = 150
SUBSIDY_INITIAL_SATS = 50 * 100_000_000
ANYONE_CAN_SPEND = bytes([0x51])  # OP_TRUE: the faucet's coins, spendable without a signature
BOOTSTRAP_BLOCKS = 200            # a new chain starts with 100 mature faucet coinbases
LOCKTIME_THRESHOLD = 500_000_000
NULL_PREVOUT = b"\x00" * 32
WITNESS_COMMITMENT_TAG = bytes.fromhex("6a24aa21a9ed")
WITNESS_RESERVED_VALUE = b"\x00" * 32
PARSED_CACHE_SIZE = 65_536


@functools.lru_cache(maxsize=PARSED_CACHE_SIZE)
def parsed(raw: bytes) -> ParsedTx:
    """Mempool checks parse the same transactions again and again; parsing is pure, so remember it."""
    return parse_transaction(raw)


def block_subsidy_sats(height: int) -> int:
    halvings = height // HALVING_INTERVAL_BLOCKS
    return SUBSIDY_INITIAL_SATS >> halvings if halvings < 64 else 0


def dust_threshold_sats(script_pubkey: bytes) -> int:
    """Core's dust limit at the default 3 sat/vB dust relay fee, for the common output kinds."""
    if len(script_pubkey) == 22 and script_pubkey[:2] == b"\x00\x14":
        return 294
    if len(script_pubkey) == 34 and script_pubkey[0] in (0x00, 0x51) and script_pubkey[1] == 0x20:
        return 330
    return 546


def script_number_push(n: int) -> bytes:
    """The minimal script push of a non-negative number, as BIP34 wants the height."""
    if n == 0:
        return b"\x00"
    if n <= 16:
        return bytes([0x50 + n])
    data = n.to_bytes((n.bit_length() + 8) // 8, "little")
    return bytes([len(data)]) + data


def serialize_tx(version: int, inputs: list[tuple[bytes, int, bytes, int]], outputs: list[tuple[int, bytes]],
                 witnesses: list[list[bytes]] | None, locktime: int = 0) -> bytes:
    """inputs: (prev txid internal, vout, scriptSig, sequence); outputs: (value sats, scriptPubKey)."""
    body = compact_size(len(inputs)) + b"".join(
        prev + struct.pack("<I", vout) + compact_size(len(sig)) + sig + struct.pack("<I", seq)
        for prev, vout, sig, seq in inputs)
    body += compact_size(len(outputs)) + b"".join(
        struct.pack("<q", value) + compact_size(len(spk)) + spk for value, spk in outputs)
    head = struct.pack("<i", version)
    if witnesses:
        stacks = b"".join(compact_size(len(stack)) + b"".join(compact_size(len(item)) + item for item in stack)
                          for stack in witnesses)
        return head + b"\x00\x01" + body + stacks + struct.pack("<I", locktime)
    return head + body + struct.pack("<I", locktime)


def merkle_root(hashes_internal: list[bytes]) -> bytes:
    return block_merkle_levels(hashes_internal)[-1][0]


def mined_header(prev_internal: bytes, root: bytes, time_s: int) -> bytes:
    """An 80-byte header whose hash meets the regtest target (half of all nonces do)."""
    prefix = struct.pack("<i", BLOCK_VERSION) + prev_internal + root + struct.pack("<II", time_s, REGTEST_BITS)
    for nonce in range(1 << 32):
        header = prefix + struct.pack("<I", nonce)
        if int.from_bytes(sha256d(header), "little") <= POW_LIMIT:
            return header
    raise AssertionError("no nonce satisfies the regtest target")  # never happens


def build_block(parent_hash: str, height: int, time_s: int, payout_script: bytes, txs: list[bytes],
                fees_sats: int) -> bytes:
    """A block on `parent_hash`: a BIP34 coinbase paying subsidy + fees, the witness commitment, then `txs`."""
    wtxids = [WITNESS_RESERVED_VALUE] + [sha256d(raw) for raw in txs]
    commitment = sha256d(merkle_root(wtxids) + WITNESS_RESERVED_VALUE)
    script_sig = script_number_push(height) + b"\x04" + os.urandom(4)
    coinbase = serialize_tx(2, [(NULL_PREVOUT, 0xFFFFFFFF, script_sig, 0xFFFFFFFF)],
                            [(block_subsidy_sats(height) + fees_sats, payout_script),
                             (0, WITNESS_COMMITMENT_TAG + commitment)], [[WITNESS_RESERVED_VALUE]])
    all_txs = [coinbase] + txs
    root = merkle_root([parsed(raw).txid_internal for raw in all_txs])
    header = mined_header(internal_from_display(parent_hash), root, time_s)
    return header + compact_size(len(all_txs)) + b"".join(all_txs)


def block_transactions(raw_block: bytes) -> list[bytes]:
    """The raw transactions of a block, as libbitcoinkernel splits them."""
    import pbk  # loads libbitcoinkernel; imported on first use so `reserve-ledger --help` stays fast
    return [bytes(tx) for tx in pbk.Block(raw_block).transactions]
