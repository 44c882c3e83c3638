"""An embedded regtest chain whose blocks are validated by Bitcoin Core's consensus code (libbitcoinkernel).

Storage (DIR): `blocks.dat` holds every block the kernel accepted, each as a 4-byte little-endian length and
the raw block, in the order they were processed (stale branches included, so replaying the file reproduces
the same best chain); `mempool.json` holds unconfirmed transactions. A process that opens DIR replays
`blocks.dat` into a private kernel (in-memory indexes, block files in a temporary directory). Every
operation takes DIR/lock and first catches up with the files, so a service, a `regtest-node` and a test can
share one DIR, and a restarted service or an auditor sees the same chain.

Creating a chain (`RegtestChain.create`, 200 blocks) and opening one (`RegtestChain.open`) are separate:
opening never creates, so a mistyped DIR is refused instead of silently becoming a new chain.

Consensus is Core's: every block is handed to `process_block`, whose return value says nothing about
validity, so a mined block counts only once the kernel's best tip *is* that block. The mempool is
services/bitcoin/regtest/mempool.py, a named subset of Core's policy.
"""

import contextlib
import fcntl
import os
import pathlib
import shutil
import struct
import tempfile
import threading
import time
from decimal import Decimal
from typing import Callable, Iterator, Sequence

import pbk

from ledger.anchoring import (Outpoint, Utxo, build_txout_proof, follow_anchor_chain, internal_from_display,
                              script_of_outpoint)
from services.bitcoin.errors import BroadcastRejected
from services.bitcoin.regtest.blocks import (ANYONE_CAN_SPEND, BOOTSTRAP_BLOCKS, block_transactions, build_block,
                                             parsed, serialize_tx)
from services.bitcoin.regtest.mempool import Mempool
from services.bitcoin.regtest.view import Coin, View
from services.errors import AlreadyExists, ConfigurationInvalid, NothingStoredHere

BLOCKS_FILE_NAME = "blocks.dat"
MEMPOOL_FILE_NAME = "mempool.json"
LOCK_FILE_NAME = "lock"
BLOCK_RECORD_MAX_BYTES = 4_000_000
REORG_DEPTH_MAX = 100
MINE_COUNT_MAX = 1_000
FAUCET_FEE_SATS = 1_000


class ChainError(Exception):
    """The embedded chain could not do what was asked."""


class BlockRejected(ChainError):
    """libbitcoinkernel refused a block (or accepted it without connecting it)."""


class FaucetDry(ChainError):
    """Not enough mature faucet coins for the amount asked."""


def holds_chain(directory: str | os.PathLike) -> bool:
    """Whether DIR holds a regtest chain (a `blocks.dat`); reads nothing else and creates nothing."""
    return (pathlib.Path(directory) / BLOCKS_FILE_NAME).is_file()


def create_command(directory: str | os.PathLike) -> str:
    return f"reserve-ledger regtest-node --dir {directory} --create"


class RegtestChain:
    """Implements ledger.anchoring.ChainBackend, plus mining, a faucet and reorgs for demos and tests.

    Use `RegtestChain.open(DIR)` for an existing chain and `RegtestChain.create(DIR)` for a new one.
    """

    def __init__(self, directory: str | os.PathLike, *, create: bool,
                 fee_rate_sat_per_vb: Decimal = Decimal(1), clock_s: Callable[[], float] = time.time):
        self.directory = pathlib.Path(directory)
        _check_directory(self.directory, create)
        self._fee_rate = Decimal(fee_rate_sat_per_vb)
        self._clock_s = clock_s
        self._thread_lock = threading.RLock()
        self._lock_file = open(self.directory / LOCK_FILE_NAME, "a+b")
        self._lock_depth = 0
        self._kernel_dir = tempfile.mkdtemp(prefix="reserve-ledger-kernel-")
        try:
            self._start_kernel()
            with self._locked():
                if create:
                    self._bootstrap_locked()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, directory: str | os.PathLike, **options) -> "RegtestChain":
        """The chain kept in DIR; NothingStoredHere when DIR holds none (nothing is created)."""
        return cls(directory, create=False, **options)

    @classmethod
    def create(cls, directory: str | os.PathLike, **options) -> "RegtestChain":
        """A new chain in DIR (made if missing) with BOOTSTRAP_BLOCKS blocks; AlreadyExists if DIR holds one."""
        return cls(directory, create=True, **options)

    def _start_kernel(self) -> None:
        self._last_invalid: str | None = None
        callbacks = pbk.ValidationInterfaceCallbacks(block_checked=self._on_block_checked)
        self._context = pbk.make_context(pbk.ChainType.REGTEST, validation_callbacks=callbacks)
        options = pbk.ChainstateManagerOptions(self._context, self._kernel_dir, os.path.join(self._kernel_dir, "blocks"))
        options.update_block_tree_db_in_memory(True)
        options.update_chainstate_db_in_memory(True)
        self._chainman = pbk.ChainstateManager(options)
        self._raw_blocks: dict[str, bytes] = {}
        self._blocks_offset = 0
        self._mempool = Mempool()
        self._mempool_checked_at: str | None = None
        self._view = View([self._tip_hash_from_kernel()], {}, {})

    def _bootstrap_locked(self) -> None:
        if self._view.height > 0:  # another process created it between our check and the lock
            raise AlreadyExists(f"{self.directory} already holds a regtest chain (tip height {self._view.height})")
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
        path = self.directory / BLOCKS_FILE_NAME
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
        self._mempool.load(self.directory / MEMPOOL_FILE_NAME)
        if self._mempool_checked_at != self._view.hashes[-1]:
            self._mempool_checked_at = self._view.hashes[-1]
            self._mempool.revalidate(self._view)
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
        path = self.directory / BLOCKS_FILE_NAME
        with open(path, "r+b" if path.exists() else "w+b") as f:
            f.truncate(self._blocks_offset)
            f.seek(self._blocks_offset)
            for raw in raws:
                f.write(struct.pack("<I", len(raw)) + raw)
            f.flush()
            os.fsync(f.fileno())
            self._blocks_offset = f.tell()

    def _save_mempool(self) -> None:
        self._mempool.save(self.directory / MEMPOOL_FILE_NAME)

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
            view, start = View(hashes, {}, {}), 1
        for height in range(start, len(hashes)):
            view.apply_block(height, self._raw_blocks[hashes[height]])
        self._view = view

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
            txs = self._mempool.template() if include_mempool else []
            raw = self._build_block(self._view.hashes[-1], self._view.height + 1, payout_script, txs)
            mined.append(self._submit([raw]))
        return mined

    def _build_block(self, parent_hash: str, height: int, payout_script: bytes, txs: list[bytes]) -> bytes:
        parent = self._chainman.block_tree_entries[pbk.BlockHash(internal_from_display(parent_hash))]
        fees = sum(self._mempool.fee_of(self._view, parsed(raw)) for raw in txs)
        time_s = max(int(self._clock_s()), int(parent.block_header.timestamp.timestamp()) + 1)
        return build_block(parent_hash, height, time_s, payout_script, txs, fees)

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
        self._mempool.revalidate(self._view)
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
                        self._mempool.accept(self._view, raw)
                self._save_mempool()
            return [str(pbk.Block(raw).block_hash) for raw in raws]

    # --- faucet -------------------------------------------------------------------------------------------

    def send(self, script_pubkey: bytes, amount_sats: int) -> str:
        """Pay `amount_sats` to `script_pubkey` from the chain's anyone-can-spend coinbases (into the mempool)."""
        with self._locked():
            needed = amount_sats + FAUCET_FEE_SATS
            spent = self._mempool.spent_outpoints()
            picked, total = [], 0
            for key, coin in self._faucet_coins():
                if total >= needed:
                    break
                if key not in spent:
                    picked.append(key)
                    total += coin.value_sats
            if total < needed:
                raise FaucetDry(f"the faucet holds {total} mature sats; {needed} needed")
            outputs = [(amount_sats, script_pubkey)]
            if total - needed > 0:
                outputs.append((total - needed, ANYONE_CAN_SPEND))
            raw = serialize_tx(2, [(internal_from_display(t), v, b"", 0xFFFFFFFD) for t, v in picked], outputs, None)
            txid = self._mempool.accept(self._view, raw)
            self._save_mempool()
            return txid

    def _faucet_coins(self) -> Iterator[tuple[tuple[str, int], Coin]]:
        """Mature anyone-can-spend coins, then the faucet's own unconfirmed change (newest first)."""
        for key, coin in self._view.coins.items():
            if coin.script_pubkey == ANYONE_CAN_SPEND and self._view.mature(coin):
                yield key, coin
        for txid in reversed(self._mempool.txs):
            for vout, out in enumerate(parsed(self._mempool.txs[txid]).outputs):
                if out.script_pubkey == ANYONE_CAN_SPEND:
                    yield (txid, vout), Coin(out.value_sats, out.script_pubkey, self._view.height + 1, False)

    def mempool_txids(self) -> list[str]:
        with self._locked():
            return list(self._mempool.txs)

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
            if txid in self._mempool.txs:
                return None, 0
            raise LookupError(f"No such mempool or blockchain transaction: {txid}")

    def raw_transaction(self, txid: str) -> bytes:
        with self._locked():
            if txid in self._view.txs:
                return self._view.txs[txid][1]
            if txid in self._mempool.txs:
                return self._mempool.txs[txid]
            raise LookupError(f"No such mempool or blockchain transaction: {txid}")

    def txout_proof(self, txid: str, block_hash: str) -> bytes:
        raw = self.block(block_hash)
        txids = [parsed(tx).txid_internal for tx in block_transactions(raw)]
        wanted = internal_from_display(txid)
        if wanted not in txids:
            raise LookupError(f"transaction {txid} is not in block {block_hash}")
        return build_txout_proof(raw[:80], txids, txids.index(wanted))

    def test_accept(self, raw: bytes) -> tuple[bool, str]:
        with self._locked():
            try:
                self._mempool.check(self._view, raw)
            except BroadcastRejected as rejected:
                return False, rejected.reason
            return True, ""

    def broadcast(self, raw: bytes) -> str:
        with self._locked():
            try:
                txid = self._mempool.accept(self._view, raw)
            except BroadcastRejected as rejected:
                if rejected.code == -27 or rejected.reason == "txn-already-in-mempool":
                    return parsed(raw).txid
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
                    if coin.script_pubkey == script_pubkey and self._view.mature(coin)]

    def utxos_of_scripts(self, scripts: list[bytes]) -> dict[bytes, list[Utxo]]:
        """`utxos` for many scripts in one pass over the coins (proof of reserves over derived addresses)."""
        wanted = set(scripts)
        found: dict[bytes, list[Utxo]] = {script: [] for script in wanted}
        with self._locked():
            for (txid, vout), coin in self._view.coins.items():
                if coin.script_pubkey in wanted and self._view.mature(coin):
                    found[coin.script_pubkey].append(Utxo(txid, vout, coin.value_sats))
        return found

    def outspend(self, outpoint: Outpoint) -> str | None:
        """The txid of the best-chain transaction spending `outpoint`; None while it is unspent there (or spent
        only in the mempool). LookupError when no best-chain transaction created it."""
        with self._locked():
            if outpoint.txid not in self._view.txs:
                raise LookupError(f"No such blockchain transaction: {outpoint.txid}")
            return self._view.spenders.get((outpoint.txid, outpoint.vout))

    def anchor_chain(self, genesis: Outpoint, moved_to: Sequence[bytes] = ()) -> list[bytes]:
        with self._locked():
            script = script_of_outpoint(genesis, self.raw_transaction(genesis.txid))
            return follow_anchor_chain(genesis, script, self.outspend, self.raw_transaction)


def _check_directory(directory: pathlib.Path, create: bool) -> None:
    """Refuse before touching the disk: opening needs a chain in DIR, creating needs none (DIR is made)."""
    if not create:
        if not holds_chain(directory):
            raise NothingStoredHere(f"{directory} holds no regtest chain; create one with: {create_command(directory)}")
        return
    if holds_chain(directory):
        raise AlreadyExists(f"{directory} already holds a regtest chain; open it instead of creating one")
    if directory.exists() and not directory.is_dir():
        raise ConfigurationInvalid(f"{directory} is a file, not a directory for a regtest chain")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationInvalid(f"cannot create the regtest chain directory {directory}: {error.strerror}") from None

