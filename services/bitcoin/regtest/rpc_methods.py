"""The Bitcoin Core JSON-RPC methods the regtest node answers, with Core's codes and messages (docs/REGTEST.md)."""

import inspect
import re
import struct
from decimal import Decimal

from ledger.anchoring import ParsedTx, display_hex, parse_transaction, sha256d
from services.bitcoin.addresses import AddressInvalid, address_of_script_pubkey, script_pubkey_of_address, \
    witness_program_of
from services.bitcoin.errors import BroadcastRejected
from services.bitcoin.regtest.blocks import block_transactions
from services.bitcoin.regtest.chain import MINE_COUNT_MAX
from services.bitcoin.regtest.chain_view import ChainView, coinbase_height, is_coinbase
from services.bitcoin.regtest.rpc_server import (
    DEFAULT_MAX_FEE_RATE_BTC_PER_KVB, DEFAULT_MAX_FEE_SAT_PER_KVB, RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER,
    RPC_METHOD_NOT_FOUND, RPC_MISC_ERROR, RPC_VERIFY_ALREADY_IN_CHAIN, RPC_VERIFY_ERROR, RpcError,
    amount_param, btc_amount, btc_per_kvb, decode_tx_param, fee_rate_param, hash_param, short_reason, typed_param)

NETWORK = "regtest"
PACKAGE_COUNT_MAX = 25                # Core's MAX_PACKAGE_COUNT for testmempoolaccept
CONF_TARGET_MAX = 1_008
WITNESS_KINDS = {(0, 20): "witness_v0_keyhash", (0, 32): "witness_v0_scripthash", (1, 32): "witness_v1_taproot"}


def script_for_address(address: str) -> bytes:
    """A regtest address's output script; AddressInvalid for anything else (Core refuses other networks')."""
    return script_pubkey_of_address(address, NETWORK)


def script_type_and_address(script: bytes) -> tuple[str, str | None]:
    """Core's scriptPubKey "type" and the regtest address, for the common output kinds."""
    if script[:1] == b"\x6a":
        return "nulldata", None
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash", address_of_script_pubkey(script, NETWORK)
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22:] == b"\x87":
        return "scripthash", address_of_script_pubkey(script, NETWORK)
    witness = witness_program_of(script)
    if witness is not None:
        version, program = witness
        return WITNESS_KINDS.get((version, len(program)), "witness_unknown"), address_of_script_pubkey(script, NETWORK)
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


def send_raw_transaction(view: ChainView, hex_string, max_fee_sat_per_kvb: int = DEFAULT_MAX_FEE_SAT_PER_KVB,
                         max_burn_sats: int = 0) -> str:
    """Core's sendrawtransaction: the checks in Core's order, errors with Core's codes and messages."""
    raw, tx = decode_tx_param(hex_string)
    if any(out.script_pubkey[:1] == b"\x6a" and out.value_sats > max_burn_sats for out in tx.outputs):
        raise RpcError(RPC_VERIFY_ERROR, "Unspendable output exceeds maximum configured by user (maxburnamount)")
    try:
        block_hash, _ = view.chain.transaction_status(tx.txid)
    except LookupError:
        block_hash = None
    if block_hash is not None:
        raise RpcError(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set")
    try:
        fee = view.fee_sats(tx)
    except LookupError:
        fee = None  # missing inputs: the chain says so below
    if fee is not None and max_fee_sat_per_kvb and fee > max_fee_sat_per_kvb * tx.vsize // 1000:
        raise RpcError(RPC_VERIFY_ERROR, "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)")
    try:
        return view.chain.broadcast(raw)
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
            return self._chain.block_hash(typed_param(height, "height", int))
        except LookupError:
            raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range") from None

    def _block(self, blockhash) -> bytes:
        try:
            return self._chain.block(hash_param(blockhash, "blockhash"))
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
        if not typed_param(verbose, "verbose", bool):
            return raw[:80].hex()
        return self._header_json(blockhash.lower(), raw)

    def rpc_getblock(self, blockhash, verbosity=1):
        raw = self._block(blockhash)
        level = int(typed_param(verbosity, "verbosity", int, bool))
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
        txid = hash_param(txid, "parameter 1")
        verbosity = int(typed_param(verbosity, "verbosity", int, bool))
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
            raw_block = self._chain.block(hash_param(blockhash, "parameter 3"))
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
        wanted = [hash_param(t, "txid") for t in typed_param(txids, "txids", list)]
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
        if not 1 <= len(typed_param(rawtxs, "rawtxs", list)) <= PACKAGE_COUNT_MAX:
            raise RpcError(RPC_INVALID_PARAMETER, f"Array must contain between 1 and {PACKAGE_COUNT_MAX} transactions.")
        max_sat_per_kvb = fee_rate_param(maxfeerate)
        decoded = [decode_tx_param(hex_string) for hex_string in rawtxs]
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
            return {**result, "allowed": False, "reject-reason": short_reason(reason), "reject-details": reason}
        return {**result, "allowed": True, "vsize": tx.vsize,
                "fees": {"base": btc_amount(fee), "effective-feerate": btc_amount(fee * 1000 // tx.vsize),
                         "effective-includes": [result["wtxid"]]}}

    def rpc_sendrawtransaction(self, hexstring, maxfeerate=DEFAULT_MAX_FEE_RATE_BTC_PER_KVB, maxburnamount=0):
        return send_raw_transaction(self._view, hexstring, fee_rate_param(maxfeerate),
                                               amount_param(maxburnamount, "maxburnamount"))

    def rpc_estimatesmartfee(self, conf_target, estimate_mode="economical"):
        target = typed_param(conf_target, "conf_target", int)
        if not 1 <= target <= CONF_TARGET_MAX:
            raise RpcError(RPC_INVALID_PARAMETER, f"Invalid conf_target, must be between 1 and {CONF_TARGET_MAX}")
        if typed_param(estimate_mode, "estimate_mode", str).lower() not in ("unset", "economical", "conservative"):
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
                       for d in typed_param(scanobjects, "scanobjects", list)]
        tip = self._chain.tip_height()
        best = self._chain.block_hash(tip)
        unspents, total = [], 0
        for descriptor in descriptors:
            script = script_for_descriptor(typed_param(descriptor, "scanobjects", str))
            for coin in self._view.confirmed_utxos(script):
                unspents.append({"txid": coin["txid"], "vout": coin["vout"], "scriptPubKey": script.hex(),
                                 "desc": descriptor.split("#", 1)[0], "amount": btc_amount(coin["value_sats"]),
                                 "coinbase": coin["coinbase"], "height": coin["height"],
                                 "blockhash": coin["block_hash"], "confirmations": tip - coin["height"] + 1})
                total += coin["value_sats"]
        return {"success": True, "height": tip, "bestblock": best, "unspents": unspents,
                "total_amount": btc_amount(total)}

    def _mine(self, count, script: bytes) -> list[str]:
        if not 1 <= typed_param(count, "nblocks", int) <= MINE_COUNT_MAX:
            raise RpcError(RPC_INVALID_PARAMETER, f"this node mines 1..{MINE_COUNT_MAX} blocks per call")
        return self._chain.mine(count, script)

    def rpc_generatetoaddress(self, nblocks, address, maxtries=1_000_000):
        try:
            script = script_for_address(typed_param(address, "address", str))
        except AddressInvalid:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
        return self._mine(nblocks, script)

    def rpc_generatetodescriptor(self, num_blocks, descriptor, maxtries=1_000_000):
        return self._mine(num_blocks, script_for_descriptor(typed_param(descriptor, "descriptor", str)))

    def rpc_sendfromfaucet(self, address, amount):
        """Not in Core: pays `amount` BTC to an address (or a raw()/addr() descriptor) from the faucet coins."""
        text = typed_param(address, "address", str)
        try:
            script = script_for_descriptor(text) if "(" in text else script_for_address(text)
        except AddressInvalid:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Invalid address") from None
        return self._chain.send(script, amount_param(amount, "amount"))

    # --- mempool --------------------------------------------------------------------------------------------

    def _mempool_entry(self, tx: ParsedTx, in_mempool: set[str]) -> dict:
        fee = self._view.fee_sats(tx)
        parents = sorted({display_hex(i.prev_txid_internal) for i in tx.inputs} & in_mempool)
        return {"vsize": tx.vsize, "weight": tx.weight, "fees": {"base": btc_amount(fee)}, "depends": parents,
                "bip125-replaceable": True}

    def rpc_getrawmempool(self, verbose=False, mempool_sequence=False):
        txs = self._view.mempool()
        if not typed_param(verbose, "verbose", bool):
            return [tx.txid for tx in txs]
        txids = {tx.txid for tx in txs}
        return {tx.txid: self._mempool_entry(tx, txids) for tx in txs}

    def rpc_getmempoolentry(self, txid):
        txid = hash_param(txid, "parameter 1")
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
