"""The live reserves monitor: each new best-chain block is read, the coins at every custody account's scripts are
followed through it, and movements the ledger does not explain are recorded as ReserveDiscrepancyObserved.

It runs in `serve --chain` as a supervised worker (services/api/workers.py) polling the tip. State kept in
memory: the coins at the watched scripts as of the last processed block, and an undo record per processed
block (the last JOURNAL_BLOCKS_MAX), so a reorg rewinds to the fork and the replacing blocks are read again.
What the ledger explains is decided in ledger/ (ledger/monitor.py), by the same rule the domain applies when
the observation is recorded. Every write is idempotent: one observation per account and block (the domain
refuses a second; replicas and restarts send the same request id), one reorged-out record per discrepancy.

Scope: at start (and after a reorg deeper than its memory) the monitor reads the coins at the tip and follows
blocks from there; movements in blocks before that are the proof of reserves' business (`audit --chain`).
"""

import dataclasses
import hashlib
import logging
from typing import Callable

from ledger import commands as cmd
from ledger import errors, limits
from ledger import monitor as rules
from ledger.accounts import Account
from ledger.anchoring import ChainBackend, Outpoint, Utxo, display_hex, parse_transaction, sha256d
from ledger.application import Outcome, Recorded, ReserveLedger
from services.bitcoin.regtest.blocks import block_transactions
from services.reserves import descriptors

log = logging.getLogger("reserve_ledger.monitor")

JOURNAL_BLOCKS_MAX = 100          # undo records kept; a deeper reorg re-reads the coins at the tip
BLOCKS_PER_STEP_MAX = 50          # blocks read per step (a monitor far behind catches up over several steps)
REORG_WATCH_DEPTH_BLOCKS = 1_000  # open discrepancies deeper than this are not re-checked against the best chain
BASELINE_ATTEMPTS_MAX = 3
# Refusals that mean "already recorded" or "the ledger explains it after all": nothing left to do.
SETTLED = (errors.DiscrepancyAlreadyObserved, errors.DiscrepancyNotOpen, errors.MovementExplained,
           errors.RequestIdReusedWithDifferentPayload)


def account_scripts(account: Account) -> list[bytes]:
    """THE lookup of what an account holds on chain: the output scripts whose coins are its coins (registered
    addresses, and its descriptor expanded on each branch over the account's gap limit: services/reserves)."""
    return [script.script_pubkey for script in descriptors.account_scripts(account)]


@dataclasses.dataclass(frozen=True)
class Coin:
    account_id: str
    value_sats: int


@dataclasses.dataclass
class BlockRecord:
    """What one processed block changed in the watched coins (to undo it when the block leaves the best chain)."""

    height: int
    block_hash: str
    parent_hash: str
    spent: list[tuple[Outpoint, Coin]] = dataclasses.field(default_factory=list)
    created: list[Outpoint] = dataclasses.field(default_factory=list)


def observation_request_id(account_id: str, block_hash: str, generation: int) -> str:
    """The same on every replica and after a restart; `generation` counts earlier observations of this account
    and block that were reorged out, so a block that returns to the best chain is observed anew."""
    digest = hashlib.sha256(f"{account_id}|{block_hash}|{generation}".encode()).hexdigest()
    return f"monitor:{digest[:48]}"


class ReservesMonitor:
    """`step()` follows the best chain from the last processed block to the tip (supervised: a failed step is
    retried, and a block is committed to memory only once its observations were recorded)."""

    def __init__(self, ledger: ReserveLedger, chain: ChainBackend, record: Callable[[cmd.Command], Outcome],
                 on_recorded: Callable[[Recorded], None] = lambda recorded: None):
        self._ledger, self._chain, self._record = ledger, chain, record
        self._on_recorded = on_recorded
        self._coins: dict[Outpoint, Coin] = {}
        self._totals: dict[str, int] = {}
        self._scripts: dict[bytes, str] = {}
        self._script_cache: dict[str, tuple[tuple, list[bytes]]] = {}
        self._journal: list[BlockRecord] = []
        self._tip: tuple[int, str] | None = None    # (height, hash) of the last processed block

    @property
    def processed_tip(self) -> tuple[int, str] | None:
        return self._tip

    def is_watching(self, script: bytes) -> bool:
        return script in self._scripts

    def step(self) -> None:
        if self._tip is None:
            self._baseline()
        self._rewind_to_best_chain()
        self._watch_new_accounts()
        self._record_reorged_out()
        tip_height = self._chain.tip_height()
        for height in range(self._tip[0] + 1, min(tip_height, self._tip[0] + BLOCKS_PER_STEP_MAX) + 1):
            if not self._process(height, self._chain.block_hash(height)):
                break  # the chain moved under us: the next step rewinds

    # --- the watched coins ----------------------------------------------------------------------------

    def _custody_accounts(self) -> list[Account]:
        with self._ledger.reading() as state:
            return [a for a in state.accounts.values() if not a.is_nominal]

    def _baseline(self) -> None:
        """The coins at every watched script at the tip (re-read when the tip moved while reading)."""
        self._coins, self._totals, self._scripts, self._journal = {}, {}, {}, []
        for _ in range(BASELINE_ATTEMPTS_MAX):
            height = self._chain.tip_height()
            block_hash = self._chain.block_hash(height)
            self._tip = (height, block_hash)
            self._watch_new_accounts()
            if self._chain.block_hash(min(height, self._chain.tip_height())) == block_hash:
                break
            self._coins, self._totals, self._scripts = {}, {}, {}
        self._tip = (height, block_hash)
        log.info("reserves monitor: watching %d scripts holding %d coins from block %d", len(self._scripts),
                 len(self._coins), height)

    def _watch_new_accounts(self) -> None:
        """Scripts not watched yet (a new account) start from the coins they held at the last processed block:
        their history before that is not a movement the monitor saw; coins from later blocks arrive when those
        blocks are read. The coins are read before the scripts count as watched (a failed read is retried whole)."""
        new = {script: account.account_id for account in self._custody_accounts()
               for script in self._scripts_of(account) if script not in self._scripts}
        if not new:
            return
        for script, utxo in self._coins_at(list(new)):
            if Outpoint(utxo.txid, utxo.vout) not in self._coins:
                self._add(Outpoint(utxo.txid, utxo.vout), Coin(new[script], utxo.value_sats))
        self._scripts.update(new)

    def _coins_at(self, scripts: list[bytes]) -> list[tuple[bytes, Utxo]]:
        """The confirmed coins at these scripts created at or below the last processed block (Bitcoin Core: one
        scantxoutset for them all; other backends: per script)."""
        scan = getattr(self._chain, "scan_scripts", None)
        if scan is not None:
            return [(script, utxo) for script, utxo, height in scan(scripts) if height <= self._tip[0]]
        tip_is_processed = self._chain.tip_height() == self._tip[0]
        return [(script, utxo) for script in scripts for utxo in self._chain.utxos(script)
                if tip_is_processed or self._confirmed_by_processed_tip(utxo.txid)]

    def _scripts_of(self, account: Account) -> list[bytes]:
        """account_scripts, computed again only when the account's addresses or descriptor change."""
        key = (account.addresses, account.descriptor)
        cached = self._script_cache.get(account.account_id)
        if cached is None or cached[0] != key:
            cached = self._script_cache[account.account_id] = (key, account_scripts(account))
        return cached[1]

    def _confirmed_by_processed_tip(self, txid: str) -> bool:
        tip_height = self._chain.tip_height()
        block_hash, confirmations = self._chain.transaction_status(txid)
        return block_hash is not None and tip_height - confirmations + 1 <= self._tip[0]

    def _add(self, outpoint: Outpoint, coin: Coin) -> None:
        self._coins[outpoint] = coin
        self._totals[coin.account_id] = self._totals.get(coin.account_id, 0) + coin.value_sats

    def _remove(self, outpoint: Outpoint) -> Coin | None:
        coin = self._coins.pop(outpoint, None)
        if coin is not None:
            self._totals[coin.account_id] -= coin.value_sats
        return coin

    # --- following the best chain ----------------------------------------------------------------------

    def _on_best_chain(self, height: int, block_hash: str) -> bool:
        try:
            return height <= self._chain.tip_height() and self._chain.block_hash(height) == block_hash
        except LookupError:
            return False

    def _rewind_to_best_chain(self) -> None:
        """Undo processed blocks that left the best chain; beyond the journal, start again from the tip."""
        while not self._on_best_chain(*self._tip):
            if not self._journal:
                log.warning("reserves monitor: block %d %s left the best chain deeper than the %d blocks remembered; "
                            "re-reading the coins at the tip", *self._tip, JOURNAL_BLOCKS_MAX)
                self._baseline()
                return
            record = self._journal.pop()
            self._undo(record)
            self._tip = (record.height - 1, record.parent_hash)

    def _undo(self, record: BlockRecord) -> None:
        for outpoint in reversed(record.created):
            self._remove(outpoint)
        for outpoint, coin in reversed(record.spent):
            self._add(outpoint, coin)

    def _process(self, height: int, block_hash: str) -> bool:
        """Follow the watched coins through one block and record what the ledger does not explain; False when
        the block does not extend the last processed one (a reorg while reading)."""
        raw = self._chain.block(block_hash)
        if display_hex(sha256d(raw[:80])) != block_hash:
            raise OSError(f"asked the node for block {block_hash}, it sent {display_hex(sha256d(raw[:80]))}")
        if display_hex(raw[4:36]) != self._tip[1]:
            return False
        record, moves = self._follow(height, block_hash, raw)
        try:
            self._observe(record, moves)
        except BaseException:
            self._undo(record)
            raise
        self._journal = [*self._journal[-(JOURNAL_BLOCKS_MAX - 1):], record]
        self._tip = (height, block_hash)
        return True

    def _follow(self, height: int, block_hash: str, raw: bytes) -> tuple[BlockRecord, dict[str, dict[str, int]]]:
        """The block's effect on the watched coins, and each account's net movement per transaction."""
        record, moves = BlockRecord(height, block_hash, display_hex(raw[4:36])), {}
        for raw_tx in block_transactions(raw):
            tx = parse_transaction(raw_tx)
            for txin in tx.inputs:
                outpoint = Outpoint(display_hex(txin.prev_txid_internal), txin.vout)
                coin = self._remove(outpoint)
                if coin is not None:
                    record.spent.append((outpoint, coin))
                    by_tx = moves.setdefault(coin.account_id, {})
                    by_tx[tx.txid] = by_tx.get(tx.txid, 0) - coin.value_sats
            for vout, output in enumerate(tx.outputs):
                account_id = self._scripts.get(output.script_pubkey)
                outpoint = Outpoint(tx.txid, vout)
                if account_id is not None and outpoint not in self._coins:
                    self._add(outpoint, Coin(account_id, output.value_sats))
                    record.created.append(outpoint)
                    by_tx = moves.setdefault(account_id, {})
                    by_tx[tx.txid] = by_tx.get(tx.txid, 0) + output.value_sats
        return record, moves

    # --- recording -------------------------------------------------------------------------------------

    def _observations(self, record: BlockRecord, moves: dict[str, dict[str, int]]) -> list[cmd.Command]:
        commands = []
        with self._ledger.reading() as state:
            for account_id, by_tx in sorted(moves.items()):
                onchain_sats = self._totals.get(account_id, 0)
                left = rules.discrepant_movements(state, account_id, by_tx, onchain_sats)
                txids = tuple(sorted(left))[:limits.DISCREPANCY_TXIDS_MAX]
                movement_sats = sum(left[t] for t in txids)
                if not txids or rules.finding_of(state, account_id, txids, movement_sats, onchain_sats) is None:
                    continue
                generation = sum(1 for d in state.discrepancies.values() if d.account_id == account_id
                                 and d.block_hash == record.block_hash and d.status == rules.REORGED_OUT)
                commands.append(cmd.ObserveReserveDiscrepancy(
                    observation_request_id(account_id, record.block_hash, generation), account_id, record.height,
                    record.block_hash, txids, movement_sats, onchain_sats))
        return commands

    def _observe(self, record: BlockRecord, moves: dict[str, dict[str, int]]) -> None:
        for command in self._observations(record, moves):
            self._write(command)

    def _record_reorged_out(self) -> None:
        """Every open discrepancy whose block is no longer the best-chain block at its height stops standing. After
        the rewind, the blocks remembered are on the best chain: only older ones are asked of the node."""
        with self._ledger.reading() as state:
            watched = [(d.discrepancy_id, d.block_height, d.block_hash) for d in rules.open_discrepancies(state)]
        remembered = {record.height: record.block_hash for record in self._journal}
        remembered[self._tip[0]] = self._tip[1]
        tip_height = self._tip[0]
        for discrepancy_id, height, block_hash in watched:
            if height < tip_height - REORG_WATCH_DEPTH_BLOCKS or remembered.get(height) == block_hash:
                continue
            best = remembered.get(height) or self._best_hash_at(height)
            if best != block_hash:
                self._write(cmd.RecordDiscrepancyReorgedOut(f"monitor-reorged:{discrepancy_id}", discrepancy_id, best))

    def _best_hash_at(self, height: int) -> str:
        try:
            return self._chain.block_hash(height) if height <= self._chain.tip_height() else ""
        except LookupError:
            return ""

    def _write(self, command: cmd.Command) -> None:
        outcome = self._record(command)
        if isinstance(outcome, Recorded):
            if not outcome.replayed:
                data = outcome.data
                log.warning("reserves monitor: %s %s at position %d (%s)", outcome.event_type, data["discrepancy_id"],
                            outcome.position, ", ".join(f"{k} {data[k]}" for k in ("account_id", "block_height",
                                                                                  "movement_sats", "finding")
                                                        if k in data) or f"best block {data['best_block_hash']}")
                self._on_recorded(outcome)
        elif not isinstance(outcome, SETTLED):
            raise outcome
