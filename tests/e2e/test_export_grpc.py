"""`reserve-ledger export --server`: the audit bundle of a running server, read over mTLS through AuditService
(GetTreeHead, GetPublicKey, StreamLeaves, ListTreeHeads, ListAnchors), is byte for byte the bundle of a local
export of the same log, on SQLite and PostgreSQL; only auditors and admins may take it; the new list RPCs
validate their input with field violations."""

import base64
import pathlib
import subprocess
import sys

import grpc
import pytest

from ledger import limits
from ledger.anchors import BUNDLE_FIELDS, Anchor
from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from reserve_ledger.v1 import ledger_pb2 as pb
from services.audit import bundle
from services.api.client import secure_channel
from services.audit.export import LedgerSource, write_bundle
from ledger.anchoring import Outpoint
from services.audit.export_grpc import AuditServiceSource, anchor_of_proto
from services.compose import ServerConfig, build_server
from tests.e2e.helpers import BTC, open_account, purchase, rpc_error, violations

KEEP_EVERY_EVENTS = 3  # per-commit heads: keep one in three, so that a short history has several heads


@pytest.fixture
def server(storage, certs_dir, tmp_path):
    data_dir, database_url = storage
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir,
                                       database_url=database_url, certs_dir=str(certs_dir),
                                       signing_key_path=str(tmp_path / "signing.key"),
                                       tree_head_keep_every_events=KEEP_EVERY_EVENTS)).start()
    yield server
    server.stop(grace_s=1)


def cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout_s)


def audit_stub(address: str, certs_dir, identity: str = "dave"):
    return audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs_dir, identity))


def files_of(directory: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def record_history(clients, audit) -> None:
    """Accounts, purchases, a posted and a rejected transfer, a frozen account, and several signed heads."""
    for account_id in ("vault-a", "vault-b", "ops-c"):
        open_account(clients.alice, account_id)
        audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10)
    for n in range(4):
        purchase(clients.alice, "vault-a", n + 1, f"buy-{n}")
    transfer = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="t-1", debit_account_id="vault-a", credit_account_id="vault-b", amount_sats=3 * BTC), timeout=10)
    clients.carol.ApproveTransfer(pb.ApproveTransferRequest(request_id="a-1", transfer_id=transfer.transfer_id),
                                  timeout=10)
    second = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="t-2", debit_account_id="vault-a", credit_account_id="ops-c", amount_sats=BTC), timeout=10)
    clients.bob.RejectTransfer(pb.RejectTransferRequest(request_id="r-2", transfer_id=second.transfer_id,
                                                        reason="wrong wallet"), timeout=10)
    clients.erin.FreezeAccount(pb.FreezeAccountRequest(request_id="f-1", account_id="ops-c", reason="review"),
                               timeout=10)
    audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10)


def bundle_fields(anchor: Anchor) -> dict:
    return {field: getattr(anchor, field) for field in BUNDLE_FIELDS}


def insert_anchors(store) -> None:
    """Anchor rows as the anchor worker records them: one confirmed, its replacement still unconfirmed (NULLs)."""
    heads = store.list_tree_heads()
    common = {"anchor_id": 0, "raw_tx": b"\x02\x00", "vsize": 153, "fee_sats": 300, "prev_txid": "ab" * 32,
              "prev_vout": 1, "prev_value_sats": 100_000, "change_vout": 1, "change_value_sats": 99_700,
              "broadcast_height": 101, "created_us": 1, "updated_us": 2}
    store.insert_anchor(Anchor(**common, tree_size=heads[0].tree_size, root_hash=heads[0].root_hash,
                               txid="11" * 32, state="anchored", replaces=None, block_hash="22" * 32,
                               block_height=102, confirmations=6, block_header=b"\x01" * 80,
                               txout_proof=b"\x03" * 90))
    store.insert_anchor(Anchor(**common, tree_size=heads[1].tree_size, root_hash=heads[1].root_hash,
                               txid="33" * 32, state="replaced"))
    store.insert_anchor(Anchor(**common, tree_size=heads[-1].tree_size, root_hash=heads[-1].root_hash,
                               txid="44" * 32, state="broadcast", replaces=2))


def test_export_over_grpc_equals_the_local_export_byte_for_byte(server, clients, certs_dir, tmp_path):
    """Small pages, batches and stream lengths make the exporter turn every page and restart the stream; the
    custody accounts it replays from the streamed events equal the server's own state, NULL anchor columns
    stay null, and every file is identical to the local export's."""
    audit = audit_stub(clients.address, certs_dir)
    record_history(clients, audit)
    insert_anchors(server.ledger.store)
    with secure_channel(clients.address, certs_dir, "dave") as channel:
        source = AuditServiceSource(channel, page_size=2, leaf_batch_size=3, stream_events_max=5)
        over_grpc = write_bundle(source, tmp_path / "grpc")
    local = write_bundle(LedgerSource(server.ledger, server.signer.public_key_raw), tmp_path / "local")
    assert over_grpc["counts"] == local["counts"]
    assert local["counts"]["events"] == 12 and local["counts"]["tree_heads"] == 5
    assert local["counts"]["anchors"] == 3 and local["counts"]["custody_accounts"] == 3
    assert files_of(tmp_path / "grpc") == files_of(tmp_path / "local")
    facts = bundle.audit_bundle(tmp_path / "grpc")
    assert [f for f in facts["findings"].kept if f.check != "anchors"] == []  # the inserted anchors are not real


def test_events_recorded_after_the_snapshot_are_left_for_the_next_export(clients, certs_dir, tmp_path):
    """The snapshot is the size of the latest signed head, taken first: events and heads added while the export
    runs are not in the bundle, and the bundle still audits clean."""
    audit = audit_stub(clients.address, certs_dir)
    record_history(clients, audit)
    with secure_channel(clients.address, certs_dir, "dave") as channel:
        source = AuditServiceSource(channel, leaf_batch_size=5)  # 12 = 5 + 5 + 2: the last batch is cut
        size = source.snapshot_size()
        purchase(clients.alice, "vault-b", 1, "buy-late")
        audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10)
        manifest = write_bundle(source, tmp_path / "bundle")
    assert manifest["counts"]["events"] == size == 12
    heads = bundle.read_json(tmp_path / "bundle", bundle.TREE_HEADS)
    assert max(head["tree_size"] for head in heads) == size
    facts = bundle.audit_bundle(tmp_path / "bundle")
    assert facts["findings"].kept == [] and facts["events"] == size


def test_an_operator_is_refused_and_no_bundle_is_left_behind(clients, certs_dir, tmp_path):
    """The CLI with an operator's certificate exits 2 naming PERMISSION_DENIED, and writes nothing."""
    record_history(clients, audit_stub(clients.address, certs_dir))
    out = tmp_path / "bundle"
    result = cli("export", "--server", clients.address, "--certs", str(certs_dir), "--identity", "alice",
                 "--out", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PERMISSION_DENIED" in result.stderr and "auditor or admin" in result.stderr
    assert not out.exists()
    allowed = cli("export", "--server", clients.address, "--certs", str(certs_dir), "--identity", "erin",
                  "--out", str(out))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "12 events" in allowed.stdout


@pytest.mark.parametrize("method", ["ListTreeHeads", "ListAnchors", "GetAnchorGenesis"])
def test_operators_may_not_list_heads_or_anchors(clients, certs_dir, method):
    request = getattr(apb, f"{method}Request")(**({} if method == "GetAnchorGenesis" else {"page_size": 10}))
    error = rpc_error(getattr(audit_stub(clients.address, certs_dir, "alice"), method), request)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_before_the_first_anchor_there_is_no_genesis_and_the_bundle_says_null(clients, certs_dir, tmp_path):
    """GetAnchorGenesis answers NOT_FOUND (ANCHOR_GENESIS_NOT_RECORDED); the export writes null, not an error."""
    record_history(clients, audit_stub(clients.address, certs_dir))
    for identity in ("dave", "erin"):
        error = rpc_error(audit_stub(clients.address, certs_dir, identity).GetAnchorGenesis,
                          apb.GetAnchorGenesisRequest())
        assert error.code() == grpc.StatusCode.NOT_FOUND and "no anchor has been made yet" in error.details()
    result = cli("export", "--server", clients.address, "--certs", str(certs_dir), "--identity", "dave",
                 "--out", str(tmp_path / "bundle"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert bundle.read_json(tmp_path / "bundle", bundle.ANCHOR_GENESIS, default="absent") is None


class FailingSource(LedgerSource):
    """The local source, failing after the first page of events (a connection lost mid-export)."""

    def event_pages(self, size):
        pages = super().event_pages(size)
        yield next(pages)
        raise ConnectionError("lost")


def test_an_export_that_fails_midway_removes_what_it_wrote(server, clients, certs_dir, tmp_path):
    """events.bin is already open when the source fails: the directory the export made is gone afterwards."""
    record_history(clients, audit_stub(clients.address, certs_dir))
    out = tmp_path / "new" / "bundle"
    with pytest.raises(ConnectionError):
        write_bundle(FailingSource(server.ledger, server.signer.public_key_raw), out, progress=lambda n: None)
    assert not out.exists() and out.parent.exists()
    given = tmp_path / "given"
    given.mkdir()
    with pytest.raises(ConnectionError):
        write_bundle(FailingSource(server.ledger, server.signer.public_key_raw), given)
    assert given.exists() and list(given.iterdir()) == []


def token_text(text: str) -> str:
    """A token in our encoding whose text is `text` ({kind} becomes the list's kind)."""
    return base64.urlsafe_b64encode(text.encode()).decode()


BAD_REQUESTS = [  # (fields of the request, the field violations expected); {kind}: the list's own kind
    ({"tree_size_max": -1, "page_size": 10}, {"tree_size_max": "MUST_NOT_BE_NEGATIVE"}),
    ({"page_size": 0}, {"page_size": "PAGE_SIZE_OUT_OF_RANGE"}),
    ({"page_size": -5}, {"page_size": "PAGE_SIZE_OUT_OF_RANGE"}),
    ({"page_size": limits.PAGE_SIZE_MAX + 1}, {"page_size": "PAGE_SIZE_OUT_OF_RANGE"}),
    ({"page_size": 10, "page_token": "not a token"}, {"page_token": "PAGE_TOKEN_INVALID"}),
    ({"page_size": 10, "page_token": token_text("events:3")}, {"page_token": "PAGE_TOKEN_INVALID"}),
    ({"page_size": 10, "page_token": token_text("{kind}:-1")}, {"page_token": "PAGE_TOKEN_INVALID"}),
    ({"page_size": 10, "page_token": token_text("{kind}:" + "9" * 20)}, {"page_token": "PAGE_TOKEN_INVALID"}),
    ({"tree_size_max": -2, "page_size": 0, "page_token": "not a token"},
     {"tree_size_max": "MUST_NOT_BE_NEGATIVE", "page_size": "PAGE_SIZE_OUT_OF_RANGE",
      "page_token": "PAGE_TOKEN_INVALID"}),
]


@pytest.mark.parametrize("method,kind", [("ListTreeHeads", "tree_heads"), ("ListAnchors", "anchors")])
def test_bad_list_requests_are_invalid_arguments_with_field_violations(clients, certs_dir, method, kind):
    """Every malformed field is named with its rule, all of them in one answer; the bounds themselves pass."""
    call = getattr(audit_stub(clients.address, certs_dir), method)
    request_type = getattr(apb, f"{method}Request")
    call(request_type(page_size=limits.PAGE_SIZE_MAX), timeout=10)
    call(request_type(page_size=1, page_token=token_text(f"{kind}:0")), timeout=10)
    for fields, expected in BAD_REQUESTS:
        if "page_token" in fields:
            fields = {**fields, "page_token": _with_kind(fields["page_token"], kind)}
        error = rpc_error(call, request_type(**fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, error.details())
        assert violations(error) == expected, fields


def _with_kind(token: str, kind: str) -> str:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        return token
    return token_text(text.replace("{kind}", kind))


@pytest.mark.parametrize("method", ["ListTreeHeads", "ListAnchors"])
def test_a_tree_size_max_beyond_the_log_is_out_of_range(clients, certs_dir, method):
    open_account(clients.alice, "vault-a")
    call = getattr(audit_stub(clients.address, certs_dir), method)
    request_type = getattr(apb, f"{method}Request")
    assert call(request_type(tree_size_max=1, page_size=5), timeout=10) is not None
    error = rpc_error(call, request_type(tree_size_max=2, page_size=5))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and "tree_size_max" in error.details()


def test_tree_heads_are_listed_page_by_page_up_to_the_size_asked(server, clients, certs_dir):
    """Pages of two, in order of size, only heads of at most tree_size_max events; the last page has no token."""
    audit = audit_stub(clients.address, certs_dir)
    record_history(clients, audit)
    stored = [h.tree_size for h in server.ledger.store.list_tree_heads()]
    assert stored == [1, 3, 6, 9, 12]  # one head per commit; the superseded ones pruned but one in three

    def listed(**bounds) -> tuple[list[int], int]:
        sizes, token, pages = [], "", 0
        while True:
            page = audit.ListTreeHeads(apb.ListTreeHeadsRequest(page_size=2, page_token=token, **bounds), timeout=10)
            sizes += [head.tree_size for head in page.tree_heads]
            pages, token = pages + 1, page.next_page_token
            if not token:
                return sizes, pages
    assert listed() == ([1, 3, 6, 9, 12], 3)
    assert listed(tree_size_max=11) == ([1, 3, 6, 9], 2)
    assert listed(tree_size_max=5) == ([1, 3], 1)
    assert listed(tree_size_max=0) == ([], 1)
    head = audit.ListTreeHeads(apb.ListTreeHeadsRequest(page_size=1, tree_size_max=1), timeout=10).tree_heads[0]
    assert head.root_hash == server.ledger.store.load_tree_head(1).root_hash and len(head.signature) == 64


# --- anchors from a real demo run (embedded regtest chain) ------------------------------------------------

@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """`reserve-ledger demo` (one anchor followed to 6 confirmations), then a server on its data dir."""
    data_dir = tmp_path_factory.mktemp("export-grpc") / "demo"
    run = cli("demo", "--data-dir", str(data_dir), timeout_s=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=str(data_dir),
                                       certs_dir=str(data_dir / "certs"))).start()
    yield server, data_dir
    server.stop(grace_s=1)


def test_anchors_listed_over_grpc_match_the_store(demo_server):
    """Every anchor row the exporter writes, one per page, equals the stored row; tree_size_max filters them."""
    server, data_dir = demo_server
    audit = audit_stub(f"127.0.0.1:{server.port}", data_dir / "certs")
    stored = [bundle_fields(row) for row in server.ledger.store.list_anchors()]
    assert stored and stored[0]["block_header"] and stored[0]["state"] == "anchored"
    listed, token = [], ""
    while True:
        page = audit.ListAnchors(apb.ListAnchorsRequest(page_size=1, page_token=token), timeout=10)
        listed += [bundle_fields(anchor_of_proto(anchor)) for anchor in page.anchors]
        token = page.next_page_token
        if not token:
            break
    assert listed == stored
    genesis = audit.GetAnchorGenesis(apb.GetAnchorGenesisRequest(), timeout=10)
    first = server.ledger.store.list_anchors()[0]
    assert (genesis.txid, genesis.vout) == (first.prev_txid, first.prev_vout)
    assert server.ledger.store.load_anchor_genesis() == Outpoint(first.prev_txid, first.prev_vout)
    smallest = min(row["tree_size"] for row in stored)
    below = audit.ListAnchors(apb.ListAnchorsRequest(page_size=10, tree_size_max=smallest - 1), timeout=10)
    assert list(below.anchors) == []


def test_the_cli_export_over_grpc_with_headers_equals_the_local_one(demo_server, tmp_path):
    """`export --server --chain` and `export --data-dir --chain` on the demo give the same bytes, which audit clean."""
    server, data_dir = demo_server
    chain = f"regtest:{data_dir / 'regtest'}"
    remote = cli("export", "--server", f"127.0.0.1:{server.port}", "--certs", str(data_dir / "certs"),
                 "--identity", "dave", "--out", str(tmp_path / "grpc"), "--chain", chain)
    assert remote.returncode == 0, remote.stdout + remote.stderr
    local = cli("export", "--data-dir", str(data_dir), "--out", str(tmp_path / "local"), "--chain", chain)
    assert local.returncode == 0, local.stdout + local.stderr
    assert remote.stdout.partition(": ")[2] == local.stdout.partition(": ")[2]
    assert "1 anchors" in local.stdout and files_of(tmp_path / "grpc") == files_of(tmp_path / "local")
    assert bundle.read_json(tmp_path / "grpc", bundle.ANCHOR_GENESIS)["txid"]   # a genesis, the same on both
    audited = cli("audit", str(tmp_path / "grpc"))
    assert audited.returncode == 0, audited.stdout


def test_server_mode_refuses_local_storage_options(tmp_path):
    """--server is exclusive with --data-dir/--database; --certs/--identity go with it; the key is the server's."""
    out = str(tmp_path / "bundle")
    both = cli("export", "--server", "127.0.0.1:1", "--data-dir", str(tmp_path), "--out", out)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    missing = cli("export", "--server", "127.0.0.1:1", "--certs", str(tmp_path), "--out", out)
    assert missing.returncode == 2 and "--identity" in missing.stderr
    stray = cli("export", "--data-dir", str(tmp_path), "--identity", "dave", "--out", out)
    assert stray.returncode == 2 and "--server" in stray.stderr
    key = cli("export", "--server", "127.0.0.1:1", "--certs", str(tmp_path), "--identity", "dave",
              "--public-key", "00" * 32, "--out", out)
    assert key.returncode == 2 and "public key comes from the server" in key.stderr
    assert not (tmp_path / "bundle").exists()
