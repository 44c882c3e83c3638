"""The chain of anchor transactions, found on chain from the anchor wallet's genesis coin: the embedded chain
(forward, through its spenders), Bitcoin Core's RPC (backward, from scantxoutset through each input) and
Esplora (forward, `GET /tx/:txid/outspend/:vout`), the last two over real HTTP against the regtest node.
Every backend must give the same transactions, in chain order."""

import pytest

from bitcoinutils.script import Script
from bitcoinutils.transactions import Transaction, TxInput, TxOutput, TxWitnessInput

from ledger.anchoring import AnchorChainBroken, Outpoint, encode_payload, parse_transaction
from services.bitcoin.anchor_tx import AnchorKey, build_anchor_tx, minimal_der_signature
from services.bitcoin.core_rpc import CoreRpcClient
from services.bitcoin.esplora import EsploraClient
from services.bitcoin.regtest.node import RegtestNode
from tests.bitcoin.helpers import ROOT, anchor_spending, funded_anchor_key


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


def _rotated_chain(chain):
    """Two anchors of key A, a third signed by A paying its change to key B (a rotation), a fourth of B."""
    old, new = funded_anchor_key(chain), AnchorKey.generate("regtest")
    genesis, raws = _anchor_chain(chain, old, 2)
    coin = chain.utxos(old.script_pubkey)[0]
    rotation = build_anchor_tx(coin, old, encode_payload(3, ROOT), 1, 20_000, chain.tip_height(),
                               change_public_key=new.public_key)
    chain.broadcast(rotation.raw)
    chain.mine(1)
    after = anchor_spending(chain, new, chain.utxos(new.script_pubkey)[0], size=4)
    chain.broadcast(after.raw)
    chain.mine(1)
    return genesis, [*raws, rotation.raw, after.raw], new


def test_every_backend_follows_the_chain_across_a_wallet_rotation(chain, backend):
    """An anchor signed by the old key whose change pays a new key continues the chain (Core, which walks back
    from unspent coins, is told the new wallet's script, as the audit tells it from the bundle)."""
    genesis, raws, new = _rotated_chain(chain)
    assert backend.anchor_chain(genesis, [new.script_pubkey]) == raws
    if isinstance(backend, CoreRpcClient):
        with pytest.raises(AnchorChainBroken):  # a move the bundle hides leaves no unspent coin to walk back from
            backend.anchor_chain(genesis)


def test_a_spend_of_the_anchor_change_that_is_no_anchor_ends_the_chain(chain, backend):
    """Only an anchor (the payload and one coin) may move the chain to another script: a plain payment of the
    change to another address breaks it."""
    key, other = funded_anchor_key(chain), AnchorKey.generate("regtest")
    genesis, _ = _anchor_chain(chain, key, 1)
    coin = chain.utxos(key.script_pubkey)[0]
    tx = Transaction([TxInput(coin.txid, coin.vout)], [TxOutput(coin.value_sats - 500, Script(
        ["OP_0", other.script_pubkey[2:].hex()]))], has_segwit=True)
    script_code = Script(["OP_DUP", "OP_HASH160", key.script_pubkey[2:].hex(), "OP_EQUALVERIFY", "OP_CHECKSIG"])
    signature = minimal_der_signature(key.signing_key.sign_segwit_input(tx, 0, script_code, coin.value_sats))
    tx.witnesses = [TxWitnessInput([signature, key.public_key.hex()])]
    chain.broadcast(tx.to_bytes(True))
    chain.mine(1)
    with pytest.raises(AnchorChainBroken):
        backend.anchor_chain(genesis, [other.script_pubkey])


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
