"""An HTTP front for the embedded regtest chain: a Bitcoin Core JSON-RPC subset and an Esplora REST subset.

It lets the production clients (core_rpc.py, esplora.py) and outside tools run against a real server on
loopback. Both servers share one RegtestChain (whose lock serialises them with any other process using
DIR). The methods, paths and the differences from Core and electrs are listed in docs/REGTEST.md.

  JSON-RPC  http://HOST:RPC_PORT/     JSON-RPC 1.0 and 2.0 shapes, batches, Basic auth (DIR/.cookie or
                                      a configured user:password), errors as Core sends them
  Esplora   http://HOST:ESPLORA_PORT  electrs' paths at the root, errors as electrs sends them
"""

import base64
import hashlib
import hmac
import http.server
import inspect
import ipaddress
import json
import logging
import os
import pathlib
import re
import secrets
import signal
import socket
import struct
import threading
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from base58check import b58decode, b58encode
from bitcoinutils.bech32 import decode as bech32_decode, encode as bech32_encode

from ledger.anchoring import (ParsedTx, TransactionMalformed, block_merkle_levels, display_hex,
                              internal_from_display, parse_transaction, sha256d)
from services.bitcoin.errors import BroadcastRejected

if TYPE_CHECKING:
    from services.bitcoin.regtest.chain import RegtestChain

log = logging.getLogger(__name__)

COOKIE_USER = "__cookie__"
COOKIE_FILE_NAME = ".cookie"
REQUEST_BODY_MAX_BYTES = 16_000_000   # 25 transactions of the largest size, hex encoded, with room
REQUEST_TIMEOUT_S = 30.0              # a connection idle this long is closed
AUTH_FAILURE_DELAY_S = 0.25           # Core sleeps this long after a wrong password to slow guessing
BATCH_SIZE_MAX = 1_000
PACKAGE_COUNT_MAX = 25                # Core's MAX_PACKAGE_COUNT for testmempoolaccept
CONF_TARGET_MAX = 1_008
SATS_PER_BTC = Decimal(100_000_000)
BTC_QUANTUM = Decimal("0.00000001")
DEFAULT_MAX_FEE_RATE_BTC_PER_KVB = Decimal("0.10")   # sendrawtransaction's and testmempoolaccept's default cap
DEFAULT_MAX_FEE_SAT_PER_KVB = int(DEFAULT_MAX_FEE_RATE_BTC_PER_KVB * SATS_PER_BTC)
FEE_RATE_LIMIT_BTC_PER_KVB = Decimal(1)
ESPLORA_FEE_TARGETS = tuple(range(1, 26)) + (144, 504, 1008)   # electrs' CONF_TARGETS
MEDIAN_TIME_SPAN_BLOCKS = 11
BECH32_HRP = "bcrt"
BASE58_P2PKH_PREFIX = 0x6F
BASE58_P2SH_PREFIX = 0xC4
COINBASE_PREVOUT = b"\x00" * 32
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


class AddressInvalid(ValueError):
    """Not a regtest address this node can decode (bech32/bech32m segwit, base58 P2PKH or P2SH)."""


class NodeAddressNotLoopback(ValueError):
    """The node serves an unauthenticated REST API and a password-guessable RPC: loopback only."""


# --- encodings --------------------------------------------------------------------------------------------

def btc_amount(sats: int) -> Decimal:
    """Satoshis as the BTC amount Core prints: a JSON number with exactly 8 decimals."""
    return (Decimal(sats) / SATS_PER_BTC).quantize(BTC_QUANTUM)


def btc_per_kvb(sat_per_vb: Decimal) -> Decimal:
    """Core's CFeeRate::GetFeePerK in BTC: whole sat/kvB, printed with 8 decimals."""
    return btc_amount(int(Decimal(sat_per_vb) * 1000))


def dumps(value) -> str:
    """JSON with Decimal written as a number, digit for digit (json.dumps would need floats)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return "{" + ", ".join(json.dumps(str(k)) + ": " + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def script_for_address(address: str) -> bytes:
    version, program = bech32_decode(BECH32_HRP, address)  # either case, never mixed
    if version is not None:
        return bytes([0 if version == 0 else 0x50 + version, len(program)]) + bytes(program)
    try:
        data = b58decode(address.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise AddressInvalid(address) from None
    body, checksum = data[:-4], data[-4:]
    if len(body) != 21 or sha256d(body)[:4] != checksum:
        raise AddressInvalid(address)
    if body[0] == BASE58_P2PKH_PREFIX:
        return b"\x76\xa9\x14" + body[1:] + b"\x88\xac"
    if body[0] == BASE58_P2SH_PREFIX:
        return b"\xa9\x14" + body[1:] + b"\x87"
    raise AddressInvalid(address)


def script_type_and_address(script: bytes) -> tuple[str, str | None]:
    """Core's scriptPubKey "type" and the regtest address, for the common output kinds."""
    def base58(prefix: int, payload: bytes) -> str:
        body = bytes([prefix]) + payload
        return b58encode(body + sha256d(body)[:4]).decode("ascii")

    if script[:1] == b"\x6a":
        return "nulldata", None
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash", base58(BASE58_P2PKH_PREFIX, script[3:23])
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22:] == b"\x87":
        return "scripthash", base58(BASE58_P2SH_PREFIX, script[2:22])
    if 4 <= len(script) <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] == len(script) - 2:
        version = 0 if script[0] == 0 else script[0] - 0x50
        kind = {(0, 20): "witness_v0_keyhash", (0, 32): "witness_v0_scripthash",
                (1, 32): "witness_v1_taproot"}.get((version, len(script) - 2), "witness_unknown")
        return kind, bech32_encode(BECH32_HRP, version, list(script[2:]))
    return "nonstandard", None


def script_for_descriptor(descriptor: str) -> bytes:
    """raw(HEX) and addr(ADDR) descriptors; a `#checksum` suffix is accepted unchecked."""
    body = descriptor.split("#", 1)[0]
    match = re.fullmatch(r"(raw|addr)\((.*)\)", body)
    if match is None:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"'{body}' is not a descriptor this node supports (raw(), addr())")
    kind, argument = match.groups()
    try:
        return bytes.fromhex(argument) if kind == "raw" else script_for_address(argument)
    except (ValueError, AddressInvalid):
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"{kind}(): '{argument}' is invalid") from None


def block_transactions(raw_block: bytes) -> list[bytes]:
    # services.bitcoin.regtest.chain loads libbitcoinkernel; imported on first use so `reserve-ledger --help` stays fast
    from services.bitcoin.regtest.chain import block_transactions as split
    return split(raw_block)


def esplora_scripthash(script: bytes) -> str:
    return hashlib.sha256(script).digest()[::-1].hex()


def is_coinbase(tx: ParsedTx) -> bool:
    return len(tx.inputs) == 1 and tx.inputs[0].prev_txid_internal == COINBASE_PREVOUT


def coinbase_height(raw_block: bytes) -> int:
    """The BIP34 height in the coinbase's first push (how a stale block's height is known)."""
    script = parse_transaction(block_transactions(raw_block)[0]).inputs[0].script_sig
    if not script or script[0] == 0:
        return 0
    if 0x51 <= script[0] <= 0x60:
        return script[0] - 0x50
    return int.from_bytes(script[1: 1 + script[0]], "little")


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, Decimal)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _typed(value, name: str, *types: type):
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = "|".join(dict.fromkeys(_json_type(t()) for t in types))
        raise RpcError(RPC_TYPE_ERROR,
                       f"JSON value of type {_json_type(value)} for field {name} is not of expected type {expected}")
    return value


def _hash_param(value, name: str) -> str:
    _typed(value, name, str)
    if len(value) != 64:
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    if not HASH_HEX.fullmatch(value):
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')")
    return value.lower()


def _amount_param(value, name: str) -> int:
    """A BTC amount (JSON number or numeric string) as satoshis; Core refuses sub-satoshi precision."""
    try:
        amount = Decimal(_typed(value, name, int, Decimal, str))
    except InvalidOperation:
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount") from None
    if amount < 0:
        raise RpcError(RPC_TYPE_ERROR, "Amount out of range")
    sats = amount * SATS_PER_BTC
    if sats != sats.to_integral_value():
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount")
    return int(sats)


def _decode_tx(hex_string) -> tuple[bytes, ParsedTx]:
    try:
        raw = bytes.fromhex(_typed(hex_string, "hexstring", str))
        return raw, parse_transaction(raw)
    except (ValueError, TransactionMalformed):
        raise RpcError(RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input.") \
            from None


def _short_reason(reason: str) -> str:
    """Core's reject-reason is the token before the details ("min relay fee not met, 100 < 141")."""
    return re.split(r", | \(", reason, maxsplit=1)[0]


# --- the node's view of the chain, shared by both APIs ------------------------------------------------------

class ChainView:
    """Answers both APIs need, computed from RegtestChain's public methods only."""

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

    def send_raw_transaction(self, hex_string, max_fee_sat_per_kvb: int = DEFAULT_MAX_FEE_SAT_PER_KVB,
                             max_burn_sats: int = 0) -> str:
        """Core's sendrawtransaction: the checks in Core's order, errors with Core's codes and messages."""
        raw, tx = _decode_tx(hex_string)
        if any(out.script_pubkey[:1] == b"\x6a" and out.value_sats > max_burn_sats for out in tx.outputs):
            raise RpcError(RPC_VERIFY_ERROR, "Unspendable output exceeds maximum configured by user (maxburnamount)")
        try:
            block_hash, _ = self.chain.transaction_status(tx.txid)
        except LookupError:
            block_hash = None
        if block_hash is not None:
            raise RpcError(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set")
        try:
            fee = self.fee_sats(tx)
        except LookupError:
            fee = None  # missing inputs: the chain says so below
        if fee is not None and max_fee_sat_per_kvb and fee > max_fee_sat_per_kvb * tx.vsize // 1000:
            raise RpcError(RPC_VERIFY_ERROR, "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)")
        try:
            return self.chain.broadcast(raw)
        except BroadcastRejected as rejected:
            raise RpcError(rejected.code or RPC_VERIFY_ERROR, rejected.reason) from None


# --- Bitcoin Core JSON-RPC methods ----------------------------------------------------------------------------

class CoreMethods:
    """One method per RPC, named `rpc_<name>`; parameters as Core names them (for named-parameter calls)."""

    def __init__(self, view: ChainView):
        self._view = view
        self._chain = view.chain

    def call(self, method, params):
        if not isinstance(method, str) or not re.fullmatch(r"[a-z]+", method) or \
                not hasattr(self, "rpc_" + method):
            raise RpcError(RPC_METHOD_NOT_FOUND, "Method not found")
        handler = getattr(self, "rpc_" + method)
        signature = inspect.signature(handler)
        try:
            bound = signature.bind(**params) if isinstance(params, dict) else signature.bind(*params)
        except TypeError:
            usage = " ".join(f'"{p}"' for p in signature.parameters)
            raise RpcError(RPC_MISC_ERROR, f"{method} {usage}".rstrip() + " (wrong number or names of parameters)") \
                from None
        return handler(*bound.args, **bound.kwargs)

    # --- blocks ---------------------------------------------------------------------------------------------

    def rpc_getblockcount(self):
        return self._chain.tip_height()

    def rpc_getbestblockhash(self):
        return self._chain.block_hash(self._chain.tip_height())

    def rpc_getblockhash(self, height):
        try:
            return self._chain.block_hash(_typed(height, "height", int))
        except LookupError:
            raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range") from None

    def _block(self, blockhash) -> bytes:
        try:
            return self._chain.block(_hash_param(blockhash, "blockhash"))
        except LookupError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found") from None

    def _header_json(self, block_hash: str, raw_block: bytes) -> dict:
        header = raw_block[:80]
        version, = struct.unpack_from("<i", header, 0)
        time_s, bits, nonce = struct.unpack_from("<III", header, 68)
        tip = self._chain.tip_height()
        height = self._view.best_height(block_hash)
        result = {"hash": block_hash,
                  "confirmations": tip - height + 1 if height is not None else -1,
                  "height": height if height is not None else coinbase_height(raw_block),
                  "version": version, "versionHex": f"{version & 0xFFFFFFFF:08x}",
                  "merkleroot": display_hex(header[36:68]), "time": time_s,
                  "mediantime": self._view.median_time(block_hash), "nonce": nonce, "bits": f"{bits:08x}",
                  "nTx": len(block_transactions(raw_block))}
        if header[4:36] != b"\x00" * 32:
            result["previousblockhash"] = display_hex(header[4:36])
        if height is not None and height < tip:
            result["nextblockhash"] = self._chain.block_hash(height + 1)
        return result

    def rpc_getblockheader(self, blockhash, verbose=True):
        raw = self._block(blockhash)
        if not _typed(verbose, "verbose", bool):
            return raw[:80].hex()
        return self._header_json(blockhash.lower(), raw)

    def rpc_getblock(self, blockhash, verbosity=1):
        raw = self._block(blockhash)
        level = int(_typed(verbosity, "verbosity", int, bool))
        if level == 0:
            return raw.hex()
        txs = [parse_transaction(tx) for tx in block_transactions(raw)]
        result = self._header_json(blockhash.lower(), raw)
        stripped = len(raw) - sum(tx.size_bytes - len(tx.no_witness) for tx in txs)
        result.update(size=len(raw), strippedsize=stripped, weight=3 * stripped + len(raw))
        result["tx"] = [tx.txid for tx in txs] if level == 1 else [self._tx_json(tx, None) for tx in txs]
        return result

    def rpc_getblockchaininfo(self):
        tip = self._chain.tip_height()
        best = self._chain.block_hash(tip)
        return {"chain": "regtest", "blocks": tip, "headers": tip, "bestblockhash": best,
                "time": self._view.block_time(best), "mediantime": self._view.median_time(best),
                "verificationprogress": 1, "initialblockdownload": False, "pruned": False, "warnings": []}

    # --- transactions ---------------------------------------------------------------------------------------

    def _tx_json(self, tx: ParsedTx, raw: bytes | None) -> dict:
        vin = []
        for index, txin in enumerate(tx.inputs):
            entry = ({"coinbase": txin.script_sig.hex()} if is_coinbase(tx) else
                     {"txid": display_hex(txin.prev_txid_internal), "vout": txin.vout,
                      "scriptSig": {"hex": txin.script_sig.hex()}})
            if tx.witnesses and tx.witnesses[index]:
                entry["txinwitness"] = [item.hex() for item in tx.witnesses[index]]
            entry["sequence"] = txin.sequence
            vin.append(entry)
        vout = []
        for n, out in enumerate(tx.outputs):
            kind, address = script_type_and_address(out.script_pubkey)
            script = {"hex": out.script_pubkey.hex(), "type": kind}
            if address:
                script["address"] = address
            vout.append({"value": btc_amount(out.value_sats), "n": n, "scriptPubKey": script})
        result = {"txid": tx.txid, "hash": display_hex(sha256d(raw)) if raw else tx.txid, "version": tx.version,
                  "size": tx.size_bytes, "vsize": tx.vsize, "weight": tx.weight, "locktime": tx.locktime,
                  "vin": vin, "vout": vout}
        if raw is not None:
            result["hex"] = raw.hex()
        return result

    def _confirmed_fields(self, block_hash: str) -> dict:
        height = self._view.best_height(block_hash)
        if height is None:
            return {"blockhash": block_hash, "confirmations": 0}
        block_time = self._view.block_time(block_hash)
        return {"blockhash": block_hash, "confirmations": self._chain.tip_height() - height + 1,
                "time": block_time, "blocktime": block_time}

    def rpc_getrawtransaction(self, txid, verbosity=False, blockhash=None):
        txid = _hash_param(txid, "parameter 1")
        verbosity = int(_typed(verbosity, "verbosity", int, bool))
        if blockhash is not None:
            return self._raw_transaction_in_block(txid, verbosity, blockhash)
        try:
            raw = self._chain.raw_transaction(txid)
            block_hash, _ = self._chain.transaction_status(txid)
        except LookupError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction. "
                                                       "Use gettransaction for wallet transactions.") from None
        if verbosity == 0:
            return raw.hex()
        result = self._tx_json(parse_transaction(raw), raw)
        if block_hash is not None:
            result.update(self._confirmed_fields(block_hash))
        return result

    def _raw_transaction_in_block(self, txid: str, verbosity: int, blockhash) -> str | dict:
        try:
            raw_block = self._chain.block(_hash_param(blockhash, "parameter 3"))
        except LookupError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found") from None
        for raw in block_transactions(raw_block):
            tx = parse_transaction(raw)
            if tx.txid == txid:
                if verbosity == 0:
                    return raw.hex()
                in_active_chain = self._view.best_height(blockhash.lower()) is not None
                return {"in_active_chain": in_active_chain, **self._tx_json(tx, raw),
                        **self._confirmed_fields(blockhash.lower())}
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY,
                       "No such transaction found in the provided block. Use gettransaction for wallet transactions.")

    def rpc_gettxoutproof(self, txids, blockhash=None):
        wanted = [_hash_param(t, "txid") for t in _typed(txids, "txids", list)]
        if len(set(wanted)) != len(wanted):
            raise RpcError(RPC_INVALID_PARAMETER, f"Invalid parameter, duplicated txid: {wanted[-1]}")
        if len(wanted) != 1:
            raise RpcError(RPC_INVALID_PARAMETER, "this node proves exactly one txid per call")
        if blockhash is None:
            try:
                blockhash, _ = self._chain.transaction_status(wanted[0])
            except LookupError:
                blockhash = None
            if blockhash is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not yet in block")
        self._block(blockhash)
        try:
            return self._chain.txout_proof(wanted[0], blockhash.lower()).hex()
        except LookupError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY,
                           "Not all transactions found in specified or retrieved block") from None

    def rpc_testmempoolaccept(self, rawtxs, maxfeerate=DEFAULT_MAX_FEE_RATE_BTC_PER_KVB):
        """Each transaction is checked on its own against the mempool (Core checks a list as a package)."""
        if not 1 <= len(_typed(rawtxs, "rawtxs", list)) <= PACKAGE_COUNT_MAX:
            raise RpcError(RPC_INVALID_PARAMETER, f"Array must contain between 1 and {PACKAGE_COUNT_MAX} transactions.")
        max_sat_per_kvb = _fee_rate_param(maxfeerate)
        decoded = [_decode_tx(hex_string) for hex_string in rawtxs]
        return [self._test_accept_one(raw, tx, max_sat_per_kvb) for raw, tx in decoded]

    def _test_accept_one(self, raw: bytes, tx: ParsedTx, max_sat_per_kvb: int) -> dict:
        result = {"txid": tx.txid, "wtxid": display_hex(sha256d(raw))}
        allowed, reason = self._chain.test_accept(raw)
        if allowed:
            fee = self._view.fee_sats(tx)
            if max_sat_per_kvb and fee > max_sat_per_kvb * tx.vsize // 1000:
                allowed, reason = False, "max-fee-exceeded"
        if not allowed:
            if reason == "bad-txns-inputs-missingorspent":
                return {**result, "allowed": False, "reject-reason": "missing-inputs"}
            if reason == "Transaction outputs already in utxo set":
                reason = "txn-already-known"
            return {**result, "allowed": False, "reject-reason": _short_reason(reason), "reject-details": reason}
        return {**result, "allowed": True, "vsize": tx.vsize,
                "fees": {"base": btc_amount(fee), "effective-feerate": btc_amount(fee * 1000 // tx.vsize),
                         "effective-includes": [result["wtxid"]]}}

    def rpc_sendrawtransaction(self, hexstring, maxfeerate=DEFAULT_MAX_FEE_RATE_BTC_PER_KVB, maxburnamount=0):
        return self._view.send_raw_transaction(hexstring, _fee_rate_param(maxfeerate),
                                               _amount_param(maxburnamount, "maxburnamount"))

    def rpc_estimatesmartfee(self, conf_target, estimate_mode="economical"):
        target = _typed(conf_target, "conf_target", int)
        if not 1 <= target <= CONF_TARGET_MAX:
            raise RpcError(RPC_INVALID_PARAMETER, f"Invalid conf_target, must be between 1 and {CONF_TARGET_MAX}")
        if _typed(estimate_mode, "estimate_mode", str).lower() not in ("unset", "economical", "conservative"):
            raise RpcError(RPC_INVALID_PARAMETER, 'Invalid estimate_mode parameter, must be one of: '
                                                  '"unset", "economical", "conservative"')
        rate = self._chain.estimate_fee_sat_per_vb(target)
        return {"feerate": btc_per_kvb(rate), "blocks": max(target, 2)}

    # --- UTXO set and mining --------------------------------------------------------------------------------

    def rpc_scantxoutset(self, action, scanobjects=None):
        if action == "status":
            return None
        if action == "abort":
            return False
        if action != "start":
            raise RpcError(RPC_INVALID_PARAMETER, "Invalid action '%s'" % action)
        if scanobjects is None:
            raise RpcError(RPC_MISC_ERROR, "scanobjects argument is required for the start action")
        descriptors = [d["desc"] if isinstance(d, dict) and "desc" in d else d
                       for d in _typed(scanobjects, "scanobjects", list)]
        tip = self._chain.tip_height()
        best = self._chain.block_hash(tip)
        unspents, total = [], 0
        for descriptor in descriptors:
            script = script_for_descriptor(_typed(descriptor, "scanobjects", str))
            for coin in self._view.confirmed_utxos(script):
                unspents.append({"txid": coin["txid"], "vout": coin["vout"], "scriptPubKey": script.hex(),
                                 "desc": descriptor.split("#", 1)[0], "amount": btc_amount(coin["value_sats"]),
                                 "coinbase": coin["coinbase"], "height": coin["height"],
                                 "blockhash": coin["block_hash"], "confirmations": tip - coin["height"] + 1})
                total += coin["value_sats"]
        return {"success": True, "height": tip, "bestblock": best, "unspents": unspents,
                "total_amount": btc_amount(total)}

    def _mine(self, count, script: bytes) -> list[str]:
        from services.bitcoin.regtest.chain import MINE_COUNT_MAX
        if not 1 <= _typed(count, "nblocks", int) <= MINE_COUNT_MAX:
            raise RpcError(RPC_INVALID_PARAMETER, f"this node mines 1..{MINE_COUNT_MAX} blocks per call")
        return self._chain.mine(count, script)

    def rpc_generatetoaddress(self, nblocks, address, maxtries=1_000_000):
        try:
            script = script_for_address(_typed(address, "address", str))
        except AddressInvalid:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
        return self._mine(nblocks, script)

    def rpc_generatetodescriptor(self, num_blocks, descriptor, maxtries=1_000_000):
        return self._mine(num_blocks, script_for_descriptor(_typed(descriptor, "descriptor", str)))

    def rpc_sendfromfaucet(self, address, amount):
        """Not in Core: pays `amount` BTC to an address (or a raw()/addr() descriptor) from the faucet coins."""
        text = _typed(address, "address", str)
        try:
            script = script_for_descriptor(text) if "(" in text else script_for_address(text)
        except AddressInvalid:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Invalid address") from None
        return self._chain.send(script, _amount_param(amount, "amount"))

    # --- mempool --------------------------------------------------------------------------------------------

    def _mempool_entry(self, tx: ParsedTx, in_mempool: set[str]) -> dict:
        fee = self._view.fee_sats(tx)
        parents = sorted({display_hex(i.prev_txid_internal) for i in tx.inputs} & in_mempool)
        return {"vsize": tx.vsize, "weight": tx.weight, "fees": {"base": btc_amount(fee)}, "depends": parents,
                "bip125-replaceable": True}

    def rpc_getrawmempool(self, verbose=False, mempool_sequence=False):
        txs = self._view.mempool()
        if not _typed(verbose, "verbose", bool):
            return [tx.txid for tx in txs]
        txids = {tx.txid for tx in txs}
        return {tx.txid: self._mempool_entry(tx, txids) for tx in txs}

    def rpc_getmempoolentry(self, txid):
        txid = _hash_param(txid, "parameter 1")
        txs = {tx.txid: tx for tx in self._view.mempool()}
        if txid not in txs:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        return self._mempool_entry(txs[txid], set(txs))

    def rpc_getmempoolinfo(self):
        txs = self._view.mempool()
        fees = sum(self._view.fee_sats(tx) for tx in txs)
        floor = btc_per_kvb(Decimal(1))
        return {"loaded": True, "size": len(txs), "bytes": sum(tx.vsize for tx in txs),
                "usage": sum(tx.size_bytes for tx in txs), "total_fee": btc_amount(fees), "maxmempool": 300_000_000,
                "mempoolminfee": floor, "minrelaytxfee": floor, "incrementalrelayfee": floor,
                "unbroadcastcount": 0, "fullrbf": True}


def _fee_rate_param(value) -> int:
    """A maxfeerate in BTC/kvB as whole sat/kvB; 0 disables the check, as in Core."""
    sats = _amount_param(value, "maxfeerate")
    if sats > FEE_RATE_LIMIT_BTC_PER_KVB * SATS_PER_BTC:
        raise RpcError(RPC_TYPE_ERROR, "Fee rates larger than or equal to 1BTC/kvB are not accepted")
    return sats


def _rpc_reply(request, methods: CoreMethods) -> tuple[dict | None, int]:
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
    except _chain_error() as raised:
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


def _chain_error() -> type:
    from services.bitcoin.regtest.chain import ChainError
    return ChainError


def _legacy_reply(result, error: RpcError | None, request_id) -> tuple[dict, int]:
    """JSON-RPC 1.0 as Core answers it: both keys present; HTTP 400/404/500 on errors (httprpc.cpp)."""
    if error is None:
        return {"result": result, "error": None, "id": request_id}, 200
    status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(error.code, 500)
    return {"result": None, "error": {"code": error.code, "message": error.message}, "id": request_id}, status


def handle_jsonrpc(body: bytes, methods: CoreMethods) -> tuple[int, str | None]:
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


# --- Esplora REST -----------------------------------------------------------------------------------------------

class EsploraError(Exception):
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
            return "text", self._view.send_raw_transaction(body.decode("ascii", errors="replace").strip())
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


# --- HTTP ---------------------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S
    server_version = "reserve-ledger-regtest-node"

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._send(411, b"Content-Length required\n", "text/plain")
            return None
        if int(length) > REQUEST_BODY_MAX_BYTES:
            self.close_connection = True
            self._send(413, f"request body over {REQUEST_BODY_MAX_BYTES} bytes\n".encode(), "text/plain")
            return None
        return self.rfile.read(int(length))


class _RpcHandler(_Handler):
    def do_GET(self) -> None:
        self._send(405, b"JSONRPC server handles only POST requests", "text/plain")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/":
            self._send(404, b"", "text/plain")
            return
        if not self._authorized():
            return
        body = self._body()
        if body is None:
            return
        status, reply = handle_jsonrpc(body, self.server.methods)
        self._send(status, (reply + "\n").encode() if reply is not None else b"", "application/json")

    def _authorized(self) -> bool:
        """Basic auth against the cookie and the configured user; constant-time compares, as Core does."""
        header = self.headers.get("Authorization", "")
        challenge = {"WWW-Authenticate": 'Basic realm="jsonrpc"'}
        if not header:
            self._send(401, b"", "text/html", challenge)
            return False
        try:
            offered = base64.b64decode(header.removeprefix("Basic ").strip(), validate=True) \
                if header.startswith("Basic ") else b""
        except ValueError:
            offered = b""
        if not any(hmac.compare_digest(offered, allowed) for allowed in self.server.credentials):
            time.sleep(AUTH_FAILURE_DELAY_S)
            self._send(401, b"", "text/html", challenge)
            return False
        return True


class _EsploraHandler(_Handler):
    def do_GET(self) -> None:
        self._answer(lambda routes: routes.get(self.path))

    def do_POST(self) -> None:
        body = self._body()
        if body is not None:
            self._answer(lambda routes: routes.post(self.path, body))

    def _answer(self, route) -> None:
        try:
            kind, body = route(self.server.routes)
        except EsploraError as error:
            self._send(error.status, error.text.encode(), "text/plain")
            return
        except Exception:  # a bug here must not take the server down; the log says where
            log.exception("Esplora %s %s failed", self.command, self.path)
            self._send(500, b"internal error (see the node's log)", "text/plain")
            return
        if kind == "json":
            self._send(200, dumps(body).encode(), "application/json")
        elif kind == "bytes":
            self._send(200, body, "application/octet-stream")
        else:
            self._send(200, body.encode(), "text/plain")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, handler: type, **attributes):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)
        for name, value in attributes.items():
            setattr(self, name, value)


# --- the node ----------------------------------------------------------------------------------------------------

def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise NodeAddressNotLoopback(f"{host!r} is not a loopback address; the regtest node serves loopback only")


class RegtestNode:
    """Both servers over one RegtestChain; the caller owns (and closes) the chain."""

    def __init__(self, chain: "RegtestChain", *, host: str = "127.0.0.1", rpc_port: int = 0, esplora_port: int = 0,
                 rpc_user: str | None = None, rpc_password: str | None = None):
        if (rpc_user is None) != (rpc_password is None):
            raise ValueError("give both an RPC user and a password, or neither (cookie only)")
        if rpc_user is not None and ":" in rpc_user:
            raise ValueError("an RPC user name cannot contain ':'")
        self._host = _loopback_host(host)
        self._ports = (rpc_port, esplora_port)
        self._chain = chain
        self._user_credentials = f"{rpc_user}:{rpc_password}".encode() if rpc_user is not None else None
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    @property
    def cookie_file(self) -> pathlib.Path:
        return pathlib.Path(self._chain.directory) / COOKIE_FILE_NAME

    def _url(self, index: int) -> str:
        host, port = self._servers[index].server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def rpc_url(self) -> str:
        return self._url(0) + "/"

    @property
    def esplora_url(self) -> str:
        return self._url(1)

    def _write_cookie(self) -> bytes:
        """A new random cookie at each start, mode 0600, as Core writes DATADIR/.cookie."""
        credentials = f"{COOKIE_USER}:{secrets.token_hex(32)}"
        self.cookie_file.unlink(missing_ok=True)
        descriptor = os.open(self.cookie_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(credentials)
        return credentials.encode()

    def start(self) -> "RegtestNode":
        assert not self._servers, "started twice"
        credentials = [self._write_cookie()] + ([self._user_credentials] if self._user_credentials else [])
        view = ChainView(self._chain)
        self._servers = [
            _Server(self._host, self._ports[0], _RpcHandler, methods=CoreMethods(view), credentials=credentials),
            _Server(self._host, self._ports[1], _EsploraHandler, routes=EsploraRoutes(view)),
        ]
        for server, name in zip(self._servers, ("rpc", "esplora")):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"regtest-node-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        if not self._servers:
            return  # never started: the cookie (if any) belongs to another node on DIR
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers, self._threads = [], []
        self.cookie_file.unlink(missing_ok=True)

    def __enter__(self) -> "RegtestNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the `reserve-ledger regtest-node` command ------------------------------------------------------------------

def cmd_regtest_node(args) -> int:
    from services.bitcoin.regtest.chain import RegtestChain
    stopping = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stopping.set())
    with RegtestChain(args.dir) as chain:
        node = RegtestNode(chain, host=args.host, rpc_port=args.rpc_port, esplora_port=args.esplora_port,
                           rpc_user=args.rpc_user, rpc_password=args.rpc_password).start()
        try:
            print(f"rpc: {node.rpc_url}\nesplora: {node.esplora_url}\ncookie: {node.cookie_file}\n"
                  f"tip height: {chain.tip_height()}", flush=True)
            while not stopping.wait(0.5):  # runs until SIGTERM or Ctrl-C
                pass
        finally:
            node.stop()
    print("regtest node stopped", flush=True)
    return 0


def add_regtest_node_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "regtest-node", help="serve the embedded regtest chain over a Bitcoin Core JSON-RPC subset and an "
                             "Esplora REST subset (loopback only; docs/REGTEST.md)")
    parser.add_argument("--dir", required=True, help="the chain directory (created with 200 blocks if new)")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--rpc-port", type=int, default=0, help="JSON-RPC port (default: any free port)")
    parser.add_argument("--esplora-port", type=int, default=0, help="Esplora REST port (default: any free port)")
    parser.add_argument("--rpc-user", help="accept this user as well as the cookie DIR/.cookie")
    parser.add_argument("--rpc-password", help="the --rpc-user's password")
    parser.set_defaults(run=_run_checked)


def _run_checked(args) -> int:
    if (args.rpc_user is None) != (args.rpc_password is None):
        raise SystemExit("regtest-node: --rpc-user and --rpc-password go together")
    return cmd_regtest_node(args)
