"""Bitcoin Core JSON-RPC client implementing ledger.anchoring.ChainBackend (stdlib HTTP, no wallet needed).

Auth: the node's cookie file (`<datadir>/.cookie`, user `__cookie__`, read on every call because Core
writes a new one at each start) or an rpcauth user and password. Amounts are parsed as Decimal.
Failures: Core's error objects raise CoreRpcError (LookupError for unknown items, BroadcastRejected from
`broadcast`); 401/403 raise BackendAuthFailed; anything else that is not a JSON-RPC answer raises OSError
(TimeoutError when the node does not answer in time).
"""

import base64
import hashlib
import hmac
import http.client
import itertools
import json
import pathlib
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Sequence

from ledger.anchoring import (Outpoint, Utxo, display_hex, parse_transaction, script_of_outpoint, sha256d,
                              trace_anchor_chain)
from ledger.limits import SATS_PER_BTC
from services.bitcoin.errors import BackendAuthFailed, BroadcastRejected

RPC_TIMEOUT_S = 30.0
RPC_INVALID_ADDRESS_OR_KEY = -5       # also "No such mempool or blockchain transaction", "Block not found"
RPC_INVALID_PARAMETER = -8            # e.g. "Block height out of range"
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
COINBASE_MATURITY_BLOCKS = 100
SCAN_SCRIPTS_MAX = 1_000              # scripts per scantxoutset call (the reserves monitor's first read)
REPLY_SIZE_MAX_BYTES = 64_000_000     # a verbose block is the largest answer we ask for


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
        request_id = next(self._ids)
        body = json.dumps({"jsonrpc": "1.0", "id": request_id, "method": method, "params": list(params)})
        request = urllib.request.Request(self._url, data=body.encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": self._authorization()})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                reply = _json_reply(response.read(REPLY_SIZE_MAX_BYTES + 1), method)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise BackendAuthFailed(f"Bitcoin Core refused the credentials ({error.code})") from None
            try:  # Core sends RPC errors as HTTP 500 (404 for an unknown method) with a JSON-RPC body
                reply = _json_reply(error.read(REPLY_SIZE_MAX_BYTES + 1), method)
            except OSError:
                raise OSError(f"Bitcoin Core answered HTTP {error.code} to {method}") from None
            if not reply.get("error"):
                raise OSError(f"Bitcoin Core answered HTTP {error.code} to {method}") from None
        except urllib.error.URLError as error:  # connection refused, DNS, connect timeout
            if isinstance(error.reason, TimeoutError):
                raise TimeoutError(f"Bitcoin Core at {self._url} did not answer {method} in {self._timeout_s} s") \
                    from None
            raise OSError(f"Bitcoin Core at {self._url} is unreachable: {error.reason}") from None
        except http.client.HTTPException as error:  # a broken or truncated HTTP answer
            raise OSError(f"Bitcoin Core sent a broken HTTP answer to {method}: {error!r}") from None
        if reply.get("id") != request_id:
            raise OSError(f"Bitcoin Core answered {method} with id {reply.get('id')!r}, expected {request_id}")
        if reply.get("error"):
            raise CoreRpcError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def _lookup(self, method: str, *params):
        try:
            return self.call(method, *params)
        except CoreRpcError as error:
            if error.code in (RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER):
                raise LookupError(error.message) from None
            raise

    # --- ChainBackend -----------------------------------------------------------------------------------

    def tip_height(self) -> int:
        return self.call("getblockcount")

    def block_hash(self, height: int) -> str:
        return self._lookup("getblockhash", height)

    def block_header(self, block_hash: str) -> bytes:
        return bytes.fromhex(self._lookup("getblockheader", block_hash, False))

    def block(self, block_hash: str) -> bytes:
        return bytes.fromhex(self._lookup("getblock", block_hash, 0))

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
        try:
            result = self.call("testmempoolaccept", [raw.hex()])[0]
        except CoreRpcError as error:
            if error.code == RPC_DESERIALIZATION_ERROR:  # Core throws for bytes it cannot decode
                return False, error.message
            raise
        return bool(result["allowed"]), result.get("reject-reason", "")

    def broadcast(self, raw: bytes) -> str:
        try:
            return self.call("sendrawtransaction", raw.hex())
        except CoreRpcError as error:
            if error.code == RPC_VERIFY_ALREADY_IN_CHAIN:
                return display_hex(sha256d(parse_transaction(raw).no_witness))
            if error.code in (RPC_VERIFY_ERROR, RPC_VERIFY_REJECTED, RPC_DESERIALIZATION_ERROR):
                raise BroadcastRejected(error.message, error.code) from None
            raise

    def estimate_fee_sat_per_vb(self, target_blocks: int) -> Decimal:
        estimate = self.call("estimatesmartfee", target_blocks, "conservative")
        if "feerate" not in estimate:
            return Decimal(1)  # no estimate yet (e.g. a fresh regtest chain): the floor
        return estimate["feerate"] * SATS_PER_BTC / 1000

    def utxos(self, script_pubkey: bytes) -> list[Utxo]:
        """Spendable coins: scantxoutset also lists coinbase outputs that are not mature yet."""
        scan = self.call("scantxoutset", "start", [f"raw({script_pubkey.hex()})"])
        return [Utxo(u["txid"], u["vout"], int(u["amount"] * SATS_PER_BTC)) for u in scan["unspents"]
                if not u.get("coinbase") or scan["height"] - u["height"] + 1 >= COINBASE_MATURITY_BLOCKS]

    def scan_scripts(self, scripts: list[bytes]) -> list[tuple[bytes, Utxo, int]]:
        """(script, coin, confirmation height) of the spendable coins at many scripts: one scantxoutset per
        SCAN_SCRIPTS_MAX scripts (each scan reads the whole UTXO set, so one per script would not do)."""
        found = []
        for start in range(0, len(scripts), SCAN_SCRIPTS_MAX):
            chunk = scripts[start:start + SCAN_SCRIPTS_MAX]
            scan = self.call("scantxoutset", "start", [f"raw({script.hex()})" for script in chunk])
            found += [(bytes.fromhex(u["scriptPubKey"]), Utxo(u["txid"], u["vout"], int(u["amount"] * SATS_PER_BTC)),
                       u["height"]) for u in scan["unspents"]
                      if not u.get("coinbase") or scan["height"] - u["height"] + 1 >= COINBASE_MATURITY_BLOCKS]
        return found

    def utxos_of_scripts(self, scripts: list[bytes]) -> dict[bytes, list[Utxo]]:
        """`utxos` for many scripts (reconciling derived addresses), from one scan_scripts."""
        found: dict[bytes, list[Utxo]] = {script: [] for script in scripts}
        for script, coin, _height in self.scan_scripts(list(found)):
            found.setdefault(script, []).append(coin)
        return found

    def anchor_chain(self, genesis: Outpoint, moved_to: Sequence[bytes] = ()) -> list[bytes]:
        """Core lists no spenders: from the coins unspent now at the genesis's address and at the addresses the
        chain may have moved to (scantxoutset) back through each transaction's input (getrawtransaction; a node
        with -txindex) to the genesis."""
        script = script_of_outpoint(genesis, self.raw_transaction(genesis.txid))
        scripts = list(dict.fromkeys([script, *moved_to]))
        unspent = [Outpoint(coin.txid, coin.vout) for s in scripts for coin in self.utxos(s)]
        return trace_anchor_chain(genesis, script, unspent, self.raw_transaction)


def _json_reply(body: bytes, method: str) -> dict:
    if len(body) > REPLY_SIZE_MAX_BYTES:
        raise OSError(f"Bitcoin Core's answer to {method} is over {REPLY_SIZE_MAX_BYTES} bytes")
    try:
        reply = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise OSError(f"Bitcoin Core's answer to {method} is not JSON: {body[:100]!r}") from None
    if not isinstance(reply, dict) or "result" not in reply and "error" not in reply:
        raise OSError(f"Bitcoin Core's answer to {method} is not a JSON-RPC reply: {body[:100]!r}")
    return reply


def rpcauth_line(user: str, password: str, salt_hex: str) -> str:
    """The `-rpcauth=` value Core checks: user:salt$HMAC-SHA256(salt, password)."""
    digest = hmac.new(salt_hex.encode(), password.encode(), hashlib.sha256).hexdigest()
    return f"{user}:{salt_hex}${digest}"
