"""The live reserves monitor on the embedded regtest chain (blocks validated by libbitcoinkernel): an unrecorded
movement is recorded as a discrepancy in the block that confirms it, once; a custody change that names its
txid explains exactly its amounts; the alert follows the best chain across reorgs; and the same holds through
the Bitcoin Core RPC and Esplora clients over real HTTP."""

import contextlib
import time

import pytest

from ledger import commands as cmd
from ledger import monitor
from ledger.anchoring import parse_transaction
from ledger.limits import SATS_PER_BTC as BTC
from services.bitcoin.core_rpc import CoreRpcClient
from services.bitcoin.esplora import EsploraClient
from services.bitcoin.regtest.chain import RegtestChain
from services.bitcoin.regtest.node import RegtestNode
from services.monitor.worker import ReservesMonitor
from tests.bitcoin.monitor_helpers import ALICE, BOB, FEE_SATS, Books, script_pubkey, spend

COLD, WARM = 1, 2
HALF_BTC = BTC // 2


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


@pytest.fixture
def books(tmp_path):
    books = Books(tmp_path / "data")
    books.open("cold-1", COLD)
    books.open("warm-1", WARM, "warm")
    books.purchase("cold-1", 4 * BTC)
    yield books
    books.close()


def _monitor(books, backend) -> ReservesMonitor:
    return ReservesMonitor(books.ledger, backend, books.run)


def _fund_cold(chain) -> None:
    """The purchase's coins arrive (its record names no txid: the books equal the chain, so no alert)."""
    chain.send(script_pubkey(COLD), 4 * BTC)
    chain.mine(1)


def _move_half_to_warm(chain) -> str:
    """0.5 BTC leaves cold-1 for warm-1 with no ledger event: the movement the monitor must catch."""
    coin = chain.utxos(script_pubkey(COLD))[0]
    raw = spend(chain, COLD, coin, [(HALF_BTC, script_pubkey(WARM)),
                                    (coin.value_sats - HALF_BTC - FEE_SATS, script_pubkey(COLD))])
    return chain.broadcast(raw)


def test_an_unrecorded_movement_is_caught_in_the_block_that_confirms_it(chain, books):
    """Both sides of the movement are recorded at that block's height and hash with the txid, the coins on chain
    and the ledger's balance; funding that matches the books raised nothing. The latency from the block being
    mined to its alert being recorded is printed (the figure the demo reports)."""
    watcher = _monitor(books, chain)
    watcher.step()
    _fund_cold(chain)
    watcher.step()
    assert books.discrepancies() == []
    txid = _move_half_to_warm(chain)
    (block_hash,) = chain.mine(1)
    mined_s = time.perf_counter()
    watcher.step()
    latency_ms = (time.perf_counter() - mined_s) * 1000
    found = {d.account_id: d for d in books.discrepancies()}
    assert set(found) == {"cold-1", "warm-1"}
    for d in found.values():
        assert (d.block_height, d.block_hash, d.txids, d.finding) == (chain.tip_height(), block_hash, (txid,),
                                                                      monitor.FINDING_UNRECORDED)
    assert (found["cold-1"].movement_sats, found["cold-1"].onchain_sats, found["cold-1"].ledger_sats) == (
        -HALF_BTC - FEE_SATS, 4 * BTC - HALF_BTC - FEE_SATS, 4 * BTC)
    assert (found["warm-1"].movement_sats, found["warm-1"].onchain_sats, found["warm-1"].ledger_sats) == (
        HALF_BTC, HALF_BTC, 0)
    print(f"\nblock mined -> alert recorded: {latency_ms:.0f} ms (one monitor step on the embedded chain)")


def test_a_restarted_monitor_and_a_second_replica_record_nothing_twice(chain, books):
    """Two monitors on one ledger (replicas) and a third started afterwards (a restart) see the same block:
    each discrepancy is recorded once."""
    first, second = _monitor(books, chain), _monitor(books, chain)
    _fund_cold(chain)
    first.step()
    second.step()
    _move_half_to_warm(chain)
    chain.mine(1)
    first.step()
    second.step()
    _monitor(books, chain).step()
    assert len(books.discrepancies()) == 2
    assert books.ledger.store.log_size() == 5   # 2 accounts, 1 purchase, 2 observations


def _custody_change(books, txid: str, amount_sats: int, fee_sats: int) -> None:
    proposal = books.run(cmd.ProposeCustodyChange("cc", "cold-1", "warm-1", amount_sats, "to operations",
                                                  txid=txid, network_fee_sats=fee_sats), ALICE)
    books.run(cmd.ApproveCustodyChange("approve-cc", proposal.data["custody_change_id"]), BOB)


def _custody_tx(chain, to_warm_sats: int) -> bytes:
    coin = chain.utxos(script_pubkey(COLD))[0]
    return spend(chain, COLD, coin, [(to_warm_sats, script_pubkey(WARM)),
                                     (coin.value_sats - to_warm_sats - FEE_SATS, script_pubkey(COLD))])


def test_an_approved_custody_change_naming_its_txid_explains_exactly_its_amounts(chain, books):
    """amount 0.5 BTC + fee: the source loses amount, the destination gains amount - fee: no alert."""
    watcher = _monitor(books, chain)
    _fund_cold(chain)
    watcher.step()
    raw = _custody_tx(chain, HALF_BTC)
    _custody_change(books, parse_transaction(raw).txid, HALF_BTC + FEE_SATS, FEE_SATS)
    chain.broadcast(raw)
    chain.mine(1)
    watcher.step()
    assert books.discrepancies() == []


def test_a_custody_change_whose_transaction_moves_other_amounts_alerts(chain, books):
    """The txid is named, but 0.6 BTC reached warm-1 instead of the recorded 0.5 BTC - fee."""
    watcher = _monitor(books, chain)
    _fund_cold(chain)
    watcher.step()
    raw = _custody_tx(chain, 6 * BTC // 10)
    _custody_change(books, parse_transaction(raw).txid, HALF_BTC + FEE_SATS, FEE_SATS)
    chain.broadcast(raw)
    chain.mine(1)
    watcher.step()
    assert {(d.account_id, d.finding) for d in books.discrepancies()} == {
        ("cold-1", monitor.FINDING_AMOUNTS_DIFFER), ("warm-1", monitor.FINDING_AMOUNTS_DIFFER)}


def test_the_alert_follows_the_best_chain_across_reorgs(chain, books):
    """Reorged out: each alert is marked so (the block left the best chain); the movement mined again in another
    block: raised again there; reorged out for good (the transaction dropped): nothing stands."""
    watcher = _monitor(books, chain)
    _fund_cold(chain)
    watcher.step()
    txid = _move_half_to_warm(chain)
    (first_block,) = chain.mine(1)
    watcher.step()
    chain.reorg(1, drop_transactions=False)          # back to the mempool; 2 empty blocks replace the one
    watcher.step()
    statuses = [(d.block_hash, d.status) for d in books.discrepancies()]
    assert statuses == [(first_block, monitor.REORGED_OUT)] * 2
    (again_block,) = chain.mine(1)                     # the movement is mined again
    watcher.step()
    standing = [d for d in books.discrepancies() if d.status == monitor.OPEN]
    assert {(d.account_id, d.block_hash, d.txids) for d in standing} == {
        ("cold-1", again_block, (txid,)), ("warm-1", again_block, (txid,))}
    chain.reorg(1, drop_transactions=True)           # now the network never saw it
    watcher.step()
    assert monitor.open_discrepancies(books.ledger._caught_up_copy()) == []
    assert len(books.discrepancies()) == 4
    chain.mine(2)
    watcher.step()
    assert len(books.discrepancies()) == 4


@pytest.mark.parametrize("kind", ["core", "esplora"])
def test_the_monitor_catches_the_movement_through_the_http_clients(chain, books, kind):
    """The production clients (Bitcoin Core JSON-RPC with a cookie, Esplora REST) over real HTTP: the same
    movement, the same two discrepancies, then a reorg marks them reorged out."""
    with RegtestNode(chain) as node:
        backend = CoreRpcClient(node.rpc_url, cookie_file=str(node.cookie_file), timeout_s=30) if kind == "core" \
            else EsploraClient(node.esplora_url, timeout_s=30)
        watcher = _monitor(books, backend)
        _fund_cold(chain)
        watcher.step()
        txid = _move_half_to_warm(chain)
        (block_hash,) = chain.mine(1)
        watcher.step()
        assert {(d.account_id, d.block_hash, d.txids) for d in books.discrepancies()} == {
            ("cold-1", block_hash, (txid,)), ("warm-1", block_hash, (txid,))}
        chain.reorg(1, drop_transactions=True)
        watcher.step()
        assert {d.status for d in books.discrepancies()} == {monitor.REORGED_OUT}


@contextlib.contextmanager
def _backend(kind: str, chain):
    if kind == "regtest":
        yield chain
        return
    with RegtestNode(chain) as node:
        yield CoreRpcClient(node.rpc_url, cookie_file=str(node.cookie_file), timeout_s=30) if kind == "core" \
            else EsploraClient(node.esplora_url, timeout_s=30)


@pytest.mark.parametrize("kind", ["regtest", "core", "esplora"])
def test_an_account_opened_and_funded_between_two_steps_still_has_its_arrival_checked(chain, books, kind):
    """The monitor learns of hot-1 in the same step that reads the block funding it without a ledger event:
    the coin is an arrival of that block (an alert), not part of the account's starting coins; a coin hot-1
    already held at the last block read is a starting coin (Core reads them all in one scantxoutset)."""
    with _backend(kind, chain) as backend:
        chain.send(script_pubkey(3), BTC)
        chain.mine(1)
        watcher = _monitor(books, backend)
        watcher.step()
        books.open("hot-1", 3, "hot")
        chain.send(script_pubkey(3), HALF_BTC)
        (block_hash,) = chain.mine(1)
        watcher.step()
        assert [(d.account_id, d.block_hash, d.movement_sats, d.onchain_sats) for d in books.discrepancies()] == [
            ("hot-1", block_hash, HALF_BTC, BTC + HALF_BTC)]


def test_two_replicas_sharing_one_store_record_each_discrepancy_once(chain, storage_env):
    """Two service processes on one database (SQLite file, PostgreSQL schema), each with its own monitor and its
    own handle on the chain, both read the block of the movement: each side is recorded once."""
    first, second = Books(env=storage_env), Books(env=storage_env)
    try:
        first.open("cold-1", COLD)
        first.open("warm-1", WARM, "warm")
        first.purchase("cold-1", 4 * BTC)
        with RegtestChain.open(chain.directory) as other_handle:
            watchers = (_monitor(first, chain), _monitor(second, other_handle))
            _fund_cold(chain)
            for watcher in watchers:
                watcher.step()
            txid = _move_half_to_warm(chain)
            chain.mine(1)
            for watcher in reversed(watchers):
                watcher.step()
            watchers[0].step()
        assert sorted((d.account_id, d.txids) for d in second.discrepancies()) == [
            ("cold-1", (txid,)), ("warm-1", (txid,))]
        assert first.ledger.store.log_size() == 5
    finally:
        first.close()
        second.close()
