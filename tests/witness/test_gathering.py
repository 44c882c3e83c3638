"""The ledger gathers cosignatures from witness processes over real HTTP, stores them (SQLite and PostgreSQL),
serves them with GetCheckpoint, and never lets a witness that is down hold up a command."""

import time

import pytest

from ledger import merkle
from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from services.api.client import secure_channel
from services.compose import ServerConfig, build_server
from services.witness import note
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account
from tests.e2e.processes import free_port
from tests.witness.helpers import WitnessProcess, init_witness

WAIT_S = 120


def audit_stub(address: str, certs_dir, identity: str):
    return audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs_dir, identity))


def serve(storage, certs_dir, tmp_path, witnesses, quorum, origin="reserve.test/ledger"):
    data_dir, database_url = storage
    key = tmp_path / "signing.key"
    return build_server(ServerConfig(
        create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir, database_url=database_url,
        certs_dir=str(certs_dir), signing_key_path=str(key), log_origin=origin, witnesses=tuple(witnesses),
        witness_quorum=quorum)).start()


def log_vkey_of(tmp_path, origin="reserve.test/ledger") -> str:
    """The vkey the server will publish: generate the key file first, as an operator would."""
    from services.store.signing import load_or_create_signing_key
    from services.witness.log import LogCheckpoints
    return LogCheckpoints(origin, note.KeySigner(load_or_create_signing_key(tmp_path / "signing.key"))).vkey.text()


def wait_for_cosigners(stub, size: int, count: int) -> apb.GetCheckpointResponse:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        answer = stub.GetCheckpoint(apb.GetCheckpointRequest(), timeout=30)
        if answer.tree_size >= size and len(answer.cosignatures) >= count:
            return answer
        time.sleep(0.2)
    raise AssertionError(f"no {count} cosignatures of size {size} within {WAIT_S} s: {answer}")


def test_two_witnesses_cosign_the_latest_head_and_get_checkpoint_carries_both(storage, certs_dir, tmp_path):
    """Every cosignature in GetCheckpoint verifies with its witness's key over the log-signed checkpoint, and
    the log's signature verifies with the vkey GetPublicKey publishes."""
    vkey = log_vkey_of(tmp_path)
    keys = [init_witness(tmp_path / f"w{i}", f"witness.test/w{i}") for i in (1, 2)]
    with WitnessProcess(tmp_path / "w1", {"reserve.test/ledger": vkey}) as w1, \
            WitnessProcess(tmp_path / "w2", {"reserve.test/ledger": vkey}) as w2:
        server = serve(storage, certs_dir, tmp_path, [f"{k.split('+')[0]}={k}@{w.url}"
                                                      for k, w in zip(keys, (w1, w2))], 2)
        try:
            clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
            stub = audit_stub(clients.address, certs_dir, "dave")
            for i in range(3):
                open_account(clients.alice, f"cold-{i}")
            answer = wait_for_cosigners(stub, 3, 2)
            open_account(clients.alice, "cold-3")
            answer = wait_for_cosigners(stub, 4, 2)   # the next head too, with a consistency proof from 3
            published = stub.GetPublicKey(apb.GetPublicKeyRequest(), timeout=30).vkey
        finally:
            server.stop(grace_s=1)
    assert published == vkey
    signed = note.open_note(answer.note.encode(), note.parse_vkey(vkey))
    assert note.parse_checkpoint(signed.text).tree_size == 4
    for key in keys:
        (line,) = note.matching(signed, note.parse_vkey(key))
        assert note.cosignature_time_s(signed.text, line, note.parse_vkey(key)) is not None
    assert sorted(c.witness for c in answer.cosignatures) == ["witness.test/w1", "witness.test/w2"]


def test_a_witness_that_is_down_holds_up_no_command_and_catches_up_when_it_comes_back(storage, certs_dir, tmp_path):
    """Commands succeed while the witness's port is closed; once it listens, the latest head gets cosigned."""
    vkey = log_vkey_of(tmp_path)
    key = init_witness(tmp_path / "w1", "witness.test/w1")
    port = free_port()
    server = serve(storage, certs_dir, tmp_path, [f"witness.test/w1={key}@http://127.0.0.1:{port}"], 1)
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        stub = audit_stub(clients.address, certs_dir, "dave")
        for i in range(3):
            open_account(clients.alice, f"cold-{i}")
        assert not stub.GetCheckpoint(apb.GetCheckpointRequest(), timeout=30).cosignatures
        with WitnessProcess(tmp_path / "w1", {"reserve.test/ledger": vkey}, port=port):
            answer = wait_for_cosigners(stub, 3, 1)
    finally:
        server.stop(grace_s=1)
    assert answer.cosignatures[0].witness == "witness.test/w1"


def test_the_anchor_worker_is_offered_the_newest_witnessed_head_not_a_newer_unwitnessed_one(certs_dir, tmp_path):
    """With witnesses configured the anchor worker's head choice is the largest head a quorum cosigned (3 here,
    cosigned before the witness went away), not the latest (5, which no witness saw); without any witnessed
    head it is the latest, so a witness outage never stops anchoring."""
    from services.witness.gatherer import witnessed_head_choice
    vkey = log_vkey_of(tmp_path)
    key = init_witness(tmp_path / "w1", "witness.test/w1")
    port = free_port()
    server = serve((str(tmp_path / "data"), None), certs_dir, tmp_path,
                   [f"witness.test/w1={key}@http://127.0.0.1:{port}"], 1)
    try:
        store = server.ledger.store
        choose = witnessed_head_choice(store, server.signer.latest, 1, server.checkpoints.vkey,
                                       list(server._witnesses))
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        open_account(clients.alice, "cold-0")
        assert choose().tree_size == 1                               # nothing witnessed yet: the latest
        stub = audit_stub(clients.address, certs_dir, "dave")
        with WitnessProcess(tmp_path / "w1", {"reserve.test/ledger": vkey}, port=port):
            for i in (1, 2):
                open_account(clients.alice, f"cold-{i}")
            wait_for_cosigners(stub, 3, 1)
        for i in (3, 4):
            open_account(clients.alice, f"cold-{i}")
        chosen = choose()
        assert (chosen.tree_size, chosen.root_hash) == (3, merkle.root_hash(store, 3))
        assert server.signer.latest().tree_size == 5
        assert store.load_tree_head(3) is None                     # pruned once superseded ...
        kept = stub.GetCheckpoint(apb.GetCheckpointRequest(tree_size=3), timeout=30)
        assert [c.witness for c in kept.cosignatures] == ["witness.test/w1"]   # ... its cosigned checkpoint is not
        real = store.list_cosignatures(3)[0]
        origin, _size, rest = real["checkpoint"].split("\n", 2)
        forged = f"{origin}\n9\n{rest}"      # a row an insider wrote: size 9, the size-3 signatures
        store.save_cosignature(9, real["witness"], forged, real["signature_line"], real["timestamp_s"])
        assert choose().tree_size == 5                             # not proven: the latest head, never size 9
    finally:
        server.stop(grace_s=1)


def test_get_checkpoint_refuses_bad_sizes_and_serves_no_stored_row_the_log_did_not_sign(certs_dir, tmp_path):
    """GetCheckpoint: a negative size is INVALID_ARGUMENT, a size beyond the log OUT_OF_RANGE, and nothing is
    written by either; a cosignatures row an insider wrote for a pruned size, with a checkpoint another key signed,
    is not served as that size's checkpoint."""
    import grpc
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    server = serve((str(tmp_path / "data"), None), certs_dir, tmp_path, [], 0)
    try:
        store = server.ledger.store
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        for i in range(3):
            open_account(clients.alice, f"cold-{i}")
        stub = audit_stub(clients.address, certs_dir, "dave")
        size = store.log_size()
        for tree_size, code in ((-1, grpc.StatusCode.INVALID_ARGUMENT), (size + 5, grpc.StatusCode.OUT_OF_RANGE)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetCheckpoint(apb.GetCheckpointRequest(tree_size=tree_size), timeout=30)
            assert refused.value.code() == code
        assert store.log_size() == size and store.cosigned_sizes(size + 5) == []
        pruned = next(n for n in range(1, size) if store.load_tree_head(n) is None)   # pruned once superseded
        other = note.KeySigner(Ed25519PrivateKey.generate())
        forged = note.sign_checkpoint(note.checkpoint("reserve.test/ledger", pruned, b"\x07" * 32), other)
        store.save_cosignature(pruned, "witness.test/w1", forged.encode().decode(), forged.signatures[0].line(), 1)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetCheckpoint(apb.GetCheckpointRequest(tree_size=pruned), timeout=30)
        assert refused.value.code() != grpc.StatusCode.OK
    finally:
        server.stop(grace_s=1)
