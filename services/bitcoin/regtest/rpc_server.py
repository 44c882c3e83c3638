"""The Bitcoin Core JSON-RPC subset's protocol side: Core's error catalogue, parameter checks, the JSON-RPC
1.0/2.0 envelope (single requests and batches) and the HTTP handler with Basic auth.

The methods themselves are services/bitcoin/regtest/rpc_methods.py; docs/REGTEST.md lists them.
"""

import base64
import hmac
import json
import logging
import re
import time
from decimal import Decimal, InvalidOperation

from ledger.anchoring import ParsedTx, TransactionMalformed, parse_transaction
from services.bitcoin.regtest.chain import ChainError
from services.bitcoin.regtest.http import Handler, dumps

log = logging.getLogger(__name__)

AUTH_FAILURE_DELAY_S = 0.25           # Core sleeps this long after a wrong password to slow guessing
BATCH_SIZE_MAX = 1_000
SATS_PER_BTC = Decimal(100_000_000)
BTC_QUANTUM = Decimal("0.00000001")
DEFAULT_MAX_FEE_RATE_BTC_PER_KVB = Decimal("0.10")   # sendrawtransaction's and testmempoolaccept's default cap
DEFAULT_MAX_FEE_SAT_PER_KVB = int(DEFAULT_MAX_FEE_RATE_BTC_PER_KVB * SATS_PER_BTC)
FEE_RATE_LIMIT_BTC_PER_KVB = Decimal(1)
HASH_HEX = re.compile(r"[0-9a-fA-F]{64}")

# Core's error codes (src/rpc/protocol.h).
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_PARSE_ERROR = -32700
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_ALREADY_IN_CHAIN = -27


class RpcError(Exception):
    """A JSON-RPC error object: Core's code and message."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# --- amounts and parameters ------------------------------------------------------------------------------

def btc_amount(sats: int) -> Decimal:
    """Satoshis as the BTC amount Core prints: a JSON number with exactly 8 decimals."""
    return (Decimal(sats) / SATS_PER_BTC).quantize(BTC_QUANTUM)


def btc_per_kvb(sat_per_vb: Decimal) -> Decimal:
    """Core's CFeeRate::GetFeePerK in BTC: whole sat/kvB, printed with 8 decimals."""
    return btc_amount(int(Decimal(sat_per_vb) * 1000))


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, Decimal)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def typed_param(value, name: str, *types: type):
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = "|".join(dict.fromkeys(_json_type(t()) for t in types))
        raise RpcError(RPC_TYPE_ERROR,
                       f"JSON value of type {_json_type(value)} for field {name} is not of expected type {expected}")
    return value


def hash_param(value, name: str) -> str:
    typed_param(value, name, str)
    if len(value) != 64:
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    if not HASH_HEX.fullmatch(value):
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')")
    return value.lower()


def amount_param(value, name: str) -> int:
    """A BTC amount (JSON number or numeric string) as satoshis; Core refuses sub-satoshi precision."""
    try:
        amount = Decimal(typed_param(value, name, int, Decimal, str))
    except InvalidOperation:
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount") from None
    if amount < 0:
        raise RpcError(RPC_TYPE_ERROR, "Amount out of range")
    sats = amount * SATS_PER_BTC
    if sats != sats.to_integral_value():
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount")
    return int(sats)


def decode_tx_param(hex_string) -> tuple[bytes, ParsedTx]:
    try:
        raw = bytes.fromhex(typed_param(hex_string, "hexstring", str))
        return raw, parse_transaction(raw)
    except (ValueError, TransactionMalformed):
        raise RpcError(RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input.") \
            from None


def short_reason(reason: str) -> str:
    """Core's reject-reason is the token before the details ("min relay fee not met, 100 < 141")."""
    return re.split(r", | \(", reason, maxsplit=1)[0]


def fee_rate_param(value) -> int:
    """A maxfeerate in BTC/kvB as whole sat/kvB; 0 disables the check, as in Core."""
    sats = amount_param(value, "maxfeerate")
    if sats > FEE_RATE_LIMIT_BTC_PER_KVB * SATS_PER_BTC:
        raise RpcError(RPC_TYPE_ERROR, "Fee rates larger than or equal to 1BTC/kvB are not accepted")
    return sats


# --- the JSON-RPC envelope -------------------------------------------------------------------------------

def _rpc_reply(request, methods) -> tuple[dict | None, int]:
    """(reply object or None for a JSON-RPC 2.0 notification, HTTP status of a legacy reply)."""
    if not isinstance(request, dict):
        return _legacy_reply(None, RpcError(RPC_INVALID_REQUEST, "Invalid Request object"), None)
    version2 = request.get("jsonrpc") == "2.0"
    request_id, result, error = request.get("id"), None, None
    try:
        method, params = request.get("method"), request.get("params")
        if method is None:
            raise RpcError(RPC_INVALID_REQUEST, "Missing method")
        if not isinstance(method, str):
            raise RpcError(RPC_INVALID_REQUEST, "Method must be a string")
        if params is not None and not isinstance(params, (list, dict)):
            raise RpcError(RPC_INVALID_REQUEST, "Params must be an array or object")
        result = methods.call(method, params if params is not None else [])
    except RpcError as raised:
        error = raised
    except ChainError as raised:
        error = RpcError(RPC_MISC_ERROR, str(raised))
    except Exception:  # a bug here must not take the server down; the log says where
        log.exception("RPC %r failed", request.get("method"))
        error = RpcError(RPC_MISC_ERROR, "internal error (see the node's log)")
    if not version2:
        return _legacy_reply(result, error, request_id)
    if "id" not in request:
        return None, 204
    outcome = {"error": {"code": error.code, "message": error.message}} if error else {"result": result}
    return {"jsonrpc": "2.0", **outcome, "id": request_id}, 200


def _legacy_reply(result, error: RpcError | None, request_id) -> tuple[dict, int]:
    """JSON-RPC 1.0 as Core answers it: both keys present; HTTP 400/404/500 on errors (httprpc.cpp)."""
    if error is None:
        return {"result": result, "error": None, "id": request_id}, 200
    status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(error.code, 500)
    return {"result": None, "error": {"code": error.code, "message": error.message}, "id": request_id}, status


def handle_jsonrpc(body: bytes, methods) -> tuple[int, str | None]:
    """HTTP status and body for one POST: a single request or a batch."""
    try:
        request = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        reply, status = _legacy_reply(None, RpcError(RPC_PARSE_ERROR, "Parse error"), None)
        return status, dumps(reply)
    if isinstance(request, list):
        if not 1 <= len(request) <= BATCH_SIZE_MAX:
            reply, status = _legacy_reply(None, RpcError(RPC_INVALID_REQUEST, f"batch of 1..{BATCH_SIZE_MAX}"), None)
            return status, dumps(reply)
        replies = [reply for reply, _ in (_rpc_reply(r, methods) for r in request) if reply is not None]
        return 200, dumps(replies)
    if not isinstance(request, dict):
        reply, status = _legacy_reply(None, RpcError(RPC_PARSE_ERROR, "Top-level object parse error"), None)
        return status, dumps(reply)
    reply, status = _rpc_reply(request, methods)
    return status, dumps(reply) if reply is not None else None


# --- HTTP --------------------------------------------------------------------------------------------------

class RpcHandler(Handler):
    """POST / with Basic auth; the server carries `methods` (CoreMethods) and `credentials`."""

    def do_GET(self) -> None:
        self.send(405, b"JSONRPC server handles only POST requests", "text/plain")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/":
            self.send(404, b"", "text/plain")
            return
        if not self._authorized():
            return
        body = self.body()
        if body is None:
            return
        status, reply = handle_jsonrpc(body, self.server.methods)
        self.send(status, (reply + "\n").encode() if reply is not None else b"", "application/json")

    def _authorized(self) -> bool:
        """Basic auth against the cookie and the configured user; constant-time compares, as Core does."""
        header = self.headers.get("Authorization", "")
        challenge = {"WWW-Authenticate": 'Basic realm="jsonrpc"'}
        if not header:
            self.send(401, b"", "text/html", challenge)
            return False
        try:
            offered = base64.b64decode(header.removeprefix("Basic ").strip(), validate=True) \
                if header.startswith("Basic ") else b""
        except ValueError:
            offered = b""
        if not any(hmac.compare_digest(offered, allowed) for allowed in self.server.credentials):
            time.sleep(AUTH_FAILURE_DELAY_S)
            self.send(401, b"", "text/html", challenge)
            return False
        return True

