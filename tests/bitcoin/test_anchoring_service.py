"""The anchor worker of a real service, on the embedded regtest chain (blocks validated by libbitcoinkernel).

Events are recorded through the gRPC API with mTLS; the service's own anchor worker is stepped by the test
(its period is set to an hour so that the test decides when it runs); blocks are mined by the test through a
second handle on the same chain directory, as a miner elsewhere on the network would.
"""

import hashlib
import json
import subprocess
import sys
import time

import grpc
import pytest
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation
from opentimestamps.core.serialize import BytesDeserializationContext
from opentimestamps.core.timestamp import DetachedTimestampFile

from ledger import merkle
from ledger.anchor_policy import AnchorPolicy
from ledger.anchoring import encode_payload, find_anchor_output, parse_transaction, verify_txout_proof
from ledger.event_proofs import verify_event_proof_json, verify_event_timestamp
from services.anchoring.worker import AnchorRefusedByNode, AnchorWorker
from services.bitcoin.anchor_tx import AnchorKey, build_anchor_tx
from services.bitcoin.regtest.chain import RegtestChain, block_transactions
from services.anchoring.event_proofs import EventNotAnchoredYet, event_proof
from services.api.server import LedgerServer
from services.compose import ServerConfig, build_server
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, purchase

FUNDING_SATS = 1_000_000


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


def _start(storage, certs_dir, tmp_path, chain, **policy) -> LedgerServer:
    data_dir, database_url = storage
    key_path = tmp_path / "anchor.wif"
    if not key_path.exists():
        AnchorKey.generate("regtest").save(key_path)
    return build_server(ServerConfig(create_store=True, metrics_listen=None,
        listen="127.0.0.1:0", data_dir=data_dir, database_url=database_url, certs_dir=str(certs_dir),
        signing_key_path=str(tmp_path / "signing.key"), chain=f"regtest:{chain.directory}",
        anchor_key_path=str(key_path), anchor_policy=AnchorPolicy(**{"interval_s": 3600, "block_poll_interval_s": 3600, **policy}))).start()


@pytest.fixture
def service(storage, certs_dir, tmp_path, chain):
    server = _start(storage, certs_dir, tmp_path, chain)
    chain.send(server.anchor_worker.key.script_pubkey, FUNDING_SATS)
    chain.mine(1)
    yield server
    server.stop(grace_s=1)


@pytest.fixture
def sqlite_service(tmp_path, certs_dir, chain):
    server = _start((str(tmp_path / "data"), None), certs_dir, tmp_path, chain)
    chain.send(server.anchor_worker.key.script_pubkey, FUNDING_SATS)
    chain.mine(1)
    yield server
    server.stop(grace_s=1)


def _record(server, certs_dir, tag: str, count: int = 1) -> None:
    clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
    open_account(clients.alice, f"acct-{tag}")
    for i in range(count):
        purchase(clients.alice, f"acct-{tag}", 1, f"buy-{tag}-{i}")


def _anchors(server) -> list[dict]:
    return server.ledger.store.list_anchors()


def test_an_anchor_is_consensus_valid_and_walks_its_states(service, certs_dir, chain):
    _record(service, certs_dir, "a", 3)
    report = service.anchor_worker.step()
    (anchor,) = _anchors(service)
    assert report.built == [anchor.txid] and anchor.state == "broadcast"
    assert anchor.txid in chain.mempool_txids()
    output_index, (size, root) = find_anchor_output(parse_transaction(anchor.raw_tx))
    assert output_index == 0 and anchor.change_vout == 1
    assert (size, root) == (anchor.tree_size, merkle.root_hash(service.ledger.store, anchor.tree_size))
    assert size == service.ledger.store.log_size()

    (block_hash,) = chain.mine(1)
    service.anchor_worker.step()
    (anchor,) = _anchors(service)
    assert anchor.state == "included" and anchor.block_hash == block_hash
    # libbitcoinkernel connected the block holding the anchor: it is on the kernel's best chain
    assert chain.block_hash(anchor.block_height) == block_hash
    proof = verify_txout_proof(anchor.txout_proof)
    assert proof.header == anchor.block_header == chain.block_header(block_hash)
    assert [m[0] for m in proof.matched] == [parse_transaction(anchor.raw_tx).txid_internal]

    chain.mine(5)
    service.anchor_worker.step()
    assert _anchors(service)[0].state == "anchored"
    chain.mine(94)
    service.anchor_worker.step()
    assert _anchors(service)[0].state == "final"


def test_nothing_new_means_nothing_sent(service, certs_dir, chain):
    _record(service, certs_dir, "a")
    service.anchor_worker.step()
    chain.mine(1)
    assert service.anchor_worker.step().built == []
    assert len(_anchors(service)) == 1


def test_each_anchor_spends_the_previous_anchors_change(service, certs_dir, chain):
    _record(service, certs_dir, "a")
    service.anchor_worker.step()
    chain.mine(1)
    _record(service, certs_dir, "b")
    service.anchor_worker.step()
    chain.mine(1)
    service.anchor_worker.step()
    first, second = _anchors(service)
    (spent,) = parse_transaction(second.raw_tx).inputs
    assert (spent.prev_txid_internal[::-1].hex(), spent.vout) == (first.txid, first.change_vout)
    assert second.tree_size > first.tree_size
    assert [a.state for a in _anchors(service)] == ["included", "included"]


@pytest.mark.parametrize("depth", [1, 6])
@pytest.mark.parametrize("drop_transactions", [False, True], ids=["back-to-mempool", "lost"])
def test_a_reorg_returns_anchors_to_pending_and_they_recover(sqlite_service, certs_dir, chain, depth,
                                                              drop_transactions):
    service = sqlite_service
    _record(service, certs_dir, "a")
    service.anchor_worker.step()
    chain.mine(depth)
    service.anchor_worker.step()
    (before,) = _anchors(service)
    assert before.confirmations == depth

    chain.reorg(depth, drop_transactions=drop_transactions)
    report = service.anchor_worker.step()
    (after,) = _anchors(service)
    assert report.reorged == [before.txid]
    assert after.state == "broadcast" and after.block_hash is None and after.txout_proof is None
    assert before.txid in chain.mempool_txids()  # re-sent by the worker when the node had dropped it

    (block_hash,) = chain.mine(1)
    service.anchor_worker.step()
    (recovered,) = _anchors(service)
    assert recovered.state == "included" and recovered.block_hash == block_hash != before.block_hash


def test_a_stuck_anchor_is_replaced_at_a_higher_fee_committing_to_the_newest_head(sqlite_service, certs_dir,
                                                                                   chain):
    service = sqlite_service
    _record(service, certs_dir, "a")
    service.anchor_worker.step()
    chain.mine(3, include_mempool=False)  # miners ignore it: three blocks later it is still unconfirmed
    _record(service, certs_dir, "b")
    report = service.anchor_worker.step()
    stuck, replacement = _anchors(service)
    assert report.replaced == [stuck.txid] and report.built == [replacement.txid]
    assert replacement.replaces == stuck.anchor_id
    assert (replacement.prev_txid, replacement.prev_vout) == (stuck.prev_txid, stuck.prev_vout)
    assert replacement.fee_sats > stuck.fee_sats
    assert replacement.tree_size == service.ledger.store.log_size() > stuck.tree_size
    assert chain.mempool_txids() == [replacement.txid]  # full RBF evicted the stuck one

    chain.mine(1)
    service.anchor_worker.step()
    stuck, replacement = _anchors(service)
    assert (stuck.state, replacement.state) == ("replaced", "included")


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this line runs (BaseException, so no handler swallows it)."""


class _CrashAfter:
    """Proxy that lets `method` run (or not) and then 'kills the process'."""

    def __init__(self, target, method: str, run_it: bool):
        self._target, self._method, self._run_it = target, method, run_it

    def __getattr__(self, name):
        attribute = getattr(self._target, name)
        if name != self._method:
            return attribute

        def crashing(*args, **kwargs):
            if self._run_it:
                attribute(*args, **kwargs)
            raise SimulatedCrash(name)
        return crashing


@pytest.mark.parametrize("where, method, run_it", [
    ("after signing, before recording", "insert_anchor", False),
    ("after recording, before broadcast", "broadcast", False),
    ("after broadcast, before recording it", "broadcast", True),
    ("after broadcast was recorded", "update_anchor", True),
])
def test_a_crash_at_any_step_neither_loses_an_anchor_nor_makes_two(sqlite_service, certs_dir, chain, where,
                                                                   method, run_it):
    service = sqlite_service
    _record(service, certs_dir, "a")
    worker = service.anchor_worker
    store, backend = service.ledger.store, service.chain
    if method in ("insert_anchor", "update_anchor"):
        store = _CrashAfter(store, method, run_it)
    else:
        backend = _CrashAfter(backend, method, run_it)
    crashing = AnchorWorker(store, service.signer, backend, worker.key, AnchorPolicy(interval_s=3600), lambda: 1)
    with pytest.raises(SimulatedCrash):
        crashing.step()

    worker.step()  # the restarted process: the service's own worker, fresh from storage
    chain.mine(1)
    worker.step()
    anchors = _anchors(service)
    assert len(anchors) == 1, where
    assert anchors[0].state == "included" and anchors[0].tree_size == service.ledger.store.log_size()
    assert sum(1 for txid in _confirmed_anchor_txids(chain)) == 1


def _confirmed_anchor_txids(chain):
    for height in range(chain.tip_height() - 2, chain.tip_height() + 1):
        for raw in block_transactions(chain.block(chain.block_hash(height)))[1:]:
            if find_anchor_output(parse_transaction(raw)):
                yield parse_transaction(raw).txid


def test_an_event_proof_evaluates_to_the_block_header_with_the_opentimestamps_library(sqlite_service, certs_dir,
                                                                                      chain):
    service = sqlite_service
    _record(service, certs_dir, "a", 4)
    with pytest.raises(EventNotAnchoredYet):
        event_proof(service.ledger, service.chain, 2)
    service.anchor_worker.step()
    chain.mine(6)
    service.anchor_worker.step()
    (anchor,) = _anchors(service)
    header = chain.block_header(anchor.block_hash)

    proof = event_proof(service.ledger, service.chain, 2)
    ots = DetachedTimestampFile.deserialize(BytesDeserializationContext(proof.ots))
    assert ots.file_digest == hashlib.sha256(proof.event_bytes).digest()
    ((message, attestation),) = list(ots.timestamp.all_attestations())
    assert isinstance(attestation, BitcoinBlockHeaderAttestation)
    assert attestation.height == anchor.block_height
    assert message == header[36:68]  # the library's own evaluation ends at the header's merkle root
    assert verify_event_timestamp(proof.event_bytes, proof.ots, header) == anchor.block_height
    verify_event_proof_json(proof.event_bytes, proof.proof, header)

    tampered = bytearray(proof.event_bytes)
    tampered[-2] ^= 1
    with pytest.raises(Exception):
        verify_event_timestamp(bytes(tampered), proof.ots, header)


@pytest.mark.postgres
def test_only_one_replica_anchors_at_a_time_on_postgres(certs_dir, tmp_path, chain):
    from tests.conftest import POSTGRES_URL, _drop_schema, _postgres_schema
    schema = _postgres_schema()
    storage = (None, f"{POSTGRES_URL}?schema={schema}")
    first = _start(storage, certs_dir, tmp_path, chain)
    second = _start(storage, certs_dir, tmp_path, chain)
    try:
        chain.send(first.anchor_worker.key.script_pubkey, FUNDING_SATS)
        chain.mine(1)
        _record(first, certs_dir, "a")
        with first.ledger.store.anchor_turn() as leader:
            assert leader
            assert second.anchor_worker.step().leader is False
            assert _anchors(second) == []
        report = second.anchor_worker.step()  # the holder let go (or died): the other takes over
        assert report.leader and len(report.built) == 1
        assert first.anchor_worker.step().built == []  # same root: never anchored twice
        assert len(_anchors(first)) == 1
    finally:
        first.stop(grace_s=1)
        second.stop(grace_s=1)
        _drop_schema(schema)


def test_the_audit_api_serves_event_proofs_once_anchored(sqlite_service, certs_dir, chain, tmp_path):
    from reserve_ledger.v1 import audit_pb2 as apb
    from reserve_ledger.v1 import audit_pb2_grpc
    from services.api.client import secure_channel
    from tests.e2e.helpers import error_reason, rpc_error, violations
    service = sqlite_service
    _record(service, certs_dir, "a", 2)
    address = f"127.0.0.1:{service.port}"
    audit = audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs_dir, "dave"))

    early = rpc_error(audit.GetEventProof, apb.GetEventProofRequest(position=1))
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(early) == "EVENT_NOT_ANCHORED_YET"
    beyond = rpc_error(audit.GetEventProof, apb.GetEventProofRequest(position=99))
    assert beyond.code() == grpc.StatusCode.OUT_OF_RANGE and violations(beyond) == {"position": "TREE_SIZE_BEYOND_LOG"}
    negative = rpc_error(audit.GetEventProof, apb.GetEventProofRequest(position=-1))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT and "position" in violations(negative)
    operator = audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs_dir, "alice"))
    assert rpc_error(operator.GetEventProof, apb.GetEventProofRequest(position=1)).code() == \
        grpc.StatusCode.PERMISSION_DENIED

    service.anchor_worker.step()
    (block_hash,) = chain.mine(1)
    service.anchor_worker.step()
    reply = audit.GetEventProof(apb.GetEventProofRequest(position=1), timeout=10)
    assert reply.block_hash == block_hash and reply.anchor_txid == _anchors(service)[0].txid
    header = chain.block_header(block_hash)
    assert verify_event_timestamp(reply.event_bytes, reply.ots_file, header) == reply.block_height
    verify_event_proof_json(reply.event_bytes, json.loads(reply.proof_json), header)
    assert reply.event_bytes == service.ledger.read_events(1, 1)[0][1]


def test_a_service_without_a_chain_says_so(tmp_path, certs_dir):
    from reserve_ledger.v1 import audit_pb2 as apb
    from reserve_ledger.v1 import audit_pb2_grpc
    from services.api.client import secure_channel
    from tests.e2e.helpers import error_reason, rpc_error
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                                       certs_dir=str(certs_dir))).start()
    try:
        _record(server, certs_dir, "a")
        audit = audit_pb2_grpc.AuditServiceStub(secure_channel(f"127.0.0.1:{server.port}", certs_dir, "dave"))
        error = rpc_error(audit.GetEventProof, apb.GetEventProofRequest(position=0))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "ANCHORING_NOT_CONFIGURED"
    finally:
        server.stop(grace_s=1)


def test_an_anchor_the_node_would_refuse_is_neither_recorded_nor_sent(sqlite_service, certs_dir, chain):
    """The funding coin is spent elsewhere first: test-accept says so, and the worker records nothing."""
    service = sqlite_service
    _record(service, certs_dir, "a")
    key = service.anchor_worker.key
    (coin,) = chain.utxos(key.script_pubkey)
    rival = AnchorWorker(service.ledger.store, service.signer, chain, key, AnchorPolicy(), lambda: 1)
    chain.broadcast(build_anchor_tx(coin, key, encode_payload(1, bytes(32)), 5, 20_000, chain.tip_height()).raw)
    with pytest.raises(AnchorRefusedByNode, match="insufficient fee"):
        rival.step()
    assert _anchors(service) == []


HOLD_THE_TURN = """
import sys, time
from ledger.application import ReserveLedger
from services.store.config import storage_env
ledger = ReserveLedger(storage_env(None, sys.argv[1]))
with ledger.store.anchor_turn() as leader:
    print("leader" if leader else "not leader", flush=True)
    time.sleep(600)
"""


@pytest.mark.postgres
def test_when_the_anchoring_replica_dies_another_takes_over(certs_dir, tmp_path, chain):
    from tests.conftest import POSTGRES_URL, _drop_schema, _postgres_schema
    schema = _postgres_schema()
    url = f"{POSTGRES_URL}?schema={schema}"
    survivor = _start((None, url), certs_dir, tmp_path, chain)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_TURN, url], stdout=subprocess.PIPE, text=True)
    try:
        chain.send(survivor.anchor_worker.key.script_pubkey, FUNDING_SATS)
        chain.mine(1)
        _record(survivor, certs_dir, "a")
        assert holder.stdout.readline().strip() == "leader"
        assert survivor.anchor_worker.step().leader is False
        holder.kill()  # kill -9: no unlock is ever sent; PostgreSQL drops the session's lock with it
        holder.wait(timeout=30)
        for _ in range(100):
            report = survivor.anchor_worker.step()
            if report.leader:
                break
            time.sleep(0.1)
        assert report.leader and len(report.built) == 1
    finally:
        holder.kill()
        survivor.stop(grace_s=1)
        _drop_schema(schema)


def _wait_for(condition, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_between_steps_each_new_block_refreshes_the_anchors_and_catches_a_reorg(tmp_path, certs_dir, chain):
    """With the anchor period at an hour, only the block poll can move the anchor's state."""
    service = _start((str(tmp_path / "data"), None), certs_dir, tmp_path, chain, block_poll_interval_s=0.1)
    try:
        chain.send(service.anchor_worker.key.script_pubkey, FUNDING_SATS)
        chain.mine(1)
        _record(service, certs_dir, "a")
        (txid,) = service.anchor_worker.step().built
        (block_hash,) = chain.mine(1)
        included = _wait_for(lambda: [a for a in _anchors(service) if a.state == "included"])
        assert included[0].txid == txid and included[0].block_hash == block_hash
        chain.reorg(1, drop_transactions=True)
        pending = _wait_for(lambda: [a for a in _anchors(service) if a.state == "broadcast"])
        assert pending[0].block_hash is None
        _wait_for(lambda: txid in chain.mempool_txids())  # re-sent after the node lost it
        (new_block,) = chain.mine(1)
        recovered = _wait_for(lambda: [a for a in _anchors(service) if a.block_hash == new_block])
        assert recovered[0].state == "included" and len(_anchors(service)) == 1
    finally:
        service.stop(grace_s=1)


def test_the_first_anchor_records_its_coin_as_the_genesis_once(service, certs_dir, chain):
    """On SQLite and PostgreSQL: the genesis is the coin the first anchor spends; later anchors (which spend
    change) leave it alone, and recording another one is refused."""
    from ledger.anchoring import Outpoint
    from services.store.recorders import AnchorGenesisChanged
    store = service.ledger.store
    assert store.load_anchor_genesis() is None
    _record(service, certs_dir, "a")
    service.anchor_worker.step()
    chain.mine(1)
    _record(service, certs_dir, "b")
    service.anchor_worker.step()
    first, second = _anchors(service)
    genesis = Outpoint(first.prev_txid, first.prev_vout)
    assert store.load_anchor_genesis() == genesis
    store.record_anchor_genesis(genesis, 1)   # the same again: nothing changes
    with pytest.raises(AnchorGenesisChanged, match=str(genesis)):
        store.record_anchor_genesis(Outpoint(second.txid, second.change_vout), 2)
    assert store.load_anchor_genesis() == genesis


def test_verify_names_a_deleted_middle_anchor_and_an_edited_genesis(sqlite_service, certs_dir, chain, tmp_path):
    """Three chained anchors; the second row is deleted, then the genesis row is pointed at another coin."""
    import sqlite3
    from services.audit.verify import verify_ledger
    for tag in "abc":
        _record(sqlite_service, certs_dir, tag)
        sqlite_service.anchor_worker.step()
        chain.mine(1)
    first, second, third = _anchors(sqlite_service)
    ledger, key = sqlite_service.ledger, sqlite_service.signer.public_key_raw
    assert verify_ledger(ledger, key).problems == []
    with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
        db.execute("DELETE FROM anchors WHERE anchor_id = 2")
    problems = [p.description for p in verify_ledger(ledger, key).problems]
    assert "anchor rows 2..2 are missing (deleted?)" in problems
    assert any(p.startswith(f"anchor {third.txid}: does not spend the change {first.txid}") for p in problems), problems
    with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
        db.execute("UPDATE anchor_genesis SET vout = vout + 1")
    problems = [p.description for p in verify_ledger(ledger, key).problems]
    assert any(p.startswith(f"anchor {first.txid}: spends neither the anchor genesis") for p in problems), problems
