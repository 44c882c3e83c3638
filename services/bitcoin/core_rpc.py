"""Bitcoin Core JSON-RPC client implementing ledger.anchoring.ChainBackend (stdlib HTTP, no wallet needed).

Auth: the node's cookie file (`<datadir>/.cookie`, user `__cookie__`, re-read on every 401 because Core
writes a new one at each start) or an rpcauth user and password. Amounts are parsed as Decimal.
"""

import base64
import hashlib
import itertools
import json
import pathlib
import urllib.error
import urllib.request
from decimal import Decimal

from ledger.anchoring import Utxo, display_hex, sha256d
from services.bitcoin.errors import BackendAuthFailed, BroadcastRejected

RPC_TIMEOUT_S = 30.0
RPC_INVALID_ADDRESS_OR_KEY = -5       # also "No such mempool or blockchain transaction", "Block not found"
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
SATS_PER_BTC = Decimal(100_000_000)


class CoreRpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class CoreRpcClient:
    def __init__(self, url: str, *, cookie_file: str | None = None, user: str | None = None,
                 password: str | None = None, timeout_s: float = RPC_TIMEOUT_S):
        if not cookie_file and user is None:
            raise ValueError("Bitcoin Core RPC needs a cookie file or a user and password")
        self._url, self._cookie_file, self._timeout_s = url, cookie_file, timeout_s
        self._user, self._password = user, password
        self._ids = itertools.count(1)

    def _authorization(self) -> str:
        if self._cookie_file:
            credentials = pathlib.Path(self._cookie_file).read_text().strip()
        else:
            credentials = f"{self._user}:{self._password}"
        return "Basic " + base64.b64encode(credentials.encode()).decode()

    def call(self, method: str, *params):
        body = json.dumps({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)})
        request = urllib.request.Request(self._url, data=body.encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": self._authorization()})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                reply = json.loads(response.read(), parse_float=Decimal)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise BackendAuthFailed(f"Bitcoin Core refused the credentials ({error.code})") from None
            reply = json.loads(error.read() or b"{}", parse_float=Decimal)  # Core sends RPC errors as HTTP 500
            if not reply.get("error"):
                raise OSError(f"Bitcoin Core answered HTTP {error.code}") from None
        if reply.get("error"):
            raise CoreRpcError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def _lookup(self, method: str, *params):
        try:
            return self.call(method, *params)
        except CoreRpcError as error:
            if error.code in (RPC_INVALID_ADDRESS_OR_KEY, -8):
                raise LookupError(error.message) from None
            raise

    # --- ChainBackend -----------------------------------------------------------------------------------

    def tip_height(self) -> int:
        return self.call("getblockcount")

    def block_hash(self, height: int) -> str:
        return self._lookup("getblockhash", height)

    def block_header(self, block_hash: str) -> bytes:
        return bytes.fromhex(self._lookup("getblockheader", block_hash, False))

    def transaction_status(self, txid: str) -> tuple[str | None, int]:
        found = self._lookup("getrawtransaction", txid, True)
        if found.get("blockhash") and found.get("confirmations", 0) > 0:
            return found["blockhash"], found["confirmations"]
        return None, 0

    def raw_transaction(self, txid: str) -> bytes:
        return bytes.fromhex(self._lookup("getrawtransaction", txid, False))

    def txout_proof(self, txid: str, block_hash: str) -> bytes:
        return bytes.fromhex(self._lookup("gettxoutproof", [txid], block_hash))

    def test_accept(self, raw: bytes) -> tuple[bool, str]:
        result = self.call("testmempoolaccept", [raw.hex()])[0]
        return bool(result["allowed"]), result.get("reject-reason", "")

    def broadcast(self, raw: bytes) -> str:
        try:
            return self.call("sendrawtransaction", raw.hex())
        except CoreRpcError as error:
            if error.code == RPC_VERIFY_ALREADY_IN_CHAIN:
                return display_hex(sha256d(_no_witness(raw)))
            if error.code in (RPC_VERIFY_ERROR, RPC_VERIFY_REJECTED, -22):
                raise BroadcastRejected(error.message, error.code) from None
            raise

    def estimate_fee_sat_per_vb(self, target_blocks: int) -> Decimal:
        estimate = self.call("estimatesmartfee", target_blocks, "conservative")
        if "feerate" not in estimate:
            return Decimal(1)  # no estimate yet (e.g. a fresh regtest chain): the floor
        return estimate["feerate"] * SATS_PER_BTC / 1000

    def utxos(self, script_pubkey: bytes) -> list[Utxo]:
        scan = self.call("scantxoutset", "start", [f"raw({script_pubkey.hex()})"])
        return [Utxo(u["txid"], u["vout"], int(u["amount"] * SATS_PER_BTC)) for u in scan["unspents"]]


def _no_witness(raw: bytes) -> bytes:
    from ledger.anchoring import parse_transaction
    return parse_transaction(raw).no_witness


def rpcauth_line(user: str, password: str, salt_hex: str) -> str:
    """The `-rpcauth=` value Core checks: user:salt$HMAC-SHA256(salt, password)."""
    import hmac
    digest = hmac.new(salt_hex.encode(), password.encode(), hashlib.sha256).hexdigest()
    return f"{user}:{salt_hex}${digest}"
