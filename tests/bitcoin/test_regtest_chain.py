"""The embedded regtest chain: Core's consensus code decides, the chain persists, the mempool refuses bad txs."""

import pytest

from ledger.anchoring import Utxo, parse_transaction, verify_txout_proof
from services.bitcoin.regtest import blocks as regtest
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.errors import BroadcastRejected
from services.bitcoin.regtest.chain import BlockRejected, RegtestChain

from tests.bitcoin.helpers import anchor_spending, funded_anchor_key


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


@pytest.fixture
def funded_key(chain):
    return funded_anchor_key(chain)


def test_a_new_chain_starts_with_mature_faucet_coins(chain):
    assert chain.tip_height() == regtest.BOOTSTRAP_BLOCKS
    assert len(chain.utxos(regtest.ANYONE_CAN_SPEND)) == regtest.BOOTSTRAP_BLOCKS - 99


def test_a_consensus_invalid_block_is_refused_and_not_kept(chain, monkeypatch):
    """process_block says True for a block whose coinbase overpays; the chain must notice the tip did not move."""
    tip = chain.tip_height()
    size = (chain.directory / "blocks.dat").stat().st_size
    monkeypatch.setattr(regtest, "block_subsidy_sats", lambda height: 50 * 10**8 + 1)
    with pytest.raises(BlockRejected, match="not connected"):
        chain.mine(1)
    assert chain.tip_height() == tip
    assert (chain.directory / "blocks.dat").stat().st_size == size


def test_the_chain_survives_a_restart_and_is_shared_by_handles(tmp_path, chain, funded_key):
    tx = anchor_spending(chain, funded_key)
    chain.broadcast(tx.raw)
    with RegtestChain.open(chain.directory) as other:
        assert other.mempool_txids() == [tx.txid]
        (block_hash,) = other.mine(1)
    assert chain.transaction_status(tx.txid) == (block_hash, 1)
    chain.close()
    with RegtestChain.open(chain.directory) as reopened:
        assert reopened.block_hash(reopened.tip_height()) == block_hash
        assert reopened.raw_transaction(tx.txid) == tx.raw
        proof = verify_txout_proof(reopened.txout_proof(tx.txid, block_hash))
        assert proof.block_hash == block_hash


def test_a_torn_last_record_from_a_crash_is_ignored_and_overwritten(chain):
    tip_hash = chain.block_hash(chain.tip_height())
    chain.close()
    with open(chain.directory / "blocks.dat", "ab") as f:
        f.write(b"\x10\x00\x00\x00half a block")
    with RegtestChain.open(chain.directory) as reopened:
        assert reopened.block_hash(reopened.tip_height()) == tip_hash
        reopened.mine(1)
    with RegtestChain.open(chain.directory) as again:
        assert again.tip_height() == regtest.BOOTSTRAP_BLOCKS + 1


def test_a_transaction_with_a_bad_signature_is_refused_by_the_kernels_script_check(chain, funded_key):
    tx = anchor_spending(chain, funded_key)
    raw = bytearray(tx.raw)
    signature_at = raw.index(bytes([0x30, 0x44])) if bytes([0x30, 0x44]) in raw else raw.index(bytes([0x30, 0x45]))
    raw[signature_at + 10] ^= 1
    allowed, reason = chain.test_accept(bytes(raw))
    assert not allowed and reason.startswith("mandatory-script-verify-flag-failed")
    with pytest.raises(BroadcastRejected, match="mandatory-script-verify"):
        chain.broadcast(bytes(raw))
    assert chain.mempool_txids() == []


def test_a_fee_below_the_relay_minimum_is_refused(chain):
    coin = chain.utxos(regtest.ANYONE_CAN_SPEND)[0]
    def spend(fee_sats):
        return regtest.serialize_tx(2, [(bytes.fromhex(coin.txid)[::-1], coin.vout, b"", 0xFFFFFFFD)],
                                    [(coin.value_sats - fee_sats, regtest.ANYONE_CAN_SPEND)], None)
    vsize = parse_transaction(spend(0)).vsize
    assert chain.test_accept(spend(vsize - 1)) == (False, f"min relay fee not met, {vsize - 1} < {vsize}")
    assert chain.test_accept(spend(vsize)) == (True, "")


def test_spending_a_missing_coin_is_refused(chain, funded_key):
    ghost = Utxo("ab" * 32, 0, 100_000)
    tx = anchor_spending(chain, funded_key, coin=ghost)
    assert chain.test_accept(tx.raw) == (False, "bad-txns-inputs-missingorspent")


def test_an_immature_coinbase_cannot_be_spent(chain):
    key = AnchorKey.generate("regtest")
    (block_hash,) = chain.mine(1, payout_script=key.script_pubkey)
    coinbase = parse_transaction(regtest.block_transactions(chain.block(block_hash))[0])
    coin = Utxo(coinbase.txid, 0, coinbase.outputs[0].value_sats)
    assert chain.utxos(key.script_pubkey) == []  # not mature: not offered as spendable
    tx = anchor_spending(chain, key, coin=coin)
    assert chain.test_accept(tx.raw) == (False, "bad-txns-premature-spend-of-coinbase")
    chain.mine(99)
    assert chain.test_accept(tx.raw) == (True, "")


def test_full_rbf_needs_a_higher_fee_and_evicts_the_replaced_transaction(chain, funded_key):
    first = anchor_spending(chain, funded_key, fee_rate=2, size=7)
    chain.broadcast(first.raw)
    same_fee = anchor_spending(chain, funded_key, fee_rate=2, size=8)
    with pytest.raises(BroadcastRejected, match="insufficient fee"):
        chain.broadcast(same_fee.raw)
    higher = anchor_spending(chain, funded_key, fee_rate=4, size=9)
    assert chain.broadcast(higher.raw) == higher.txid
    assert chain.mempool_txids() == [higher.txid]
    with pytest.raises(LookupError):
        chain.transaction_status(first.txid)


def test_resending_a_known_transaction_is_not_an_error(chain, funded_key):
    tx = anchor_spending(chain, funded_key)
    assert chain.broadcast(tx.raw) == tx.txid
    assert chain.broadcast(tx.raw) == tx.txid
    chain.mine(1)
    assert chain.broadcast(tx.raw) == tx.txid
    assert chain.test_accept(tx.raw) == (False, "Transaction outputs already in utxo set")


def test_a_reorg_puts_transactions_back_in_the_mempool_unless_dropped(chain, funded_key):
    tx = anchor_spending(chain, funded_key)
    chain.broadcast(tx.raw)
    chain.mine(2)
    new_tip_hashes = chain.reorg(2)
    assert len(new_tip_hashes) == 3 and chain.block_hash(chain.tip_height()) == new_tip_hashes[-1]
    assert chain.transaction_status(tx.txid) == (None, 0)
    chain.mine(1)
    assert chain.transaction_status(tx.txid)[1] == 1
    chain.reorg(1, drop_transactions=True)
    with pytest.raises(LookupError):
        chain.transaction_status(tx.txid)


def test_coins_at_an_address_two_accounts_register_back_only_one_of_them(chain):
    """Proof of reserves on a real chain: both accounts would 'match' if the shared coins counted twice."""
    from ledger.audit import Findings
    from services.audit.chain import reconcile_reserves
    key = funded_anchor_key(chain)
    account = {"custodian": "C", "descriptor": "", "addresses": [key.address], "balance_sats": 100_000}
    accounts = [{**account, "account_id": "vault-a"}, {**account, "account_id": "vault-b"}]
    findings = Findings()
    result = reconcile_reserves(accounts, chain, findings)
    assert [row["status"] for row in result["accounts"]] == ["match", "match"]
    assert result["ledger_total_sats"] == 200_000 and result["onchain_total_sats"] == 100_000
    assert sorted(f.where for f in findings.kept) == ["account vault-a", "account vault-b"]
    assert all("the same coins would count for both" in f.message for f in findings.kept)
