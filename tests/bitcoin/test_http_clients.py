"""The production chain clients (Core JSON-RPC, Esplora) over real HTTP against the embedded regtest node.

Every ChainBackend method runs through each client with a real, signed anchor transaction; the error paths
(refusals with the node's reason, unknown items, wrong credentials, a closed port, a silent server) must
surface as the errors the anchor worker handles.
"""

import base64
import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal

import pytest

from ledger.anchoring import Utxo, verify_txout_proof
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.core_rpc import CoreRpcClient
from services.bitcoin.errors import BackendAuthFailed, BroadcastRejected
from services.bitcoin.esplora import EsploraClient
from services.bitcoin.regtest.chain import RegtestChain
from services.bitcoin.regtest.node import NodeAddressNotLoopback, RegtestNode

from tests.bitcoin.helpers import anchor_spending, funded_anchor_key
UNKNOWN_HASH = "ab" * 32
CLIENTS = ("core-cookie", "core-user", "esplora")


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


@pytest.fixture
def node(chain):
    with RegtestNode(chain, rpc_user="auditor", rpc_password="s3cret") as node:
        yield node


def _client(kind: str, node: RegtestNode, timeout_s: float = 10.0):
    if kind == "core-cookie":
        return CoreRpcClient(node.rpc_url, cookie_file=str(node.cookie_file), timeout_s=timeout_s)
    if kind == "core-user":
        return CoreRpcClient(node.rpc_url, user="auditor", password="s3cret", timeout_s=timeout_s)
    return EsploraClient(node.esplora_url, timeout_s=timeout_s)


@pytest.fixture(params=CLIENTS)
def client(request, node):
    return _client(request.param, node)


@pytest.fixture
def funded_key(chain):
    return funded_anchor_key(chain)


def _rpc(node, payload, credentials=b"auditor:s3cret", method="POST"):
    """(HTTP status, parsed body or None) of one raw JSON-RPC exchange."""
    headers = {"Content-Type": "application/json"}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    data = json.dumps(payload).encode() if method == "POST" else None
    request = urllib.request.Request(node.rpc_url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, body


def _esplora(node, path):
    try:
        with urllib.request.urlopen(node.esplora_url + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_every_backend_method_works_over_http_with_a_realanchor_spending(chain, node, client, funded_key):
    """broadcast -> mempool -> mined -> confirmations grow; the proof verifies and matches the header."""
    assert client.tip_height() == chain.tip_height()
    assert client.utxos(funded_key.script_pubkey) == chain.utxos(funded_key.script_pubkey)
    chain.set_fee_estimate(Decimal("2.5"))
    assert client.estimate_fee_sat_per_vb(6) == Decimal("2.5")
    tx = anchor_spending(chain, funded_key)
    assert client.test_accept(tx.raw)[0] is True
    assert client.broadcast(tx.raw) == tx.txid
    assert chain.mempool_txids() == [tx.txid]
    assert client.transaction_status(tx.txid) == (None, 0)
    assert client.raw_transaction(tx.txid) == tx.raw
    assert client.broadcast(tx.raw) == tx.txid  # a mempool duplicate is not an error
    (block_hash,) = chain.mine(1)
    assert client.transaction_status(tx.txid) == (block_hash, 1)
    assert client.block_hash(client.tip_height()) == block_hash
    header = client.block_header(block_hash)
    assert header == chain.block_header(block_hash)
    proof = verify_txout_proof(client.txout_proof(tx.txid, block_hash))
    assert proof.header == header and proof.block_hash == block_hash
    assert [txid for txid, _ in proof.matched] == [bytes.fromhex(tx.txid)[::-1]]
    chain.mine(2)
    assert client.transaction_status(tx.txid) == (block_hash, 3)
    assert client.broadcast(tx.raw) == tx.txid  # already confirmed: still not an error
    assert client.utxos(funded_key.script_pubkey) == [Utxo(tx.txid, 1, tx.change_value_sats)]


def test_unknown_items_raise_lookup_error(chain, node, client):
    tip_hash = chain.block_hash(chain.tip_height())
    for probe in (lambda: client.transaction_status(UNKNOWN_HASH), lambda: client.raw_transaction(UNKNOWN_HASH),
                  lambda: client.block_header(UNKNOWN_HASH), lambda: client.block_hash(chain.tip_height() + 1),
                  lambda: client.txout_proof(UNKNOWN_HASH, tip_hash)):
        with pytest.raises(LookupError):
            probe()


def test_a_bad_signature_is_refused_with_the_kernels_reason(chain, node, client, funded_key):
    raw = bytearray(anchor_spending(chain, funded_key).raw)
    signature_at = raw.index(bytes([0x30, 0x44])) if bytes([0x30, 0x44]) in raw else raw.index(bytes([0x30, 0x45]))
    raw[signature_at + 10] ^= 1
    if not isinstance(client, EsploraClient):
        assert client.test_accept(bytes(raw)) == (False, "mandatory-script-verify-flag-failed")
    with pytest.raises(BroadcastRejected, match="mandatory-script-verify-flag-failed") as refused:
        client.broadcast(bytes(raw))
    assert refused.value.code == -26
    assert chain.mempool_txids() == []


def test_a_replacement_without_a_higher_fee_and_a_double_spend_of_a_missing_coin_are_refused(
        chain, node, client, funded_key):
    first = anchor_spending(chain, funded_key, fee_rate=2, size=7)
    assert client.broadcast(first.raw) == first.txid
    same_fee = anchor_spending(chain, funded_key, fee_rate=2, size=8)
    with pytest.raises(BroadcastRejected, match="insufficient fee") as refused:
        client.broadcast(same_fee.raw)
    assert refused.value.code == -26
    ghost = anchor_spending(chain, funded_key, coin=Utxo(UNKNOWN_HASH, 0, 100_000))
    with pytest.raises(BroadcastRejected, match="bad-txns-inputs-missingorspent") as refused:
        client.broadcast(ghost.raw)
    assert refused.value.code == -25
    if not isinstance(client, EsploraClient):
        assert client.test_accept(same_fee.raw) == (False, "insufficient fee")
        assert client.test_accept(ghost.raw) == (False, "missing-inputs")
        assert client.test_accept(b"\x02\x00\x00\x00garbage") == (
            False, "TX decode failed. Make sure the tx has at least one input.")
    with pytest.raises(BroadcastRejected) as refused:
        client.broadcast(b"\x02\x00\x00\x00garbage")
    assert refused.value.code == -22
    assert chain.mempool_txids() == [first.txid]


def test_a_reorg_shows_through_both_apis(chain, node, funded_key):
    tx = anchor_spending(chain, funded_key)
    chain.broadcast(tx.raw)
    (stale,) = chain.mine(1)
    chain.reorg(1, drop_transactions=True)
    for kind in CLIENTS:
        with pytest.raises(LookupError):
            _client(kind, node).transaction_status(tx.txid)
    status, body = _rpc(node, {"id": 1, "method": "getblockheader", "params": [stale]})
    assert status == 200 and json.loads(body)["result"]["confirmations"] == -1
    assert json.loads(_esplora(node, f"/block/{stale}/status")[1]) == {
        "in_best_chain": False, "height": None, "next_best": None}


def test_wrong_or_missing_credentials_are_refused(chain, node, tmp_path):
    wrong_cookie = tmp_path / "wrong.cookie"
    wrong_cookie.write_text("__cookie__:" + "00" * 32)
    for client in (CoreRpcClient(node.rpc_url, user="auditor", password="guess"),
                   CoreRpcClient(node.rpc_url, cookie_file=str(wrong_cookie))):
        with pytest.raises(BackendAuthFailed):
            client.tip_height()
    status, _ = _rpc(node, {"id": 1, "method": "getblockcount"}, credentials=None)
    assert status == 401


def test_the_cookie_is_private_and_new_at_each_start(chain):
    with RegtestNode(chain) as first:
        cookie = first.cookie_file.read_text()
        assert cookie.startswith("__cookie__:") and len(cookie) == len("__cookie__:") + 64
        assert stat.S_IMODE(first.cookie_file.stat().st_mode) == 0o600
    assert not first.cookie_file.exists()
    with RegtestNode(chain) as second:
        assert second.cookie_file.read_text() != cookie
        assert CoreRpcClient(second.rpc_url, cookie_file=str(second.cookie_file)).tip_height() == chain.tip_height()


def test_the_node_refuses_non_loopback_addresses(chain):
    for host in ("0.0.0.0", "192.0.2.1", "example.com"):
        with pytest.raises(NodeAddressNotLoopback):
            RegtestNode(chain, host=host)


def test_a_closed_port_and_a_silent_server_raise_os_errors():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_url = "http://127.0.0.1:%d" % closed.getsockname()[1]
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        for url, error in ((closed_url, OSError), (silent_url, TimeoutError)):
            for client in (CoreRpcClient(url + "/", user="u", password="p", timeout_s=0.5),
                           EsploraClient(url, timeout_s=0.5)):
                started = time.monotonic()
                with pytest.raises(error):
                    client.tip_height()
                assert time.monotonic() - started < 5


def test_json_rpc_replies_have_cores_shapes_codes_and_exact_amounts(chain, node, funded_key):
    status, body = _rpc(node, {"jsonrpc": "1.0", "id": "a", "method": "nosuchmethod", "params": []})
    assert status == 404 and json.loads(body) == {
        "result": None, "error": {"code": -32601, "message": "Method not found"}, "id": "a"}
    status, body = _rpc(node, {"id": 2, "method": "getblockheader", "params": [UNKNOWN_HASH]})
    assert status == 500 and json.loads(body)["error"] == {"code": -5, "message": "Block not found"}
    status, body = _rpc(node, {"jsonrpc": "2.0", "id": 3, "method": "getblockhash", "params": [10**6]})
    assert status == 200 and json.loads(body) == {
        "jsonrpc": "2.0", "error": {"code": -8, "message": "Block height out of range"}, "id": 3}
    assert _rpc(node, {"jsonrpc": "2.0", "method": "getblockcount"}) == (204, b"")
    status, body = _rpc(node, [{"id": 1, "method": "getblockcount"}, {"jsonrpc": "2.0", "id": 2,
                                                                       "method": "getbestblockhash"}])
    assert status == 200 and [r["result"] for r in json.loads(body)] == [
        chain.tip_height(), chain.block_hash(chain.tip_height())]
    assert _rpc(node, None, method="GET")[0] == 405
    scan = {"action": "start", "scanobjects": [f"raw({funded_key.script_pubkey.hex()})"]}
    status, body = _rpc(node, {"id": 4, "method": "scantxoutset", "params": scan})
    assert status == 200 and b'"amount": 0.00100000' in body and b'"total_amount": 0.00100000' in body
    status, body = _rpc(node, {"id": 5, "method": "estimatesmartfee", "params": [3]})
    assert b'"feerate": 0.00001000' in body
    tx = anchor_spending(chain, funded_key, fee_rate=1)  # 0.00001000 BTC/kvB, over a cap of half that
    status, body = _rpc(node, {"id": 6, "method": "sendrawtransaction", "params": [tx.raw.hex(), "0.000005"]})
    assert status == 500 and json.loads(body)["error"] == {
        "code": -25, "message": "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)"}
    assert chain.mempool_txids() == []


def test_esplora_paths_answer_as_electrs_does(chain, node, funded_key):
    tx = anchor_spending(chain, funded_key)
    assert _esplora(node, "/blocks/tip/height") == (200, str(chain.tip_height()))
    assert _esplora(node, f"/tx/{UNKNOWN_HASH}/status") == (200, '{"confirmed": false}')
    assert _esplora(node, "/no/such/path")[0] == 404
    assert _esplora(node, "/block/nothex/header") == (400, "Invalid hex string")
    request = urllib.request.Request(node.esplora_url + "/tx", data=tx.raw.hex().encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read().decode() == tx.txid
    utxos = json.loads(_esplora(node, f"/address/{funded_key.address}/utxo")[1])
    assert utxos == [{"txid": tx.txid, "vout": 1, "status": {"confirmed": False}, "value": tx.change_value_sats}]
    estimates = json.loads(_esplora(node, "/fee-estimates")[1])
    assert set(estimates) >= {"1", "6", "144", "1008"}


def test_the_regtest_node_command_serves_until_sigterm(tmp_path):
    command = pathlib.Path(sys.executable).with_name("reserve-ledger")
    process = subprocess.Popen([str(command), "regtest-node", "--dir", str(tmp_path / "chain"), "--create"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = {}
        while "cookie" not in lines:
            line = process.stdout.readline()
            assert line, f"regtest-node exited: {process.stderr.read()[-2000:]}"
            key, _, value = line.partition(": ")
            lines[key] = value.strip()
        client = CoreRpcClient(lines["rpc"], cookie_file=lines["cookie"])
        assert client.tip_height() == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert not os.path.exists(lines["cookie"])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_immature_coinbase_outputs_are_not_offered_as_spendable(chain, node, client):
    """Core's scantxoutset lists them; a worker funding an anchor from one would be refused."""
    key = AnchorKey.generate("regtest")
    chain.mine(1, payout_script=key.script_pubkey)
    assert client.utxos(key.script_pubkey) == []
    chain.mine(99)
    assert len(client.utxos(key.script_pubkey)) == 1


@pytest.mark.parametrize("answer", [b"garbage\r\n\r\n",
                                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n\r\n<html></ht",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>"])
def test_a_server_that_is_not_a_node_raises_os_error(answer):
    """A proxy's error page, a truncated body or a non-HTTP service must not escape as ValueError."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = "http://127.0.0.1:%d" % server.getsockname()[1]

        def answer_each():
            for _ in range(2):
                connection, _ = server.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(answer)
        responder = threading.Thread(target=answer_each, daemon=True)
        responder.start()
        for client in (CoreRpcClient(url + "/", user="u", password="p", timeout_s=2),
                       EsploraClient(url, timeout_s=2)):
            with pytest.raises(OSError):
                client.tip_height()
        responder.join(timeout=5)
