"""The node's view of the chain, shared by the JSON-RPC and the Esplora servers: answers both APIs need,
computed from RegtestChain's public methods only."""

import hashlib
import struct
import threading
from typing import TYPE_CHECKING

from ledger.anchoring import ParsedTx, display_hex, parse_transaction
from services.bitcoin.regtest.blocks import NULL_PREVOUT, block_transactions

if TYPE_CHECKING:
    from services.bitcoin.regtest.chain import RegtestChain

MEDIAN_TIME_SPAN_BLOCKS = 11


def esplora_scripthash(script: bytes) -> str:
    return hashlib.sha256(script).digest()[::-1].hex()


def is_coinbase(tx: ParsedTx) -> bool:
    return len(tx.inputs) == 1 and tx.inputs[0].prev_txid_internal == NULL_PREVOUT


def coinbase_height(raw_block: bytes) -> int:
    """The BIP34 height in the coinbase's first push (how a stale block's height is known)."""
    script = parse_transaction(block_transactions(raw_block)[0]).inputs[0].script_sig
    if not script or script[0] == 0:
        return 0
    if 0x51 <= script[0] <= 0x60:
        return script[0] - 0x50
    return int.from_bytes(script[1: 1 + script[0]], "little")


class ChainView:
    """The chain's answers in the shapes both APIs need, plus an index of output scripts by Esplora scripthash."""

    def __init__(self, chain: "RegtestChain"):
        self.chain = chain
        self._scripts: dict[str, bytes] = {}      # esplora scripthash -> script, for every output ever seen
        self._indexed_blocks: set[str] = set()
        self._index_lock = threading.Lock()

    def best_height(self, block_hash: str) -> int | None:
        try:
            return self.chain.block_height(block_hash)
        except LookupError:
            return None

    def block_time(self, block_hash: str) -> int:
        return struct.unpack_from("<I", self.chain.block_header(block_hash), 68)[0]

    def median_time(self, block_hash: str) -> int:
        times = []
        for _ in range(MEDIAN_TIME_SPAN_BLOCKS):
            header = self.chain.block_header(block_hash)
            times.append(struct.unpack_from("<I", header, 68)[0])
            if header[4:36] == b"\x00" * 32:
                break
            block_hash = display_hex(header[4:36])
        return sorted(times)[len(times) // 2]

    def mempool(self) -> list[ParsedTx]:
        found = []
        for txid in self.chain.mempool_txids():
            try:
                found.append(parse_transaction(self.chain.raw_transaction(txid)))
            except LookupError:
                continue  # mined or replaced since the list was read
        return found

    def fee_sats(self, tx: ParsedTx) -> int:
        """Inputs minus outputs; LookupError when an input's transaction or output is unknown."""
        spent = 0
        for txin in tx.inputs:
            outputs = parse_transaction(self.chain.raw_transaction(display_hex(txin.prev_txid_internal))).outputs
            if txin.vout >= len(outputs):
                raise LookupError(f"no output {txin.vout} in {display_hex(txin.prev_txid_internal)}")
            spent += outputs[txin.vout].value_sats
        return spent - sum(out.value_sats for out in tx.outputs)

    def script_for_scripthash(self, scripthash: str) -> bytes | None:
        with self._index_lock:
            if scripthash not in self._scripts:
                self._index_new_blocks()
            if scripthash in self._scripts:
                return self._scripts[scripthash]
        for tx in self.mempool():
            for out in tx.outputs:
                if esplora_scripthash(out.script_pubkey) == scripthash:
                    return out.script_pubkey
        return None

    def _index_new_blocks(self) -> None:
        """Walk down from the tip to the first block already indexed (after a reorg: the fork point)."""
        height = self.chain.tip_height()
        while height >= 0:
            block_hash = self.chain.block_hash(height)
            if block_hash in self._indexed_blocks:
                return
            for raw in block_transactions(self.chain.block(block_hash)):
                for out in parse_transaction(raw).outputs:
                    self._scripts.setdefault(esplora_scripthash(out.script_pubkey), out.script_pubkey)
            self._indexed_blocks.add(block_hash)
            height -= 1

    def confirmed_utxos(self, script: bytes) -> list[dict]:
        """{txid, vout, value_sats, height, block_hash, coinbase} of the chain's (mature) confirmed coins."""
        found = []
        for utxo in self.chain.utxos(script):
            try:
                block_hash, _ = self.chain.transaction_status(utxo.txid)
            except LookupError:
                continue  # reorged out while we looked
            height = self.best_height(block_hash) if block_hash else None
            if height is None:
                continue
            found.append({"txid": utxo.txid, "vout": utxo.vout, "value_sats": utxo.value_sats, "height": height,
                          "block_hash": block_hash,
                          "coinbase": is_coinbase(parse_transaction(self.chain.raw_transaction(utxo.txid)))})
        return found
