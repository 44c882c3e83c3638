"""The Esplora REST subset the regtest node serves: electrs' paths (src/rest.rs) at the root, its errors as text.

Hashes and hex come back as text/plain, everything else as JSON (docs/REGTEST.md lists the paths).
"""

import json
import logging
import struct

from ledger.anchoring import (Outpoint, block_merkle_levels, display_hex, internal_from_display, parse_transaction,
                              spent_outpoints)
from services.bitcoin.addresses import AddressInvalid
from services.bitcoin.regtest.blocks import block_transactions
from services.bitcoin.regtest.chain_view import ChainView, coinbase_height
from services.bitcoin.regtest.http import Handler, dumps
from services.bitcoin.regtest.rpc_methods import script_for_address, send_raw_transaction
from services.bitcoin.regtest.rpc_server import HASH_HEX, RpcError

log = logging.getLogger(__name__)

ESPLORA_FEE_TARGETS = tuple(range(1, 26)) + (144, 504, 1008)   # electrs' CONF_TARGETS


class EsploraError(Exception):
    """An HTTP status and the text electrs would answer."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


def _esplora_hash(value: str) -> str:
    if not HASH_HEX.fullmatch(value):
        raise EsploraError(400, "Invalid hex string")
    return value.lower()


class EsploraRoutes:
    """electrs' REST paths (src/rest.rs): text bodies for hashes and hex, JSON otherwise."""

    def __init__(self, view: ChainView):
        self._view = view
        self._chain = view.chain

    def get(self, path: str) -> tuple[str, object]:
        """("text" | "json" | "bytes", body) or EsploraError."""
        parts = path.split("?", 1)[0].strip("/").split("/")
        match parts:
            case ["blocks", "tip", "height"]:
                return "text", str(self._chain.tip_height())
            case ["blocks", "tip", "hash"]:
                return "text", self._chain.block_hash(self._chain.tip_height())
            case ["block-height", height]:
                return "text", self._block_at(height)
            case ["block", block_hash, *rest] if len(rest) <= 1:
                return self._block(_esplora_hash(block_hash), rest[0] if rest else "")
            case ["tx", txid, ("hex" | "raw" | "status" | "merkleblock-proof" | "merkle-proof") as what]:
                return self._tx(_esplora_hash(txid), what)
            case ["tx", txid, "outspend", vout]:
                return "json", self._outspend(_esplora_hash(txid), vout)
            case [("scripthash" | "address") as kind, key, "utxo"]:
                return "json", self._utxos(self._script(kind, key))
            case ["fee-estimates"]:
                return "json", {str(t): self._chain.estimate_fee_sat_per_vb(t) for t in ESPLORA_FEE_TARGETS}
            case ["mempool", "txids"]:
                return "json", self._chain.mempool_txids()
        raise EsploraError(404, f"endpoint does not exist {path!r}")

    def post(self, path: str, body: bytes) -> tuple[str, object]:
        if path.split("?", 1)[0].strip("/") != "tx":
            raise EsploraError(404, f"endpoint does not exist {path!r}")
        try:
            return "text", send_raw_transaction(self._view, body.decode("ascii", errors="replace").strip())
        except RpcError as error:  # electrs passes bitcoind's error through, as text
            detail = json.dumps({"code": error.code, "message": error.message}, separators=(",", ":"))
            raise EsploraError(400, f"sendrawtransaction RPC error: {detail}") from None

    def _block_at(self, height: str) -> str:
        if not height.isdigit():
            raise EsploraError(400, "Invalid number")
        try:
            return self._chain.block_hash(int(height))
        except LookupError:
            raise EsploraError(404, "Block not found") from None

    def _block(self, block_hash: str, what: str) -> tuple[str, object]:
        if what == "status":
            height = self._view.best_height(block_hash)
            if height is None:
                return "json", {"in_best_chain": False, "height": None, "next_best": None}
            following = self._chain.block_hash(height + 1) if height < self._chain.tip_height() else None
            return "json", {"in_best_chain": True, "height": height, "next_best": following}
        try:
            raw = self._chain.block(block_hash)
        except LookupError:
            raise EsploraError(404, "Block not found") from None
        if what == "header":
            return "text", raw[:80].hex()
        if what == "raw":
            return "bytes", raw
        txids = [parse_transaction(tx).txid for tx in block_transactions(raw)]
        if what == "txids":
            return "json", txids
        if what == "":
            height = self._view.best_height(block_hash)
            version, = struct.unpack_from("<i", raw, 0)
            time_s, bits, nonce = struct.unpack_from("<III", raw, 68)
            return "json", {"id": block_hash, "height": height if height is not None else coinbase_height(raw),
                            "version": version, "timestamp": time_s, "tx_count": len(txids), "size": len(raw),
                            "merkle_root": display_hex(raw[36:68]), "previousblockhash": display_hex(raw[4:36]),
                            "mediantime": self._view.median_time(block_hash), "nonce": nonce, "bits": bits}
        raise EsploraError(404, f"endpoint does not exist '/block/{block_hash}/{what}'")

    def _status(self, block_hash: str | None) -> dict:
        height = self._view.best_height(block_hash) if block_hash else None
        if height is None:
            return {"confirmed": False}
        return {"confirmed": True, "block_height": height, "block_hash": block_hash,
                "block_time": self._view.block_time(block_hash)}

    def _tx(self, txid: str, what: str) -> tuple[str, object]:
        try:
            block_hash, _ = self._chain.transaction_status(txid)
        except LookupError:
            if what == "status":
                return "json", {"confirmed": False}  # electrs answers this for unknown txids too
            raise EsploraError(404, "Transaction not found") from None
        if what == "status":
            return "json", self._status(block_hash)
        if what in ("hex", "raw"):
            raw = self._chain.raw_transaction(txid)
            return ("text", raw.hex()) if what == "hex" else ("bytes", raw)
        if block_hash is None:
            raise EsploraError(404, "Transaction not found or is unconfirmed")
        if what == "merkleblock-proof":
            return "text", self._chain.txout_proof(txid, block_hash).hex()
        raw_block = self._chain.block(block_hash)
        txids = [parse_transaction(tx).txid_internal for tx in block_transactions(raw_block)]
        position = txids.index(internal_from_display(txid))
        levels, index, merkle = block_merkle_levels(txids), position, []
        for level in levels[:-1]:
            merkle.append(display_hex(level[min(index ^ 1, len(level) - 1)]))
            index >>= 1
        return "json", {"block_height": self._view.best_height(block_hash), "merkle": merkle, "pos": position}

    def _outspend(self, txid: str, vout: str) -> dict:
        """electrs' answer: {"spent": false}, or the spender's txid, input index and status (mempool too)."""
        if not vout.isdigit() or len(vout) > 10:
            raise EsploraError(400, "Invalid number")
        outpoint = Outpoint(txid, int(vout))
        try:
            spender = self._chain.outspend(outpoint)
        except LookupError:
            spender = None  # electrs answers an unknown or unconfirmed output as unspent (or spent in the mempool)
        if spender is not None:
            status = self._status(self._chain.transaction_status(spender)[0])
            spending = parse_transaction(self._chain.raw_transaction(spender))
        else:
            found = [tx for tx in self._view.mempool() if outpoint in spent_outpoints(tx)]
            if not found:
                return {"spent": False}
            spending, status = found[0], {"confirmed": False}
        return {"spent": True, "txid": spending.txid, "vin": spent_outpoints(spending).index(outpoint), "status": status}

    def _script(self, kind: str, key: str) -> bytes | None:
        if kind == "address":
            try:
                return script_for_address(key)
            except AddressInvalid:
                raise EsploraError(400, "Invalid Bitcoin address") from None
        if not HASH_HEX.fullmatch(key):
            raise EsploraError(400, "Invalid scripthash")
        return self._view.script_for_scripthash(key.lower())

    def _utxos(self, script: bytes | None) -> list[dict]:
        """Confirmed coins not spent in the mempool, then mempool outputs not spent in the mempool (electrs)."""
        if script is None:
            return []
        mempool = self._view.mempool()
        spent = {(display_hex(i.prev_txid_internal), i.vout) for tx in mempool for i in tx.inputs}
        found = [{"txid": c["txid"], "vout": c["vout"], "status": self._status(c["block_hash"]),
                  "value": c["value_sats"]}
                 for c in self._view.confirmed_utxos(script) if (c["txid"], c["vout"]) not in spent]
        for tx in mempool:
            for vout, out in enumerate(tx.outputs):
                if out.script_pubkey == script and (tx.txid, vout) not in spent:
                    found.append({"txid": tx.txid, "vout": vout, "status": {"confirmed": False},
                                  "value": out.value_sats})
        return found


# --- HTTP --------------------------------------------------------------------------------------------------

class EsploraHandler(Handler):
    """GET and POST on electrs' paths; the server carries `routes` (EsploraRoutes)."""

    def do_GET(self) -> None:
        self._answer(lambda routes: routes.get(self.path))

    def do_POST(self) -> None:
        body = self.body()
        if body is not None:
            self._answer(lambda routes: routes.post(self.path, body))

    def _answer(self, route) -> None:
        try:
            kind, body = route(self.server.routes)
        except EsploraError as error:
            self.send(error.status, error.text.encode(), "text/plain")
            return
        except Exception:  # a bug here must not take the server down; the log says where
            log.exception("Esplora %s %s failed", self.command, self.path)
            self.send(500, b"internal error (see the node's log)", "text/plain")
            return
        if kind == "json":
            self.send(200, dumps(body).encode(), "application/json")
        elif kind == "bytes":
            self.send(200, body, "application/octet-stream")
        else:
            self.send(200, body.encode(), "text/plain")
