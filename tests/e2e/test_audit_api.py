"""AuditService over real mTLS, on SQLite and PostgreSQL: every answer is checked with ledger/ verifiers only."""

import dataclasses

import grpc
import pytest

from ledger import merkle
from ledger.events import parse_canonical_bytes
from ledger.tree_heads import TreeHead, verify_tree_head
from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from services.api.client import secure_channel
from services.compose import ServerConfig, build_server
from tests.e2e.helpers import open_account, purchase, rpc_error, violations


def audit_stub(clients, certs_dir, identity="dave"):
    return audit_pb2_grpc.AuditServiceStub(secure_channel(clients.address, certs_dir, identity))


def head_of(proto) -> TreeHead:
    return TreeHead(proto.tree_size, proto.root_hash, proto.timestamp_us, proto.signature, proto.key_id)


def record_events(clients, prefix: str, count: int) -> None:
    open_account(clients.alice, f"{prefix}-acct")
    for n in range(count - 1):
        purchase(clients.alice, f"{prefix}-acct", 1, f"{prefix}-buy-{n}")


def all_leaves(audit, start=0, batch_size=0):
    return [leaf for batch in audit.StreamLeaves(apb.StreamLeavesRequest(start_position=start, batch_size=batch_size),
                                                 timeout=30) for leaf in batch.leaves]


def test_signed_heads_proofs_and_leaves_verify_offline(clients, certs_dir):
    """Head signature, every inclusion proof, a consistency proof and the streamed leaves all check out."""
    audit = audit_stub(clients, certs_dir)
    record_events(clients, "a", 9)
    public_key = audit.GetPublicKey(apb.GetPublicKeyRequest(), timeout=10).ed25519_public_key
    first = head_of(audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10).tree_head)
    assert first.tree_size == 9 and verify_tree_head(public_key, first)
    leaves = all_leaves(audit, batch_size=4)
    assert [leaf.position for leaf in leaves] == list(range(9))
    for leaf in leaves:
        assert parse_canonical_bytes(leaf.canonical_bytes)["position"] == leaf.position
        assert leaf.leaf_hash == merkle.leaf_hash(leaf.canonical_bytes)
    assert merkle.root_from_leaves([leaf.leaf_hash for leaf in leaves]) == first.root_hash
    for position in range(9):
        proof = audit.GetInclusionProof(apb.GetInclusionProofRequest(position=position, tree_size=9), timeout=10)
        assert merkle.verify_inclusion(leaves[position].leaf_hash, position, 9, list(proof.hashes), first.root_hash)

    record_events(clients, "b", 8)
    second = head_of(audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10).tree_head)
    assert second.tree_size == 17 and verify_tree_head(public_key, second)
    proof = audit.GetConsistencyProof(apb.GetConsistencyProofRequest(first_tree_size=9, second_tree_size=17),
                                      timeout=10)
    assert merkle.verify_consistency(9, 17, first.root_hash, second.root_hash, list(proof.hashes))
    again = head_of(audit.GetTreeHead(apb.GetTreeHeadRequest(tree_size=17), timeout=10).tree_head)
    assert again == second  # heads are stored and retrievable by size; superseded per-commit heads are pruned
    one = audit.GetEventBytes(apb.GetEventBytesRequest(position=12), timeout=10).leaf
    assert merkle.verify_inclusion(one.leaf_hash, 12, 17, list(audit.GetInclusionProof(
        apb.GetInclusionProofRequest(position=12, tree_size=17), timeout=10).hashes), second.root_hash)


def test_bad_audit_requests_get_documented_statuses(clients, certs_dir):
    audit = audit_stub(clients, certs_dir)
    record_events(clients, "c", 3)
    audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10)
    error = rpc_error(audit.GetInclusionProof, apb.GetInclusionProofRequest(position=-1, tree_size=2))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "position" in violations(error)
    error = rpc_error(audit.GetInclusionProof, apb.GetInclusionProofRequest(position=3, tree_size=3))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and "position" in violations(error)
    error = rpc_error(audit.GetInclusionProof, apb.GetInclusionProofRequest(position=0, tree_size=4))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and "tree_size" in violations(error)
    error = rpc_error(audit.GetConsistencyProof, apb.GetConsistencyProofRequest(first_tree_size=3,
                                                                                second_tree_size=2))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "first_tree_size" in violations(error)
    error = rpc_error(audit.GetTreeHead, apb.GetTreeHeadRequest(tree_size=2))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = rpc_error(audit.GetEventBytes, apb.GetEventBytesRequest(position=3))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as raised:
        all_leaves(audit, batch_size=5000)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "batch_size" in violations(raised.value)


@pytest.mark.parametrize("identity", ["alice", "bob"])
def test_operators_and_approvers_cannot_use_the_audit_service(clients, certs_dir, identity):
    error = rpc_error(audit_stub(clients, certs_dir, identity).GetPublicKey, apb.GetPublicKeyRequest())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_canonical_bytes_and_heads_survive_a_restart(storage, certs_dir, tmp_path):
    """The same events yield the same bytes, leaves and roots after the service restarts."""
    data_dir, database_url = storage
    config = ServerConfig(metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir, database_url=database_url,
                          certs_dir=str(certs_dir), signing_key_path=str(tmp_path / "signing.key"))
    before = []
    for run in range(2):
        server = build_server(dataclasses.replace(config, create_store=True)).start()
        try:
            from tests.e2e.conftest import Clients
            clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
            audit = audit_stub(clients, certs_dir)
            if run == 0:
                record_events(clients, "r", 5)
                assert audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10).tree_head.tree_size == 5
            leaves = [(leaf.canonical_bytes, leaf.leaf_hash) for leaf in all_leaves(audit)]
            head = audit.GetTreeHead(apb.GetTreeHeadRequest(tree_size=5), timeout=10).tree_head
            before.append((leaves, head.root_hash, head.signature))
        finally:
            server.stop(grace_s=1)
    assert before[0] == before[1] and len(before[0][0]) == 5
