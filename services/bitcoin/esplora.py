"""Esplora REST client implementing ledger.anchoring.ChainBackend (Blockstream esplora / mempool.space paths).

Esplora has no test-accept; `test_accept` says so and the worker relies on `broadcast`'s answer.
Use a self-hosted instance as the system of record; public ones leak what you query (bitcoin.md §5).
Failures: 404 raises LookupError; a refused broadcast raises BroadcastRejected with bitcoind's reason and
code when the server passes them on (electrs: `sendrawtransaction RPC error: {"code":..,"message":..}`);
anything else raises OSError (TimeoutError when the server does not answer in time).
"""

import hashlib
import http.client
import json
import re
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Sequence

from ledger.anchoring import (Outpoint, Utxo, display_hex, follow_anchor_chain, parse_transaction, script_of_outpoint,
                              sha256d)
from services.bitcoin.errors import BroadcastRejected

HTTP_TIMEOUT_S = 30.0
REPLY_SIZE_MAX_BYTES = 16_000_000     # a raw block is the largest answer the paths we use can give
RPC_VERIFY_ALREADY_IN_CHAIN = -27
PASSED_ON_RPC_ERROR = re.compile(r"RPC error: (\{.*\})\s*$", re.DOTALL)
HASH_HEX = re.compile(r"[0-9a-f]{64}")


class EsploraClient:
    def __init__(self, base_url: str, timeout_s: float = HTTP_TIMEOUT_S):
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s

    def _request(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self._base + path, data=body, method="POST" if body is not None else "GET",
                                         headers={"Content-Type": "text/plain"} if body is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                reply = response.read(REPLY_SIZE_MAX_BYTES + 1)
        except urllib.error.HTTPError as error:
            text = error.read(REPLY_SIZE_MAX_BYTES).decode(errors="replace").strip()
            if error.code == 404:
                raise LookupError(text or path) from None
            if error.code == 400 and body is not None:
                raise _rejection(text) from None
            raise OSError(f"Esplora answered HTTP {error.code} for {path}: {text}") from None
        except urllib.error.URLError as error:  # connection refused, DNS, connect timeout
            if isinstance(error.reason, TimeoutError):
                raise TimeoutError(f"Esplora at {self._base} did not answer {path} in {self._timeout_s} s") from None
            raise OSError(f"Esplora at {self._base} is unreachable: {error.reason}") from None
        except http.client.HTTPException as error:  # a broken or truncated HTTP answer
            raise OSError(f"Esplora sent a broken HTTP answer for {path}: {error!r}") from None
        if len(reply) > REPLY_SIZE_MAX_BYTES:
            raise OSError(f"Esplora's answer for {path} is over {REPLY_SIZE_MAX_BYTES} bytes")
        return reply

    def _text(self, path: str) -> str:
        return self._request(path).decode(errors="replace").strip()

    def _hash(self, path: str) -> str:
        text = self._text(path)
        if not HASH_HEX.fullmatch(text):
            raise OSError(f"Esplora's answer for {path} is not a hash: {text[:100]!r}")
        return text

    def _hex(self, path: str) -> bytes:
        text = self._text(path)
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise OSError(f"Esplora's answer for {path} is not hex: {text[:100]!r}") from None

    def _json(self, path: str):
        try:
            return json.loads(self._request(path), parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            raise OSError(f"Esplora's answer for {path} is not JSON") from None

    # --- ChainBackend -----------------------------------------------------------------------------------

    def tip_height(self) -> int:
        text = self._text("/blocks/tip/height")
        if not text.isdigit():
            raise OSError(f"Esplora's tip height is not a number: {text[:100]!r}")
        return int(text)

    def block_hash(self, height: int) -> str:
        if height < 0:
            raise LookupError(f"no block at height {height}")
        return self._hash(f"/block-height/{height}")

    def block_header(self, block_hash: str) -> bytes:
        return self._hex(f"/block/{block_hash}/header")

    def block(self, block_hash: str) -> bytes:
        return self._request(f"/block/{block_hash}/raw")

    def transaction_status(self, txid: str) -> tuple[str | None, int]:
        status = self._json(f"/tx/{txid}/status")
        if not status.get("confirmed"):
            self._request(f"/tx/{txid}/hex")  # electrs says {"confirmed": false} for unknown txids too: 404 here
            return None, 0
        return status["block_hash"], max(1, self.tip_height() - status["block_height"] + 1)

    def raw_transaction(self, txid: str) -> bytes:
        return self._hex(f"/tx/{txid}/hex")

    def txout_proof(self, txid: str, block_hash: str) -> bytes:
        proof = self._hex(f"/tx/{txid}/merkleblock-proof")
        if display_hex(sha256d(proof[:80])) != block_hash:
            raise LookupError(f"{txid} is no longer in block {block_hash}")
        return proof

    def test_accept(self, raw: bytes) -> tuple[bool, str]:
        return True, "esplora cannot test-accept; broadcast decides"

    def broadcast(self, raw: bytes) -> str:
        try:
            answer = self._request("/tx", raw.hex().encode()).decode(errors="replace").strip()
        except BroadcastRejected as rejected:
            if rejected.code == RPC_VERIFY_ALREADY_IN_CHAIN:  # resending a confirmed tx is not an error
                return parse_transaction(raw).txid
            raise
        txid = parse_transaction(raw).txid  # the node decoded it, so do we
        if answer != txid:
            raise OSError(f"Esplora accepted {txid} but answered {answer[:100]!r}")
        return answer

    def estimate_fee_sat_per_vb(self, target_blocks: int) -> Decimal:
        estimates = {int(k): Decimal(v) for k, v in self._json("/fee-estimates").items()}
        eligible = [k for k in estimates if k <= target_blocks]
        return estimates[max(eligible)] if eligible else Decimal(1)

    def utxos(self, script_pubkey: bytes) -> list[Utxo]:
        scripthash = hashlib.sha256(script_pubkey).digest()[::-1].hex()
        return [Utxo(u["txid"], u["vout"], int(u["value"])) for u in self._json(f"/scripthash/{scripthash}/utxo")
                if u.get("status", {}).get("confirmed")]

    def utxos_of_scripts(self, scripts: list[bytes]) -> dict[bytes, list[Utxo]]:
        """Esplora has no batch lookup: one `/scripthash/:hash/utxo` request per script."""
        return {script: self.utxos(script) for script in dict.fromkeys(scripts)}

    def outspend(self, outpoint: Outpoint) -> str | None:
        """The txid of the confirmed transaction spending `outpoint` (`GET /tx/:txid/outspend/:vout`); None while
        it is unspent or spent only in the mempool."""
        answer = self._json(f"/tx/{outpoint.txid}/outspend/{outpoint.vout}")
        if not isinstance(answer, dict) or not answer.get("spent") or not answer.get("status", {}).get("confirmed"):
            return None
        txid = answer.get("txid")
        if not isinstance(txid, str) or not HASH_HEX.fullmatch(txid):
            raise OSError(f"Esplora's outspend of {outpoint} names no txid: {answer!r:.100}")
        return txid

    def anchor_chain(self, genesis: Outpoint, moved_to: Sequence[bytes] = ()) -> list[bytes]:
        """Forward from the genesis through each output's confirmed spender (outspend)."""
        script = script_of_outpoint(genesis, self.raw_transaction(genesis.txid))
        return follow_anchor_chain(genesis, script, self.outspend, self.raw_transaction)


def _rejection(text: str) -> BroadcastRejected:
    """electrs and mempool.space pass bitcoind's error object on; other servers send a plain reason."""
    passed_on = PASSED_ON_RPC_ERROR.search(text)
    if passed_on:
        try:
            error = json.loads(passed_on.group(1))
            return BroadcastRejected(str(error["message"]), int(error["code"]))
        except (ValueError, KeyError, TypeError):
            pass
    return BroadcastRejected(text)
