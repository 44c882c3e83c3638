"""Esplora REST client implementing ledger.anchoring.ChainBackend (Blockstream esplora / mempool.space paths).

Esplora has no test-accept; `test_accept` says so and the worker relies on `broadcast`'s answer.
Use a self-hosted instance as the system of record; public ones leak what you query (bitcoin.md §5).
"""

import hashlib
import json
import urllib.error
import urllib.request
from decimal import Decimal

from ledger.anchoring import Utxo
from services.bitcoin.errors import BroadcastRejected

HTTP_TIMEOUT_S = 30.0


class EsploraClient:
    def __init__(self, base_url: str, timeout_s: float = HTTP_TIMEOUT_S):
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s

    def _request(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self._base + path, data=body, method="POST" if body is not None else "GET",
                                         headers={"Content-Type": "text/plain"} if body is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace").strip()
            if error.code == 404:
                raise LookupError(text or path) from None
            if error.code == 400 and body is not None:
                raise BroadcastRejected(text) from None
            raise OSError(f"Esplora answered HTTP {error.code} for {path}: {text}") from None

    def _text(self, path: str) -> str:
        return self._request(path).decode().strip()

    def _json(self, path: str):
        return json.loads(self._request(path), parse_float=Decimal)

    # --- ChainBackend -----------------------------------------------------------------------------------

    def tip_height(self) -> int:
        return int(self._text("/blocks/tip/height"))

    def block_hash(self, height: int) -> str:
        return self._text(f"/block-height/{height}")

    def block_header(self, block_hash: str) -> bytes:
        return bytes.fromhex(self._text(f"/block/{block_hash}/header"))

    def transaction_status(self, txid: str) -> tuple[str | None, int]:
        status = self._json(f"/tx/{txid}/status")
        if not status.get("confirmed"):
            return None, 0
        return status["block_hash"], self.tip_height() - status["block_height"] + 1

    def raw_transaction(self, txid: str) -> bytes:
        return bytes.fromhex(self._text(f"/tx/{txid}/hex"))

    def txout_proof(self, txid: str, block_hash: str) -> bytes:
        proof = bytes.fromhex(self._text(f"/tx/{txid}/merkleblock-proof"))
        from ledger.anchoring import display_hex, sha256d
        if display_hex(sha256d(proof[:80])) != block_hash:
            raise LookupError(f"{txid} is no longer in block {block_hash}")
        return proof

    def test_accept(self, raw: bytes) -> tuple[bool, str]:
        return True, "esplora cannot test-accept; broadcast decides"

    def broadcast(self, raw: bytes) -> str:
        return self._request("/tx", raw.hex().encode()).decode().strip()

    def estimate_fee_sat_per_vb(self, target_blocks: int) -> Decimal:
        estimates = {int(k): Decimal(v) for k, v in self._json("/fee-estimates").items()}
        eligible = [k for k in estimates if k <= target_blocks]
        return estimates[max(eligible)] if eligible else Decimal(1)

    def utxos(self, script_pubkey: bytes) -> list[Utxo]:
        scripthash = hashlib.sha256(script_pubkey).digest()[::-1].hex()
        return [Utxo(u["txid"], u["vout"], int(u["value"])) for u in self._json(f"/scripthash/{scripthash}/utxo")
                if u.get("status", {}).get("confirmed")]
