"""The chain of anchor transactions, found on chain from the anchor wallet's genesis coin: the embedded chain
(forward, through its spenders), Bitcoin Core's RPC (backward, from scantxoutset through each input) and
Esplora (forward, `GET /tx/:txid/outspend/:vout`), the last two over real HTTP against the regtest node.
Every backend must give the same transactions, in chain order."""

import pytest

from ledger.anchoring import Outpoint, parse_transaction
from services.bitcoin.core_rpc import CoreRpcClient
from services.bitcoin.esplora import EsploraClient
from services.bitcoin.regtest.chain import RegtestChain
from services.bitcoin.regtest.node import RegtestNode
from tests.bitcoin.helpers import anchor_spending, funded_anchor_key

BACKENDS = ("embedded", "core", "esplora")


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


@pytest.fixture(params=BACKENDS)
def backend(request, chain):
    if request.param == "embedded":
        yield chain
        return
    with RegtestNode(chain) as node:
        yield (CoreRpcClient(node.rpc_url, cookie_file=str(node.cookie_file)) if request.param == "core"
               else EsploraClient(node.esplora_url))


def _anchor_chain(chain, key, count: int) -> tuple[Outpoint, list[bytes]]:
    """`count` anchors, each spending the previous one's change, each mined; returns the genesis and the txs."""
    coin = chain.utxos(key.script_pubkey)[0]
    genesis, raws = Outpoint(coin.txid, coin.vout), []
    for size in range(1, count + 1):
        tx = anchor_spending(chain, key, coin, size=size)
        chain.broadcast(tx.raw)
        chain.mine(1)
        raws.append(tx.raw)
        coin = next(c for c in chain.utxos(key.script_pubkey) if c.txid == tx.txid)
    return genesis, raws


def test_every_backend_finds_the_same_anchors_in_chain_order(chain, backend):
    key = funded_anchor_key(chain)
    genesis, raws = _anchor_chain(chain, key, 3)
    chain.send(key.script_pubkey, 5_000)   # another coin at the anchor address descends from nothing
    chain.mine(1)
    assert backend.anchor_chain(genesis) == raws


def test_an_unspent_genesis_has_no_anchors(chain, backend):
    key = funded_anchor_key(chain)
    coin = chain.utxos(key.script_pubkey)[0]
    assert backend.anchor_chain(Outpoint(coin.txid, coin.vout)) == []


def test_an_unconfirmed_anchor_is_not_yet_on_the_chain(chain, backend):
    key = funded_anchor_key(chain)
    genesis, raws = _anchor_chain(chain, key, 1)
    coin = chain.utxos(key.script_pubkey)[0]
    chain.broadcast(anchor_spending(chain, key, coin, size=2).raw)   # in the mempool only
    assert backend.anchor_chain(genesis) == raws


def test_an_unknown_genesis_is_a_lookup_error(chain, backend):
    with pytest.raises(LookupError):
        backend.anchor_chain(Outpoint("ab" * 32, 0))


def test_esplora_outspend_answers_like_electrs(chain):
    """Unspent, spent in the mempool (unconfirmed), spent in a block (with the input index)."""
    key = funded_anchor_key(chain)
    coin = chain.utxos(key.script_pubkey)[0]
    with RegtestNode(chain) as node:
        esplora = EsploraClient(node.esplora_url)
        read = lambda: esplora._json(f"/tx/{coin.txid}/outspend/{coin.vout}")  # noqa: E731
        assert read() == {"spent": False}
        tx = anchor_spending(chain, key, coin)
        chain.broadcast(tx.raw)
        assert read() == {"spent": True, "txid": tx.txid, "vin": 0, "status": {"confirmed": False}}
        assert esplora.outspend(Outpoint(coin.txid, coin.vout)) is None   # only confirmed spends continue the chain
        chain.mine(1)
        answer = read()
        assert answer["txid"] == tx.txid and answer["vin"] == 0 and answer["status"]["confirmed"]
        assert esplora.outspend(Outpoint(coin.txid, coin.vout)) == tx.txid == parse_transaction(tx.raw).txid
