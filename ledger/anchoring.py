"""Anchoring tree heads in Bitcoin: the payload, fee maths, a transaction reader and Core's merkleblock.

Everything here is pure: bytes and integers in, bytes and integers (or a named error) out. No network,
no SQL, no clock. The formats are specified for outside verifiers in docs/FORMATS-anchoring.md.

Byte order: ``*_internal`` hashes are as serialised inside transactions and blocks (SHA256d output);
``txid`` / ``block_hash`` strings are the reversed, display-order hex that Bitcoin Core prints.
"""

import hashlib
import math
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, NamedTuple, Protocol, Sequence

# --- limits -----------------------------------------------------------------------------------------------

PAYLOAD_MAGIC = b"RLA"
PAYLOAD_VERSION = 1
PAYLOAD_SIZE_BYTES = 40
TREE_SIZE_MAX = 2**32 - 1
OP_RETURN = 0x6A
# Relay policy: below 1 sat/vB many nodes (Knots, Core <= 29) do not relay; see research/bitcoin.md section 2.
FEE_RATE_FLOOR_SAT_PER_VB = 1
# Core's GetDustThreshold for a P2WPKH output at the 3 sat/vB dust relay fee.
DUST_P2WPKH_SATS = 294
HEADER_SIZE_BYTES = 80
# Consensus: a block holds at most MAX_BLOCK_WEIGHT / MIN_TRANSACTION_WEIGHT = 4_000_000 / (4 * 60) txs.
BLOCK_TX_COUNT_MAX = 4_000_000 // 240
# No serialised transaction can exceed the block weight limit.
TX_SIZE_MAX_BYTES = 4_000_000
MERKLEBLOCK_SIZE_MAX_BYTES = HEADER_SIZE_BYTES + 4 + 9 + 32 * BLOCK_TX_COUNT_MAX * 2 + 9 + BLOCK_TX_COUNT_MAX
LOCKTIME_HEIGHT_MAX = 499_999_999


# --- errors -----------------------------------------------------------------------------------------------

class AnchoringError(ValueError):
    """Base of every refusal in anchoring and proof handling: bad bytes, bad proofs, unaffordable fees."""


class PayloadLengthWrong(AnchoringError):
    pass


class PayloadMagicWrong(AnchoringError):
    pass


class PayloadVersionUnknown(AnchoringError):
    pass


class PayloadFieldInvalid(AnchoringError):
    """A tree size or root that cannot be encoded (negative, too large, not 32 bytes)."""


class AnchorPayloadAmbiguous(AnchoringError):
    """A transaction carries more than one Reserve Ledger payload; no verifier can tell which counts."""


class TransactionMalformed(AnchoringError):
    pass


class FeeRateInvalid(AnchoringError):
    pass


class FeeAboveCap(AnchoringError):
    def __init__(self, fee_sats: int, fee_max_sats: int):
        self.fee_sats, self.fee_max_sats = fee_sats, fee_max_sats
        super().__init__(f"fee {fee_sats} sats exceeds the cap of {fee_max_sats} sats")


class ChangeBelowDust(AnchoringError):
    def __init__(self, change_sats: int, dust_sats: int):
        self.change_sats, self.dust_sats = change_sats, dust_sats
        super().__init__(f"change of {change_sats} sats would be below the dust threshold of {dust_sats} sats")


class TxoutProofInvalid(AnchoringError):
    """Base: a merkleblock (gettxoutproof) that proves nothing."""


class TxoutProofMalformed(TxoutProofInvalid):
    """Truncated, trailing bytes, hash or flag counts out of range, or the traversal ran out of data."""


class TxoutProofTxCountInvalid(TxoutProofInvalid):
    pass


class TxoutProofDuplicateSubtree(TxoutProofInvalid):
    """Left and right children are equal: the CVE-2012-2459 mutation."""


class TxoutProofUnusedData(TxoutProofInvalid):
    """Hashes, flag bytes or set padding bits the traversal did not consume."""


class TxoutProofRootMismatch(TxoutProofInvalid):
    pass


class TxoutProofMatchesNothing(TxoutProofInvalid):
    pass


# --- small helpers ----------------------------------------------------------------------------------------

def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def display_hex(hash_internal: bytes) -> str:
    return hash_internal[::-1].hex()


def internal_from_display(hash_hex: str) -> bytes:
    raw = bytes.fromhex(hash_hex)
    if len(raw) != 32:
        raise ValueError(f"expected 32-byte hash hex, got {len(raw)} bytes")
    return raw[::-1]


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


class ByteReader:
    """Bounded reads over bytes; every shortfall or non-canonical size raises ``error``."""

    def __init__(self, data: bytes, error: type[AnchoringError]):
        self.data, self.pos, self.error = data, 0, error

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"truncated: wanted {n} bytes at offset {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def compact_size(self, limit: int) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            n = first
        else:
            width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
            n = int.from_bytes(self.take(width), "little")
            if n < {0xFD: 0xFD, 0xFE: 0x10000, 0xFF: 0x100000000}[first]:
                raise self.error(f"non-canonical size encoding at offset {self.pos - width - 1}")
        if n > limit:
            raise self.error(f"size {n} exceeds the limit of {limit} at offset {self.pos}")
        return n

    def remaining(self) -> int:
        return len(self.data) - self.pos


# --- payload ----------------------------------------------------------------------------------------------

class AnchorPayload(NamedTuple):
    tree_size: int
    root: bytes


def encode_payload(tree_size: int, root: bytes) -> bytes:
    """``RLA`` | 0x01 | tree_size uint32 big-endian | root (32): exactly 40 bytes."""
    if not isinstance(tree_size, int) or not 0 <= tree_size <= TREE_SIZE_MAX:
        raise PayloadFieldInvalid(f"tree size {tree_size!r} does not fit in an unsigned 32-bit integer")
    if not isinstance(root, bytes) or len(root) != 32:
        raise PayloadFieldInvalid("root must be 32 bytes")
    return PAYLOAD_MAGIC + bytes([PAYLOAD_VERSION]) + struct.pack(">I", tree_size) + root


def decode_payload(data: bytes) -> AnchorPayload:
    if len(data) != PAYLOAD_SIZE_BYTES:
        raise PayloadLengthWrong(f"payload is {len(data)} bytes, expected {PAYLOAD_SIZE_BYTES}")
    if data[:3] != PAYLOAD_MAGIC:
        raise PayloadMagicWrong(f"payload magic is {data[:3]!r}, expected {PAYLOAD_MAGIC!r}")
    if data[3] != PAYLOAD_VERSION:
        raise PayloadVersionUnknown(f"payload version {data[3]} is unknown (expected {PAYLOAD_VERSION})")
    return AnchorPayload(struct.unpack(">I", data[4:8])[0], bytes(data[8:40]))


def op_return_script(payload: bytes) -> bytes:
    """OP_RETURN followed by one direct push of the 40-byte payload: ``6a 28 <payload>``."""
    decode_payload(payload)
    return bytes([OP_RETURN, len(payload)]) + payload


def _payload_candidate(script_pubkey: bytes) -> bytes | None:
    """The pushed data of ``OP_RETURN <one direct push starting with RLA>``, else None."""
    if len(script_pubkey) < 2 or script_pubkey[0] != OP_RETURN:
        return None
    push = script_pubkey[1]
    if not 1 <= push <= 75 or len(script_pubkey) != 2 + push:
        return None
    data = script_pubkey[2:]
    return data if data[:3] == PAYLOAD_MAGIC else None


# --- transactions -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TxIn:
    prev_txid_internal: bytes
    vout: int
    script_sig: bytes
    sequence: int


@dataclass(frozen=True)
class TxOut:
    value_sats: int
    script_pubkey: bytes
    script_offset: int  # where script_pubkey starts inside the no-witness serialisation


@dataclass(frozen=True)
class ParsedTx:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int
    witnesses: tuple[tuple[bytes, ...], ...]  # empty when the tx was serialised without witness
    no_witness: bytes  # the serialisation the txid hashes
    size_bytes: int  # of the bytes given, witness included if present

    @property
    def txid_internal(self) -> bytes:
        return sha256d(self.no_witness)

    @property
    def txid(self) -> str:
        return display_hex(self.txid_internal)

    @property
    def weight(self) -> int:
        return 3 * len(self.no_witness) + self.size_bytes

    @property
    def vsize(self) -> int:
        return vsize_from_weight(self.weight)


def parse_transaction(raw: bytes) -> ParsedTx:
    """Read a transaction in either serialisation (BIP144 marker 0x00 0x01 or legacy); no trailing bytes."""
    if not isinstance(raw, bytes) or not 10 <= len(raw) <= TX_SIZE_MAX_BYTES:
        raise TransactionMalformed(f"transaction must be bytes of length 10..{TX_SIZE_MAX_BYTES}")
    r = ByteReader(raw, TransactionMalformed)
    version = r.u32()
    segwit = raw[4] == 0
    if segwit:
        if r.take(2) != b"\x00\x01":
            raise TransactionMalformed("unknown segwit flag")
    body_start = r.pos
    inputs = tuple(_read_input(r) for _ in range(r.compact_size(r.remaining() // 41)))
    if not inputs:
        raise TransactionMalformed("a transaction needs at least one input")
    shift = body_start - 4  # offsets in no_witness are 2 bytes earlier when marker and flag are present
    outputs = tuple(_read_output(r, shift) for _ in range(r.compact_size(r.remaining() // 9)))
    if not outputs:
        raise TransactionMalformed("a transaction needs at least one output")
    body_end = r.pos
    witnesses: tuple[tuple[bytes, ...], ...] = ()
    if segwit:
        witnesses = tuple(_read_witness(r) for _ in inputs)
        if not any(witnesses):
            raise TransactionMalformed("segwit marker with only empty witnesses")
    locktime = r.u32()
    if r.remaining():
        raise TransactionMalformed(f"{r.remaining()} trailing bytes after the transaction")
    no_witness = raw[:4] + raw[body_start:body_end] + raw[-4:]
    return ParsedTx(version, inputs, outputs, locktime, witnesses, no_witness, len(raw))


def _read_input(r: ByteReader) -> TxIn:
    prev = r.take(32)
    vout = r.u32()
    script_sig = r.take(r.compact_size(r.remaining()))
    return TxIn(prev, vout, script_sig, r.u32())


def _read_output(r: ByteReader, shift: int) -> TxOut:
    value = r.u64()
    length = r.compact_size(r.remaining())
    offset = r.pos - shift
    return TxOut(value, r.take(length), offset)


def _read_witness(r: ByteReader) -> tuple[bytes, ...]:
    return tuple(r.take(r.compact_size(r.remaining())) for _ in range(r.compact_size(r.remaining())))


def find_anchor_output(tx: ParsedTx) -> tuple[int, AnchorPayload] | None:
    """(output index, payload) of the single Reserve Ledger payload in ``tx``; None if there is none."""
    found = [(i, data) for i, out in enumerate(tx.outputs)
             if (data := _payload_candidate(out.script_pubkey)) is not None]
    if len(found) > 1:
        raise AnchorPayloadAmbiguous(f"{len(found)} outputs carry a Reserve Ledger payload")
    if not found:
        return None
    index, data = found[0]
    return index, decode_payload(data)


def find_anchor_payload(raw_tx_without_witness: bytes) -> AnchorPayload | None:
    """The payload of the anchor transaction, None if it has no ``OP_RETURN RLA...`` output.

    Raises a Payload* error when such an output exists but is malformed, and AnchorPayloadAmbiguous
    when there are several. Witness serialisations are accepted too (the payload is outside the witness).
    """
    found = find_anchor_output(parse_transaction(raw_tx_without_witness))
    return None if found is None else found[1]


# --- fees -------------------------------------------------------------------------------------------------

FeeRate = int | Decimal


def _as_rate(fee_rate_sat_per_vb: FeeRate) -> Decimal:
    if isinstance(fee_rate_sat_per_vb, (bool, float)) or not isinstance(fee_rate_sat_per_vb, (int, Decimal)):
        raise FeeRateInvalid(f"fee rate must be int or Decimal sat/vB, got {type(fee_rate_sat_per_vb).__name__}")
    rate = Decimal(fee_rate_sat_per_vb)
    if not rate.is_finite() or rate < 0:
        raise FeeRateInvalid(f"fee rate {fee_rate_sat_per_vb} is not a finite non-negative number")
    return rate


def fee_rate_for_anchor(estimate_sat_per_vb: FeeRate, fee_rate_max_sat_per_vb: FeeRate) -> Decimal:
    """The estimate clamped to [FEE_RATE_FLOOR_SAT_PER_VB, the caller's maximum]."""
    estimate, ceiling = _as_rate(estimate_sat_per_vb), _as_rate(fee_rate_max_sat_per_vb)
    if ceiling < FEE_RATE_FLOOR_SAT_PER_VB:
        raise FeeRateInvalid(f"maximum fee rate {ceiling} is below the floor of {FEE_RATE_FLOOR_SAT_PER_VB} sat/vB")
    return min(max(estimate, Decimal(FEE_RATE_FLOOR_SAT_PER_VB)), ceiling)


def fee_sats(vsize_vb: int, fee_rate_sat_per_vb: FeeRate) -> int:
    """ceil(vsize x rate), the rate floored at 1 sat/vB so the transaction relays on every default policy."""
    if not isinstance(vsize_vb, int) or vsize_vb <= 0:
        raise ValueError(f"vsize must be a positive int, got {vsize_vb!r}")
    rate = max(_as_rate(fee_rate_sat_per_vb), Decimal(FEE_RATE_FLOOR_SAT_PER_VB))
    return math.ceil(vsize_vb * rate)


def check_fee_cap(fee: int, fee_max_sats: int) -> None:
    if fee > fee_max_sats:
        raise FeeAboveCap(fee, fee_max_sats)


def change_value_sats(input_sats: int, fee: int, dust_sats: int = DUST_P2WPKH_SATS) -> int:
    """What is left for the change output; refused when it would be dust (the anchor chain would end)."""
    change = input_sats - fee
    if change < dust_sats:
        raise ChangeBelowDust(change, dust_sats)
    return change


def vsize_from_weight(weight: int) -> int:
    return (weight + 3) // 4


# --- chain backends ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utxo:
    txid: str  # display hex
    vout: int
    value_sats: int


class OutpointInvalid(AnchoringError):
    """Not `TXID:VOUT` (64 hex digits, a colon, an output index)."""


@dataclass(frozen=True, order=True)
class Outpoint:
    """One transaction output, as `TXID:VOUT` (txid in display order)."""

    txid: str
    vout: int

    def __str__(self) -> str:
        return f"{self.txid}:{self.vout}"

    def to_json(self) -> dict:
        return {"txid": self.txid, "vout": self.vout}


def parse_outpoint(text: str) -> Outpoint:
    """`TXID:VOUT` -> Outpoint; OutpointInvalid for anything else (the txid is lower-cased)."""
    txid, colon, vout = text.strip().partition(":") if isinstance(text, str) else ("", "", "")
    if not colon or len(txid) != 64 or not all(c in "0123456789abcdefABCDEF" for c in txid) or \
            not vout.isdigit() or len(vout) > 10 or int(vout) > 0xFFFFFFFF:
        raise OutpointInvalid(f"{text!r} is not an outpoint TXID:VOUT (64 hex digits, a colon, an output index)")
    return Outpoint(txid.lower(), int(vout))


def outpoint_of_json(value) -> Outpoint | None:
    """The bundle's and the report's `{"txid": ..., "vout": ...}` (or null) -> Outpoint | None."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("vout"), int) or isinstance(value.get("vout"), bool):
        raise OutpointInvalid(f"{value!r} is not an outpoint object {{txid, vout}}")
    return parse_outpoint(f"{value.get('txid')}:{value['vout']}")


# --- the chain of anchor transactions on chain (docs/FORMATS-anchoring.md §6) ------------------------------

ANCHOR_CHAIN_LENGTH_MAX = 100_000   # transactions followed from the genesis (= ledger.audit.ANCHORS_MAX)


class AnchorChainBroken(AnchoringError):
    """The chain of anchor transactions from the genesis cannot be followed to an unspent output."""


def spent_outpoints(tx: ParsedTx) -> list[Outpoint]:
    """The outputs ``tx`` spends, in input order."""
    return [Outpoint(display_hex(i.prev_txid_internal), i.vout) for i in tx.inputs]


def _checked(raw: bytes, txid: str) -> ParsedTx:
    tx = parse_transaction(raw)
    if tx.txid != txid:
        raise AnchorChainBroken(f"asked for transaction {txid}, the node sent {tx.txid}")
    return tx


def continuation(tx: ParsedTx, script_pubkey: bytes) -> tuple[int, bytes] | None:
    """(vout, its script): the output that continues the chain of anchors after ``tx`` spent an output paying
    ``script_pubkey``. That is its one output back to the same script; or, when it pays none back, and ``tx`` is
    an anchor of exactly two outputs (the payload and one coin), that coin: the chain moved to a new wallet (a
    rotation, signed by the old key). None: the chain ends at ``tx``."""
    paying = [vout for vout, out in enumerate(tx.outputs) if out.script_pubkey == script_pubkey]
    if len(paying) > 1:
        raise AnchorChainBroken(f"transaction {tx.txid} pays the anchor address {len(paying)} times: which output "
                                "continues the chain is ambiguous")
    if paying:
        return paying[0], script_pubkey
    found = find_anchor_output(tx)
    if found is None or len(tx.outputs) != 2:
        return None
    coin = tx.outputs[1 - found[0]]
    if coin.value_sats == 0 or coin.script_pubkey[:1] == bytes([OP_RETURN]):
        return None
    return 1 - found[0], coin.script_pubkey


def follow_anchor_chain(genesis: Outpoint, script_pubkey: bytes, spender: Callable[[Outpoint], str | None],
                        raw_transaction: Callable[[str], bytes],
                        length_max: int = ANCHOR_CHAIN_LENGTH_MAX) -> list[bytes]:
    """Forward from the genesis (an output paying ``script_pubkey``): each confirmed spender of the output that
    continues the chain (`continuation`), until that output is unspent. Returns the raw transactions in chain
    order ([] while the genesis is unspent)."""
    chain, at, script = [], genesis, script_pubkey
    while (txid := spender(at)) is not None:
        if len(chain) >= length_max:
            raise AnchorChainBroken(f"more than {length_max} transactions descend from the genesis {genesis}")
        raw = raw_transaction(txid)
        tx = _checked(raw, txid)
        if at not in spent_outpoints(tx):
            raise AnchorChainBroken(f"the node says {txid} spends {at}, but it does not")
        chain.append(raw)
        following = continuation(tx, script)
        if following is None:
            raise AnchorChainBroken(f"the chain from the genesis {genesis} ends at {txid}: it spends the anchor "
                                    "wallet without paying it back (no anchor can follow)")
        at, script = Outpoint(txid, following[0]), following[1]
    return chain


def trace_anchor_chain(genesis: Outpoint, script_pubkey: bytes, unspent: list[Outpoint],
                       raw_transaction: Callable[[str], bytes],
                       length_max: int = ANCHOR_CHAIN_LENGTH_MAX) -> list[bytes]:
    """Backward, for a node that can only list unspent outputs: from each of ``unspent`` (the coins at the anchor
    address, and at any address the chain may have moved to), through the input each transaction continues, until
    one reaches the genesis. Returns the same transactions as `follow_anchor_chain`, in chain order."""
    if genesis in unspent:
        return []
    for tip in unspent:
        chain, at = [], tip
        while len(chain) < length_max:
            raw = raw_transaction(at.txid)
            tx = _checked(raw, at.txid)
            previous = [i for i in spent_outpoints(tx) if _continued_by(tx, i, at.vout, raw_transaction)]
            if len(previous) != 1:
                break
            chain.append(raw)
            if previous[0] == genesis:
                return chain[::-1]
            at = previous[0]
    raise AnchorChainBroken(f"the genesis {genesis} is spent, but no unspent output at the anchor address (or one "
                            "it moved to) descends from it: its chain ends (or leaves the anchor wallet)")


def _continued_by(tx: ParsedTx, spent: Outpoint, vout: int, raw_transaction: Callable[[str], bytes]) -> bool:
    """``tx`` spent ``spent``, and the chain continues from there through ``tx``'s output ``vout``."""
    outputs = parse_transaction(raw_transaction(spent.txid)).outputs
    if spent.vout >= len(outputs):
        return False
    following = continuation(tx, outputs[spent.vout].script_pubkey)
    return following is not None and following[0] == vout


def script_of_outpoint(outpoint: Outpoint, raw: bytes) -> bytes:
    """The output script of ``outpoint``, from its transaction's raw bytes (checked against its txid): the
    genesis's script is the anchor address the chain keeps paying."""
    tx = parse_transaction(raw)
    if tx.txid != outpoint.txid:
        raise AnchorChainBroken(f"asked for transaction {outpoint.txid}, the node sent {tx.txid}")
    if outpoint.vout >= len(tx.outputs):
        raise LookupError(f"transaction {outpoint.txid} has no output {outpoint.vout}")
    return tx.outputs[outpoint.vout].script_pubkey


class ChainBackend(Protocol):
    """What the anchor worker needs from a chain: Core RPC, Esplora, or the embedded regtest chain.

    Hashes are display-order hex strings (as Core prints them); headers, transactions and proofs are raw
    bytes. Lookups of unknown items raise ``LookupError``; transport failures raise ``OSError``.
    """

    def tip_height(self) -> int:
        """Height of the best chain's tip."""

    def block_hash(self, height: int) -> str:
        """Hash of the best-chain block at ``height``."""

    def block_header(self, block_hash: str) -> bytes:
        """The 80-byte header."""

    def block(self, block_hash: str) -> bytes:
        """The raw block (the reserves monitor reads each new best-chain block; services/monitor)."""

    def transaction_status(self, txid: str) -> tuple[str | None, int]:
        """(hash of the best-chain block holding the tx, confirmations); (None, 0) if unconfirmed."""

    def raw_transaction(self, txid: str) -> bytes:
        """The transaction as serialised on the network (witness included)."""

    def txout_proof(self, txid: str, block_hash: str) -> bytes:
        """Core ``gettxoutproof`` merkleblock bytes for one txid in that block."""

    def test_accept(self, raw: bytes) -> tuple[bool, str]:
        """Mempool policy check without broadcasting: (allowed, reject reason or "")."""

    def broadcast(self, raw: bytes) -> str:
        """Submit to the network; returns the txid. Resending a known tx is not an error."""

    def estimate_fee_sat_per_vb(self, target_blocks: int) -> FeeRate:
        """Fee rate estimate for confirmation within ``target_blocks``."""

    def utxos(self, script_pubkey: bytes) -> list[Utxo]:
        """Confirmed unspent outputs paying ``script_pubkey``."""

    def anchor_chain(self, genesis: Outpoint, moved_to: Sequence[bytes] = ()) -> list[bytes]:
        """The confirmed chain of transactions from the anchor wallet's first funding coin: the one spending
        ``genesis``, then the one spending the output that continues it (``continuation``: back to the same
        address, or to a new wallet's), ... up to the one whose such output is unspent now; raw, in chain order
        ([] while the genesis is unspent). Each backend walks it its own way (``follow_anchor_chain`` forward,
        ``trace_anchor_chain`` backward from the coins unspent at the genesis's script and at ``moved_to``, the
        scripts the chain may have moved to); AnchorChainBroken when the chain cannot be followed, LookupError
        when the genesis is unknown."""


# --- merkleblock (Core gettxoutproof) ---------------------------------------------------------------------

@dataclass(frozen=True)
class TxoutProof:
    """A checked merkleblock. ``tx_count`` is as claimed: the root only commits to the tree edge walked."""

    header: bytes
    tx_count: int
    matched: list[tuple[bytes, int]]  # (txid internal, position in the block)
    branch: list[bytes] | None  # siblings leaf to root for the single match, else None

    @property
    def merkle_root(self) -> bytes:
        return self.header[36:68]

    @property
    def block_hash(self) -> str:
        return display_hex(sha256d(self.header))


def _tree_width(tx_count: int, height: int) -> int:
    return (tx_count + (1 << height) - 1) >> height


def _tree_height(tx_count: int) -> int:
    height = 0
    while _tree_width(tx_count, height) > 1:
        height += 1
    return height


def merkle_root_from_branch(txid_internal: bytes, index: int, branch: list[bytes]) -> bytes:
    """Fold a branch (siblings leaf to root) the way Bitcoin's block merkle tree does."""
    current = txid_internal
    for level, sibling in enumerate(branch):
        current = sha256d(sibling + current) if index >> level & 1 else sha256d(current + sibling)
    return current


def block_merkle_levels(txids_internal: list[bytes]) -> list[list[bytes]]:
    """Every level of the block merkle tree, leaves first; an odd level's last hash pairs with itself."""
    if not txids_internal:
        raise ValueError("a block has at least one transaction")
    levels = [list(txids_internal)]
    while len(levels[-1]) > 1:
        row = levels[-1]
        levels.append([sha256d(row[i] + row[min(i + 1, len(row) - 1)]) for i in range(0, len(row), 2)])
    return levels


def build_txout_proof(header: bytes, txids_internal: list[bytes], match_index: int) -> bytes:
    """A merkleblock in Core's format proving ``txids_internal[match_index]`` is in the block of ``header``."""
    if len(header) != HEADER_SIZE_BYTES:
        raise ValueError("header must be 80 bytes")
    if not 0 <= match_index < len(txids_internal) <= BLOCK_TX_COUNT_MAX:
        raise ValueError(f"match index {match_index} is outside a block of {len(txids_internal)} txs")
    levels = block_merkle_levels(txids_internal)
    if levels[-1][0] != header[36:68]:
        raise ValueError("the header's merkle root does not commit to these txids")
    tx_count, bits, hashes = len(txids_internal), [], []

    def walk(height: int, pos: int) -> None:
        above_match = pos << height <= match_index < (pos + 1) << height
        bits.append(above_match)
        if height == 0 or not above_match:
            hashes.append(levels[height][pos])
            return
        walk(height - 1, pos * 2)
        if pos * 2 + 1 < _tree_width(tx_count, height - 1):
            walk(height - 1, pos * 2 + 1)

    walk(len(levels) - 1, 0)
    flags = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        flags[i // 8] |= bit << (i % 8)
    return (header + struct.pack("<I", tx_count) + compact_size(len(hashes)) + b"".join(hashes)
            + compact_size(len(flags)) + bytes(flags))


def verify_txout_proof(proof: bytes) -> TxoutProof:
    """Parse and check a merkleblock: the partial tree must be canonical and fold to the header's root.

    It does not check the header is on any chain; the caller compares it with its own best chain.
    """
    if not isinstance(proof, bytes) or len(proof) > MERKLEBLOCK_SIZE_MAX_BYTES:
        raise TxoutProofMalformed("proof must be bytes of bounded length")
    r = ByteReader(proof, TxoutProofMalformed)
    header = r.take(HEADER_SIZE_BYTES)
    tx_count = r.u32()
    if not 1 <= tx_count <= BLOCK_TX_COUNT_MAX:
        raise TxoutProofTxCountInvalid(f"transaction count {tx_count} is outside 1..{BLOCK_TX_COUNT_MAX}")
    hashes = [r.take(32) for _ in range(r.compact_size(min(tx_count, r.remaining() // 32)))]
    flags = r.take(r.compact_size(r.remaining()))
    if r.remaining():
        raise TxoutProofMalformed(f"{r.remaining()} trailing bytes after the merkleblock")
    bits = [flags[i // 8] >> (i % 8) & 1 for i in range(len(flags) * 8)]
    if len(bits) < len(hashes):
        raise TxoutProofMalformed("fewer flag bits than hashes")
    height = _tree_height(tx_count)
    nodes: dict[tuple[int, int], bytes] = {}
    matched: list[tuple[bytes, int]] = []
    used = [0, 0]  # bits, hashes

    def walk(level: int, pos: int) -> bytes:
        if used[0] >= len(bits):
            raise TxoutProofMalformed("ran out of flag bits")
        above_match = bits[used[0]]
        used[0] += 1
        if level == 0 or not above_match:
            if used[1] >= len(hashes):
                raise TxoutProofMalformed("ran out of hashes")
            node = hashes[used[1]]
            used[1] += 1
            if level == 0 and above_match:
                matched.append((node, pos))
        else:
            left = walk(level - 1, pos * 2)
            right = left
            if pos * 2 + 1 < _tree_width(tx_count, level - 1):
                right = walk(level - 1, pos * 2 + 1)
                if right == left:
                    raise TxoutProofDuplicateSubtree(f"equal children under node ({level}, {pos})")
            node = sha256d(left + right)
        nodes[(level, pos)] = node
        return node

    root = walk(height, 0)
    _check_all_used(used, bits, flags, hashes)
    if root != header[36:68]:
        raise TxoutProofRootMismatch("the partial tree does not fold to the header's merkle root")
    if not matched:
        raise TxoutProofMatchesNothing("the proof matches no transaction")
    branch = _branch(nodes, matched[0][1], tx_count, height) if len(matched) == 1 else None
    return TxoutProof(header, tx_count, matched, branch)


def _check_all_used(used: list[int], bits: list[int], flags: bytes, hashes: list[bytes]) -> None:
    bits_used, hashes_used = used
    if hashes_used != len(hashes):
        raise TxoutProofUnusedData(f"{len(hashes) - hashes_used} hashes were not used")
    if (bits_used + 7) // 8 != len(flags):
        raise TxoutProofUnusedData(f"{len(flags) - (bits_used + 7) // 8} flag bytes were not used")
    if any(bits[bits_used:]):
        raise TxoutProofUnusedData("padding bits after the last used flag bit are set")


def _branch(nodes: dict[tuple[int, int], bytes], index: int, tx_count: int, height: int) -> list[bytes]:
    branch = []
    for level in range(height):
        pos = index >> level
        sibling = pos ^ 1
        branch.append(nodes[(level, sibling if sibling < _tree_width(tx_count, level) else pos)])
    return branch
