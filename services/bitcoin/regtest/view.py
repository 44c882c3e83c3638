"""The best chain as one process last saw it: block hashes by height, confirmed transactions, unspent coins and
who spent the others."""

import dataclasses

from ledger.anchoring import display_hex
from services.bitcoin.regtest.blocks import COINBASE_MATURITY_BLOCKS, block_transactions, parsed


@dataclasses.dataclass
class Coin:
    value_sats: int
    script_pubkey: bytes
    height: int
    is_coinbase: bool


@dataclasses.dataclass
class View:
    hashes: list[str]
    txs: dict[str, tuple[int, bytes]]            # txid -> (height, raw)
    coins: dict[tuple[str, int], Coin]
    spenders: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)  # outpoint -> spending txid

    @property
    def height(self) -> int:
        return len(self.hashes) - 1

    def mature(self, coin: Coin) -> bool:
        """Spendable in the next block: coinbase outputs wait COINBASE_MATURITY_BLOCKS."""
        return not coin.is_coinbase or self.height + 1 - coin.height >= COINBASE_MATURITY_BLOCKS

    def apply_block(self, height: int, raw: bytes) -> None:
        """Spend the block's inputs and add its outputs (OP_RETURN outputs are never coins)."""
        for index, tx_raw in enumerate(block_transactions(raw)):
            tx = parsed(tx_raw)
            if index > 0:
                for txin in tx.inputs:
                    outpoint = (display_hex(txin.prev_txid_internal), txin.vout)
                    del self.coins[outpoint]
                    self.spenders[outpoint] = tx.txid
            self.txs[tx.txid] = (height, tx_raw)
            for vout, out in enumerate(tx.outputs):
                if out.script_pubkey[:1] != b"\x6a":
                    self.coins[(tx.txid, vout)] = Coin(out.value_sats, out.script_pubkey, height, index == 0)
