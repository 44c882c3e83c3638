"""The embedded chain's mempool: a named subset of Core's policy (not a fake of it), over a view of the best chain.

A transaction is accepted when its inputs exist and are mature, every input passes libbitcoinkernel's
script checks with all consensus flags, it pays >= 1 sat/vB, its OP_RETURN scripts are <= 83 bytes, its
other outputs are above dust and its locktime is final. Conflicts are replaced (full RBF) under Core's fee
rules: the replacement pays at least the replaced fees plus 1 sat/vB of its own size, at a higher fee rate.
Descendants of a replaced transaction leave with it.
"""

import contextlib
import json
import os
import pathlib

from ledger.anchoring import ParsedTx, TransactionMalformed, display_hex
from services.bitcoin.errors import BroadcastRejected
from services.bitcoin.regtest.blocks import LOCKTIME_THRESHOLD, NULL_PREVOUT, dust_threshold_sats, parsed
from services.bitcoin.regtest.view import Coin, View

MIN_RELAY_SAT_PER_VB = 1
INCREMENTAL_RELAY_SAT_PER_VB = 1
OP_RETURN_SCRIPT_MAX_BYTES = 83
SEQUENCE_FINAL = 0xFFFFFFFF


def _outpoint(txin) -> tuple[str, int]:
    return display_hex(txin.prev_txid_internal), txin.vout


class Mempool:
    """Unconfirmed transactions by txid, in acceptance order; every method takes the view it checks against."""

    def __init__(self):
        self.txs: dict[str, bytes] = {}

    # --- the shared file ------------------------------------------------------------------------------------

    def load(self, path: pathlib.Path) -> None:
        """The file is the mempool every process shares; it is small, so it is simply re-read."""
        if path.exists():
            self.txs = {txid: bytes.fromhex(raw) for txid, raw in json.loads(path.read_text()).items()}

    def save(self, path: pathlib.Path) -> None:
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({txid: raw.hex() for txid, raw in self.txs.items()}))
        os.replace(temporary, path)

    # --- reading --------------------------------------------------------------------------------------------

    def spendable_coin(self, view: View, txid: str, vout: int) -> Coin:
        """A confirmed unspent coin or an output of a mempool transaction; -25 when neither."""
        coin = view.coins.get((txid, vout))
        if coin is not None:
            return coin
        parent = self.txs.get(txid)
        if parent is not None:
            outputs = parsed(parent).outputs
            if vout < len(outputs):
                return Coin(outputs[vout].value_sats, outputs[vout].script_pubkey, view.height + 1, False)
        raise BroadcastRejected("bad-txns-inputs-missingorspent", -25)

    def fee_of(self, view: View, tx: ParsedTx) -> int:
        spent = sum(self.spendable_coin(view, *_outpoint(i)).value_sats for i in tx.inputs)
        return spent - sum(out.value_sats for out in tx.outputs)

    def spent_outpoints(self) -> set[tuple[str, int]]:
        return {_outpoint(i) for raw in self.txs.values() for i in parsed(raw).inputs}

    def template(self) -> list[bytes]:
        """The transactions in an order a block can hold them: parents before children."""
        chosen: list[bytes] = []
        waiting = dict(self.txs)
        while waiting:
            ready = [txid for txid, raw in waiting.items()
                     if all(display_hex(i.prev_txid_internal) not in waiting for i in parsed(raw).inputs)]
            if not ready:
                break
            for txid in ready:
                chosen.append(waiting.pop(txid))
        return chosen

    # --- acceptance -----------------------------------------------------------------------------------------

    def accept(self, view: View, raw: bytes) -> str:
        tx, conflicts = self.check(view, raw)
        for txid in conflicts:
            self.txs.pop(txid, None)
        self.txs[tx.txid] = raw
        return tx.txid

    def revalidate(self, view: View) -> None:
        """After the chain moved: drop what got mined or lost its inputs (re-checked in order)."""
        pending, self.txs = list(self.txs.values()), {}
        for raw in pending:
            with contextlib.suppress(BroadcastRejected):
                self.accept(view, raw)

    def check(self, view: View, raw: bytes) -> tuple[ParsedTx, list[str]]:
        """Policy and consensus checks; returns the parsed tx and the mempool txids it would replace."""
        try:
            tx = parsed(raw)
        except TransactionMalformed as error:
            raise BroadcastRejected(f"TX decode failed: {error}", -22) from None
        if any(i.prev_txid_internal == NULL_PREVOUT for i in tx.inputs):
            raise BroadcastRejected("coinbase", -26)
        if tx.txid in view.txs:
            raise BroadcastRejected("Transaction outputs already in utxo set", -27)
        if tx.txid in self.txs:
            raise BroadcastRejected("txn-already-in-mempool", -26)
        coins = [self.spendable_coin(view, *_outpoint(i)) for i in tx.inputs]
        if not all(view.mature(c) for c in coins):
            raise BroadcastRejected("bad-txns-premature-spend-of-coinbase", -26)
        _check_outputs(view, tx, coins)
        _check_scripts(raw, coins)
        conflicts = self._conflicts(tx)
        self._check_replacement(view, tx, coins, conflicts)
        return tx, conflicts

    def _conflicts(self, tx: ParsedTx) -> list[str]:
        spends = {_outpoint(i) for i in tx.inputs}
        direct = [txid for txid, raw in self.txs.items() if spends & {_outpoint(i) for i in parsed(raw).inputs}]
        return direct + [d for txid in direct for d in self.descendants(txid)]

    def descendants(self, txid: str) -> list[str]:
        children = [other for other, raw in self.txs.items()
                    if any(display_hex(i.prev_txid_internal) == txid for i in parsed(raw).inputs)]
        return children + [d for child in children for d in self.descendants(child)]

    def _check_replacement(self, view: View, tx: ParsedTx, coins: list[Coin], conflicts: list[str]) -> None:
        if not conflicts:
            return
        fee = sum(c.value_sats for c in coins) - sum(o.value_sats for o in tx.outputs)
        replaced = [parsed(self.txs[txid]) for txid in conflicts]
        replaced_fees = sum(self.fee_of(view, old) for old in replaced)
        if fee < replaced_fees + tx.vsize * INCREMENTAL_RELAY_SAT_PER_VB:
            raise BroadcastRejected(f"insufficient fee, rejecting replacement {tx.txid}; new fee {fee} < "
                                    f"{replaced_fees} + {tx.vsize * INCREMENTAL_RELAY_SAT_PER_VB}", -26)
        if any(fee * old.vsize <= self.fee_of(view, old) * tx.vsize for old in replaced):
            raise BroadcastRejected(f"insufficient fee, rejecting replacement {tx.txid}; fee rate not higher", -26)


def _check_outputs(view: View, tx: ParsedTx, coins: list[Coin]) -> None:
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
    final = tx.locktime == 0 or all(i.sequence == SEQUENCE_FINAL for i in tx.inputs) or (
        tx.locktime < LOCKTIME_THRESHOLD and tx.locktime <= view.height)
    if not final:
        raise BroadcastRejected("non-final", -26)


def _check_scripts(raw: bytes, coins: list[Coin]) -> None:
    """Every input against libbitcoinkernel's script interpreter with all consensus flags."""
    import pbk
    from pbk.script import PrecomputedTransactionData
    kernel_tx = pbk.Transaction(raw)
    spent = [pbk.TransactionOutput(pbk.ScriptPubkey(c.script_pubkey), c.value_sats) for c in coins]
    precomputed = PrecomputedTransactionData(kernel_tx, spent)
    for index, coin in enumerate(coins):
        script = pbk.ScriptPubkey(coin.script_pubkey)
        if not script.verify(coin.value_sats, kernel_tx, precomputed, index, pbk.ScriptVerificationFlags.ALL):
            raise BroadcastRejected(f"mandatory-script-verify-flag-failed (input {index})", -26)
