"""An embedded regtest chain whose blocks are validated by Bitcoin Core's consensus code (libbitcoinkernel).

Storage (DIR): `blocks.dat` holds every block the kernel accepted, each as a 4-byte little-endian length and
the raw block, in the order they were processed (stale branches included, so replaying the file reproduces
the same best chain); `mempool.json` holds unconfirmed transactions. A process that opens DIR replays
`blocks.dat` into a private kernel (in-memory indexes, block files in a temporary directory). Every
operation takes DIR/lock and first catches up with the files, so a service, a `regtest-node` and a test can
share one DIR, and a restarted service or an auditor sees the same chain.

Consensus is Core's: every block is handed to `process_block`, whose return value says nothing about
validity, so a mined block counts only once the kernel's best tip *is* that block. The mempool is this
module's own, a named subset of Core's policy (not a fake of it): inputs exist and are mature, every input
passes libbitcoinkernel's script checks with all consensus flags, fee >= 1 sat/vB, OP_RETURN scripts <= 83
bytes, other outputs above dust, final locktime, and full RBF with Core's fee rules (the replacement pays at
least the replaced fees plus 1 sat/vB of its own size, at a higher fee rate).
"""

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import pathlib
import shutil
import struct
import tempfile
import threading
import time
from decimal import Decimal
from typing import Callable, Iterator

import pbk
from pbk.script import PrecomputedTransactionData

from ledger.anchoring import (ParsedTx, TransactionMalformed, Utxo, block_merkle_levels, build_txout_proof,
                              compact_size, display_hex, internal_from_display, parse_transaction, sha256d)
from services.bitcoin.errors import BroadcastRejected

REGTEST_BITS = 0x207FFFFF
POW_LIMIT = 0x7FFFFF << (8 * (0x20 - 3))
BLOCK_VERSION = 0x20000000
COINBASE_MATURITY_BLOCKS = 100
HALVING_INTERVAL_BLOCKS = 150
SUBSIDY_INITIAL_SATS = 50 * 100_000_000
ANYONE_CAN_SPEND = bytes([0x51])  # OP_TRUE: the faucet's coins, spendable without a signature
BOOTSTRAP_BLOCKS = 200            # a new chain starts with 100 mature faucet coinbases
MIN_RELAY_SAT_PER_VB = 1
INCREMENTAL_RELAY_SAT_PER_VB = 1
OP_RETURN_SCRIPT_MAX_BYTES = 83
BLOCK_RECORD_MAX_BYTES = 4_000_000
REORG_DEPTH_MAX = 100
MINE_COUNT_MAX = 1_000
LOCKTIME_THRESHOLD = 500_000_000
NULL_PREVOUT = b"\x00" * 32
WITNESS_COMMITMENT_TAG = bytes.fromhex("6a24aa21a9ed")


class ChainError(Exception):
    """The embedded chain could not do what was asked."""


class BlockRejected(ChainError):
    """libbitcoinkernel refused a block (or accepted it without connecting it)."""


class FaucetDry(ChainError):
    """Not enough mature faucet coins for the amount asked."""


@dataclasses.dataclass
class _Coin:
    value_sats: int
    script_pubkey: bytes
    height: int
    is_coinbase: bool


@dataclasses.dataclass
class _View:
    """The best chain as this process last saw it: hashes by height, confirmed txs, unspent coins."""

    hashes: list[str]
    txs: dict[str, tuple[int, bytes]]            # txid -> (height, raw)
    coins: dict[tuple[str, int], _Coin]

    @property
    def height(self) -> int:
        return len(self.hashes) - 1


@functools.lru_cache(maxsize=65_536)
def _parsed(raw: bytes) -> ParsedTx:
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


def _serialize_tx(version: int, inputs: list[tuple[bytes, int, bytes, int]], outputs: list[tuple[int, bytes]],
                  witnesses: list[list[bytes]] | None, locktime: int = 0) -> bytes:
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


def _merkle_root(hashes_internal: list[bytes]) -> bytes:
    return block_merkle_levels(hashes_internal)[-1][0]


def _header(prev_internal: bytes, merkle_root: bytes, time_s: int) -> bytes:
    prefix = struct.pack("<i", BLOCK_VERSION) + prev_internal + merkle_root + struct.pack("<II", time_s, REGTEST_BITS)
    for nonce in range(1 << 32):
        header = prefix + struct.pack("<I", nonce)
        if int.from_bytes(sha256d(header), "little") <= POW_LIMIT:
            return header
    raise ChainError("no nonce satisfies the regtest target")  # never happens: half of all hashes do


class RegtestChain:
    """Implements ledger.anchoring.ChainBackend, plus mining, a faucet and reorgs for demos and tests."""

    def __init__(self, directory: str | os.PathLike, *, fee_rate_sat_per_vb: Decimal = Decimal(1),
                 clock_s: Callable[[], float] = time.time):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fee_rate = Decimal(fee_rate_sat_per_vb)
        self._clock_s = clock_s
        self._thread_lock = threading.RLock()
        self._lock_file = open(self.directory / "lock", "a+b")
        self._lock_depth = 0
        self._kernel_dir = tempfile.mkdtemp(prefix="reserve-ledger-kernel-")
        self._last_invalid: str | None = None
        callbacks = pbk.ValidationInterfaceCallbacks(block_checked=self._on_block_checked)
        self._context = pbk.make_context(pbk.ChainType.REGTEST, validation_callbacks=callbacks)
        options = pbk.ChainstateManagerOptions(self._context, self._kernel_dir, os.path.join(self._kernel_dir, "blocks"))
        options.update_block_tree_db_in_memory(True)
        options.update_chainstate_db_in_memory(True)
        self._chainman = pbk.ChainstateManager(options)
        self._raw_blocks: dict[str, bytes] = {}
        self._blocks_offset = 0
        self._mempool: dict[str, bytes] = {}
        self._mempool_checked_at: str | None = None
        self._view = _View([self._tip_hash_from_kernel()], {}, {})
        with self._locked():
            if self._view.height == 0:
                self._mine_locked(BOOTSTRAP_BLOCKS, ANYONE_CAN_SPEND, include_mempool=False)

    def close(self) -> None:
        with self._thread_lock:
            self._chainman = None
            self._lock_file.close()
            shutil.rmtree(self._kernel_dir, ignore_errors=True)

    def __enter__(self) -> "RegtestChain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- locking and catching up with other processes ---------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_depth == 0:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                if self._lock_depth == 1:
                    self._catch_up()
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        path = self.directory / "blocks.dat"
        if path.exists() and path.stat().st_size > self._blocks_offset:
            with open(path, "rb") as f:
                f.seek(self._blocks_offset)
                data = f.read()
            consumed = 0
            while len(data) - consumed >= 4:
                (size,) = struct.unpack_from("<I", data, consumed)
                if size > BLOCK_RECORD_MAX_BYTES or len(data) - consumed - 4 < size:
                    break  # a torn final record from a crash: the next append overwrites it
                self._connect_known(data[consumed + 4: consumed + 4 + size])
                consumed += 4 + size
            self._blocks_offset += consumed
            self._refresh_view()
        self._load_mempool()
        if self._view_changed_since_mempool_check():
            self._drop_invalid_mempool()
            self._save_mempool()

    def _connect_known(self, raw: bytes) -> None:
        block = pbk.Block(raw)
        self._chainman.process_block(block)
        block_hash = str(block.block_hash)
        if not self._kernel_knows(block_hash):
            raise BlockRejected(f"stored block {block_hash} was not accepted on replay")
        self._raw_blocks[block_hash] = raw

    def _kernel_knows(self, block_hash: str) -> bool:
        return pbk.BlockHash(internal_from_display(block_hash)) in self._chainman.block_tree_entries

    def _append_blocks(self, raws: list[bytes]) -> None:
        path = self.directory / "blocks.dat"
        with open(path, "r+b" if path.exists() else "w+b") as f:
            f.truncate(self._blocks_offset)
            f.seek(self._blocks_offset)
            for raw in raws:
                f.write(struct.pack("<I", len(raw)) + raw)
            f.flush()
            os.fsync(f.fileno())
            self._blocks_offset = f.tell()

    def _load_mempool(self) -> None:
        """The file is the mempool every process shares; it is small, so it is simply re-read."""
        path = self.directory / "mempool.json"
        if path.exists():
            self._mempool = {txid: bytes.fromhex(raw) for txid, raw in json.loads(path.read_text()).items()}

    def _view_changed_since_mempool_check(self) -> bool:
        changed = self._mempool_checked_at != self._view.hashes[-1]
        self._mempool_checked_at = self._view.hashes[-1]
        return changed

    def _save_mempool(self) -> None:
        path = self.directory / "mempool.json"
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({txid: raw.hex() for txid, raw in self._mempool.items()}))
        os.replace(temporary, path)

    # --- the best chain -----------------------------------------------------------------------------------

    def _on_block_checked(self, _user_data, _block, state) -> None:
        if state.validation_mode != pbk.ValidationMode.VALID:
            self._last_invalid = f"{state.validation_mode.name} {state.block_validation_result.name}"

    def _tip_hash_from_kernel(self) -> str:
        chain = self._chainman.get_active_chain()
        return str(chain.block_tree_entries[chain.height].block_hash)

    def _hashes_from_kernel(self) -> list[str]:
        chain = self._chainman.get_active_chain()
        return [str(chain.block_tree_entries[h].block_hash) for h in range(chain.height + 1)]

    def _refresh_view(self) -> None:
        """Re-derive confirmed txs and coins when the tip moved; only the new blocks when it just grew."""
        hashes = self._hashes_from_kernel()
        old = self._view
        if hashes[: len(old.hashes)] == old.hashes:
            view, start = old, len(old.hashes)
            view.hashes = hashes
        else:
            view, start = _View(hashes, {}, {}), 1
        for height in range(start, len(hashes)):
            self._apply_block(view, height, self._raw_blocks[hashes[height]])
        self._view = view

    def _apply_block(self, view: _View, height: int, raw: bytes) -> None:
        for index, tx_raw in enumerate(block_transactions(raw)):
            tx = _parsed(tx_raw)
            if index > 0:
                for txin in tx.inputs:
                    del view.coins[(display_hex(txin.prev_txid_internal), txin.vout)]
            view.txs[tx.txid] = (height, tx_raw)
            for vout, out in enumerate(tx.outputs):
                if out.script_pubkey[:1] != b"\x6a":
                    view.coins[(tx.txid, vout)] = _Coin(out.value_sats, out.script_pubkey, height, index == 0)

    # --- mining -------------------------------------------------------------------------------------------

    def mine(self, count: int = 1, payout_script: bytes = ANYONE_CAN_SPEND, *,
             include_mempool: bool = True) -> list[str]:
        """Mine `count` blocks on the tip (with the mempool's transactions unless told not to)."""
        if not 1 <= count <= MINE_COUNT_MAX:
            raise ValueError(f"count must be 1..{MINE_COUNT_MAX}")
        with self._locked():
            return self._mine_locked(count, payout_script, include_mempool)

    def _mine_locked(self, count: int, payout_script: bytes, include_mempool: bool) -> list[str]:
        mined = []
        for _ in range(count):
            txs = self._block_template() if include_mempool else []
            raw = self._build_block(self._view.hashes[-1], self._view.height + 1, payout_script, txs)
            mined.append(self._submit([raw]))
        return mined

    def _block_template(self) -> list[bytes]:
        """Mempool transactions, parents before children."""
        chosen: list[bytes] = []
        waiting = dict(self._mempool)
        while waiting:
            ready = [txid for txid, raw in waiting.items()
                     if all(display_hex(i.prev_txid_internal) not in waiting for i in _parsed(raw).inputs)]
            if not ready:
                break
            for txid in ready:
                chosen.append(waiting.pop(txid))
        return chosen

    def _build_block(self, parent_hash: str, height: int, payout_script: bytes, txs: list[bytes]) -> bytes:
        parent = self._chainman.block_tree_entries[pbk.BlockHash(internal_from_display(parent_hash))]
        fees = sum(self._fee_of(_parsed(raw)) for raw in txs)
        wtxids = [b"\x00" * 32] + [sha256d(raw) for raw in txs]
        commitment = sha256d(_merkle_root(wtxids) + b"\x00" * 32)
        script_sig = script_number_push(height) + b"\x04" + os.urandom(4)
        coinbase = _serialize_tx(2, [(NULL_PREVOUT, 0xFFFFFFFF, script_sig, 0xFFFFFFFF)],
                                 [(block_subsidy_sats(height) + fees, payout_script),
                                  (0, WITNESS_COMMITMENT_TAG + commitment)], [[b"\x00" * 32]])
        all_txs = [coinbase] + txs
        root = _merkle_root([_parsed(raw).txid_internal for raw in all_txs])
        time_s = max(int(self._clock_s()), int(parent.block_header.timestamp.timestamp()) + 1)
        header = _header(internal_from_display(parent_hash), root, time_s)
        return header + compact_size(len(all_txs)) + b"".join(all_txs)

    def _fee_of(self, tx: ParsedTx) -> int:
        spent = sum(self._spendable_coin(display_hex(i.prev_txid_internal), i.vout).value_sats for i in tx.inputs)
        return spent - sum(out.value_sats for out in tx.outputs)

    def _submit(self, raws: list[bytes]) -> str:
        """Hand blocks to the kernel; keep them only if the last one became the best tip."""
        self._last_invalid = None
        for raw in raws:
            try:
                self._chainman.process_block(pbk.Block(raw))
            except pbk.ProcessBlockException as error:
                raise BlockRejected(f"libbitcoinkernel refused the block: {error}") from None
        expected = str(pbk.Block(raws[-1]).block_hash)
        if self._tip_hash_from_kernel() != expected:
            raise BlockRejected(f"block {expected} was not connected ({self._last_invalid or 'not the best chain'})")
        for raw in raws:
            self._raw_blocks[str(pbk.Block(raw).block_hash)] = raw
        self._append_blocks(raws)
        self._refresh_view()
        self._drop_invalid_mempool()
        self._save_mempool()
        self._mempool_checked_at = self._view.hashes[-1]
        return expected

    def reorg(self, depth: int, *, drop_transactions: bool = False) -> list[str]:
        """Replace the last `depth` blocks by `depth + 1` empty ones. Their transactions go back to the
        mempool (as Core does) unless `drop_transactions`, which models a node that never saw them."""
        if not 1 <= depth <= min(REORG_DEPTH_MAX, self.tip_height()):
            raise ValueError(f"depth must be 1..{min(REORG_DEPTH_MAX, self.tip_height())}")
        with self._locked():
            fork_height = self._view.height - depth
            returned = [raw for h in range(fork_height + 1, self._view.height + 1)
                        for raw in block_transactions(self._raw_blocks[self._view.hashes[h]])[1:]]
            raws, parent = [], self._view.hashes[fork_height]
            for height in range(fork_height + 1, fork_height + depth + 2):
                raws.append(self._build_block(parent, height, ANYONE_CAN_SPEND, []))
                parent = str(pbk.Block(raws[-1]).block_hash)
                self._chainman.process_block(pbk.Block(raws[-1]))  # side branch until the last one
            self._submit(raws)
            if not drop_transactions:
                for raw in returned:
                    with contextlib.suppress(BroadcastRejected):
                        self._accept(raw)
                self._save_mempool()
            return [str(pbk.Block(raw).block_hash) for raw in raws]

    # --- faucet -------------------------------------------------------------------------------------------

    def send(self, script_pubkey: bytes, amount_sats: int) -> str:
        """Pay `amount_sats` to `script_pubkey` from the chain's anyone-can-spend coinbases (into the mempool)."""
        with self._locked():
            fee_sats = 1_000
            spent = self._mempool_spent_outpoints()
            mature = [(key, coin) for key, coin in self._faucet_coins() if key not in spent]
            picked, total = [], 0
            for key, coin in mature:
                if total >= amount_sats + fee_sats:
                    break
                picked.append(key)
                total += coin.value_sats
            if total < amount_sats + fee_sats:
                raise FaucetDry(f"the faucet holds {total} mature sats; {amount_sats + fee_sats} needed")
            outputs = [(amount_sats, script_pubkey)]
            if total - amount_sats - fee_sats > 0:
                outputs.append((total - amount_sats - fee_sats, ANYONE_CAN_SPEND))
            raw = _serialize_tx(2, [(internal_from_display(t), v, b"", 0xFFFFFFFD) for t, v in picked], outputs, None)
            txid = self._accept(raw)
            self._save_mempool()
            return txid

    def _mature(self, coin: _Coin) -> bool:
        return not coin.is_coinbase or self._view.height + 1 - coin.height >= COINBASE_MATURITY_BLOCKS

    def _faucet_coins(self) -> Iterator[tuple[tuple[str, int], _Coin]]:
        """Mature anyone-can-spend coins, then the faucet's own unconfirmed change (newest first)."""
        for key, coin in self._view.coins.items():
            if coin.script_pubkey == ANYONE_CAN_SPEND and self._mature(coin):
                yield key, coin
        for txid in reversed(self._mempool):
            for vout, out in enumerate(_parsed(self._mempool[txid]).outputs):
                if out.script_pubkey == ANYONE_CAN_SPEND:
                    yield (txid, vout), _Coin(out.value_sats, out.script_pubkey, self._view.height + 1, False)

    def _mempool_spent_outpoints(self) -> set[tuple[str, int]]:
        return {(display_hex(i.prev_txid_internal), i.vout)
                for raw in self._mempool.values() for i in _parsed(raw).inputs}

    # --- mempool ------------------------------------------------------------------------------------------

    def _spendable_coin(self, txid: str, vout: int) -> _Coin:
        coin = self._view.coins.get((txid, vout))
        if coin is not None:
            return coin
        parent = self._mempool.get(txid)
        if parent is not None:
            outputs = _parsed(parent).outputs
            if vout < len(outputs):
                return _Coin(outputs[vout].value_sats, outputs[vout].script_pubkey, self._view.height + 1, False)
        raise BroadcastRejected("bad-txns-inputs-missingorspent", -25)

    def _check(self, raw: bytes) -> tuple[ParsedTx, list[str]]:
        """Policy and consensus checks; returns the parsed tx and the mempool txids it would replace."""
        try:
            tx = _parsed(raw)
        except TransactionMalformed as error:
            raise BroadcastRejected(f"TX decode failed: {error}", -22) from None
        if any(i.prev_txid_internal == NULL_PREVOUT for i in tx.inputs):
            raise BroadcastRejected("coinbase", -26)
        if tx.txid in self._view.txs:
            raise BroadcastRejected("Transaction outputs already in utxo set", -27)
        if tx.txid in self._mempool:
            raise BroadcastRejected("txn-already-in-mempool", -26)
        coins = [self._spendable_coin(display_hex(i.prev_txid_internal), i.vout) for i in tx.inputs]
        if not all(self._mature(c) for c in coins):
            raise BroadcastRejected("bad-txns-premature-spend-of-coinbase", -26)
        self._check_outputs(tx, coins)
        self._check_scripts(raw, coins)
        conflicts = self._conflicts(tx)
        self._check_replacement(tx, coins, conflicts)
        return tx, conflicts

    def _check_outputs(self, tx: ParsedTx, coins: list[_Coin]) -> None:
        fee = sum(c.value_sats for c in coins) - sum(o.value_sats for o in tx.outputs)
        if fee < 0:
            raise BroadcastRejected("bad-txns-in-belowout", -26)
        if fee < tx.vsize * MIN_RELAY_SAT_PER_VB:
            raise BroadcastRejected(f"min relay fee not met, {fee} < {tx.vsize * MIN_RELAY_SAT_PER_VB}", -26)
        for out in tx.outputs:
            if out.script_pubkey[:1] == b"\x6a":
                if len(out.script_pubkey) > OP_RETURN_SCRIPT_MAX_BYTES:
                    raise BroadcastRejected("scriptpubkey", -26)
            elif out.value_sats < dust_threshold_sats(out.script_pubkey):
                raise BroadcastRejected("dust", -26)
        final = tx.locktime == 0 or all(i.sequence == 0xFFFFFFFF for i in tx.inputs) or (
            tx.locktime < LOCKTIME_THRESHOLD and tx.locktime <= self._view.height)
        if not final:
            raise BroadcastRejected("non-final", -26)

    def _check_scripts(self, raw: bytes, coins: list[_Coin]) -> None:
        kernel_tx = pbk.Transaction(raw)
        spent = [pbk.TransactionOutput(pbk.ScriptPubkey(c.script_pubkey), c.value_sats) for c in coins]
        precomputed = PrecomputedTransactionData(kernel_tx, spent)
        for index, coin in enumerate(coins):
            script = pbk.ScriptPubkey(coin.script_pubkey)
            if not script.verify(coin.value_sats, kernel_tx, precomputed, index, pbk.ScriptVerificationFlags.ALL):
                raise BroadcastRejected(f"mandatory-script-verify-flag-failed (input {index})", -26)

    def _conflicts(self, tx: ParsedTx) -> list[str]:
        spends = {(display_hex(i.prev_txid_internal), i.vout) for i in tx.inputs}
        direct = [txid for txid, raw in self._mempool.items()
                  if spends & {(display_hex(i.prev_txid_internal), i.vout) for i in _parsed(raw).inputs}]
        return direct + [d for txid in direct for d in self._descendants(txid)]

    def _descendants(self, txid: str) -> list[str]:
        children = [other for other, raw in self._mempool.items()
                    if any(display_hex(i.prev_txid_internal) == txid for i in _parsed(raw).inputs)]
        return children + [d for child in children for d in self._descendants(child)]

    def _check_replacement(self, tx: ParsedTx, coins: list[_Coin], conflicts: list[str]) -> None:
        if not conflicts:
            return
        fee = sum(c.value_sats for c in coins) - sum(o.value_sats for o in tx.outputs)
        replaced = [_parsed(self._mempool[txid]) for txid in conflicts]
        replaced_fees = sum(self._fee_of(old) for old in replaced)
        if fee < replaced_fees + tx.vsize * INCREMENTAL_RELAY_SAT_PER_VB:
            raise BroadcastRejected(f"insufficient fee, rejecting replacement {tx.txid}; new fee {fee} < "
                                    f"{replaced_fees} + {tx.vsize * INCREMENTAL_RELAY_SAT_PER_VB}", -26)
        if any(fee * old.vsize <= self._fee_of(old) * tx.vsize for old in replaced):
            raise BroadcastRejected(f"insufficient fee, rejecting replacement {tx.txid}; fee rate not higher", -26)

    def _accept(self, raw: bytes) -> str:
        tx, conflicts = self._check(raw)
        for txid in conflicts:
            self._mempool.pop(txid, None)
        self._mempool[tx.txid] = raw
        return tx.txid

    def _drop_invalid_mempool(self) -> None:
        """After the chain moved: drop what got mined or lost its inputs (re-checked in order)."""
        pending, self._mempool = list(self._mempool.values()), {}
        for raw in pending:
            with contextlib.suppress(BroadcastRejected):
                self._accept(raw)

    def mempool_txids(self) -> list[str]:
        with self._locked():
            return list(self._mempool)

    # --- ChainBackend ---------------------------------------------------------------------------------------

    def tip_height(self) -> int:
        with self._locked():
            return self._view.height

    def block_hash(self, height: int) -> str:
        with self._locked():
            if not 0 <= height <= self._view.height:
                raise LookupError(f"no block at height {height} (tip {self._view.height})")
            return self._view.hashes[height]

    def block(self, block_hash: str) -> bytes:
        with self._locked():
            raw = self._raw_blocks.get(block_hash)
            if raw is not None:
                return raw
            if not self._kernel_knows(block_hash):
                raise LookupError(f"block {block_hash} not found")
            entry = self._chainman.block_tree_entries[pbk.BlockHash(internal_from_display(block_hash))]
            return bytes(self._chainman.blocks[entry])

    def block_header(self, block_hash: str) -> bytes:
        return self.block(block_hash)[:80]

    def block_height(self, block_hash: str) -> int:
        """Height of a best-chain block; LookupError for unknown or stale blocks."""
        with self._locked():
            try:
                return self._view.hashes.index(block_hash)
            except ValueError:
                raise LookupError(f"block {block_hash} is not in the best chain") from None

    def transaction_status(self, txid: str) -> tuple[str | None, int]:
        with self._locked():
            if txid in self._view.txs:
                height = self._view.txs[txid][0]
                return self._view.hashes[height], self._view.height - height + 1
            if txid in self._mempool:
                return None, 0
            raise LookupError(f"No such mempool or blockchain transaction: {txid}")

    def raw_transaction(self, txid: str) -> bytes:
        with self._locked():
            if txid in self._view.txs:
                return self._view.txs[txid][1]
            if txid in self._mempool:
                return self._mempool[txid]
            raise LookupError(f"No such mempool or blockchain transaction: {txid}")

    def txout_proof(self, txid: str, block_hash: str) -> bytes:
        raw = self.block(block_hash)
        txids = [_parsed(tx).txid_internal for tx in block_transactions(raw)]
        wanted = internal_from_display(txid)
        if wanted not in txids:
            raise LookupError(f"transaction {txid} is not in block {block_hash}")
        return build_txout_proof(raw[:80], txids, txids.index(wanted))

    def test_accept(self, raw: bytes) -> tuple[bool, str]:
        with self._locked():
            try:
                self._check(raw)
            except BroadcastRejected as rejected:
                return False, rejected.reason
            return True, ""

    def broadcast(self, raw: bytes) -> str:
        with self._locked():
            try:
                txid = self._accept(raw)
            except BroadcastRejected as rejected:
                if rejected.code == -27 or rejected.reason == "txn-already-in-mempool":
                    return _parsed(raw).txid
                raise
            self._save_mempool()
            return txid

    def estimate_fee_sat_per_vb(self, target_blocks: int) -> Decimal:
        return self._fee_rate

    def set_fee_estimate(self, fee_rate_sat_per_vb: Decimal) -> None:
        self._fee_rate = Decimal(fee_rate_sat_per_vb)

    def utxos(self, script_pubkey: bytes) -> list[Utxo]:
        with self._locked():
            return [Utxo(txid, vout, coin.value_sats) for (txid, vout), coin in self._view.coins.items()
                    if coin.script_pubkey == script_pubkey and self._mature(coin)]


def block_transactions(raw_block: bytes) -> list[bytes]:
    return [bytes(tx) for tx in pbk.Block(raw_block).transactions]
