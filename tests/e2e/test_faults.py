"""Faults are answered, not leaked: undecodable requests after authorisation, a full or read-only disk as
UNAVAILABLE with ErrorInfo (never UNKNOWN/INTERNAL, never internal text), workers that survive a storage
failure, health that says when writes are refused, and recovery when the disk is usable again."""

import contextlib
import os
import pathlib
import subprocess
import time
import urllib.request
import uuid

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.client import secure_channel
from services.api.server import WORKER_HEALTH_PREFIX, WRITES_HEALTH_NAME
from services.compose import ServerConfig, build_server
from tests.e2e.conftest import Clients
from tests.e2e.helpers import error_reason, funded, open_account, rpc_error, violations

GARBAGE = b"\xff\xff\xff\xff\x0f"   # a field header with a varint that never ends: not a protobuf message


def raw_call(address, certs_dir, identity, method, payload: bytes):
    channel = secure_channel(address, certs_dir, identity)
    call = channel.unary_unary(f"/reserve_ledger.v1.ReserveLedgerService/{method}",
                               request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=10)
    except grpc.RpcError as error:
        return error
    finally:
        channel.close()
    raise AssertionError("garbage was accepted")


def test_garbage_from_an_auditor_is_refused_for_the_role_and_from_an_operator_as_malformed(clients, certs_dir):
    auditor = raw_call(clients.address, certs_dir, "dave", "OpenAccount", GARBAGE)
    assert auditor.code() == grpc.StatusCode.PERMISSION_DENIED
    operator = raw_call(clients.address, certs_dir, "alice", "OpenAccount", GARBAGE)
    assert operator.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(operator) == {"request": "REQUEST_UNDECODABLE"}
    assert "Exception" not in operator.details()


@contextlib.contextmanager
def small_disk(tmp_path: pathlib.Path, size_mb: int = 24):
    """A tmpfs of its own: it can be filled and remounted read-only without touching the machine's disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {error}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: pathlib.Path) -> pathlib.Path:
    """Write a file until the filesystem is full; returns it (delete it to give the space back)."""
    filler = directory / "filler"
    with open(filler, "wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
                os.fsync(out.fileno())
    return filler


def health_of(address, certs_dir, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(secure_channel(address, certs_dir, "dave"))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def purchase_request(request_id: str) -> pb.RecordPurchaseRequest:
    return pb.RecordPurchaseRequest(
        request_id=request_id, account_id="cold-a", quantity_sats=100_000, price_per_btc="60000.00",
        currency_code="USD", fiat_total="60.00", counterparty="Coinbase Prime", trade_reference=request_id,
        trade_date="2026-11-02")


@pytest.fixture
def disk_server(tmp_path, certs_dir):
    with small_disk(tmp_path) as mount:
        server = build_server(ServerConfig(create_store=True, metrics_listen="127.0.0.1:0", listen="127.0.0.1:0",
                                           data_dir=str(mount / "data"), certs_dir=str(certs_dir),
                                           expiry_interval_s=0.5)).start()
        try:
            yield server, mount
        finally:
            server.stop(grace_s=1)


def test_a_full_disk_gives_unavailable_with_error_info_and_the_service_recovers(disk_server, certs_dir):
    server, mount = disk_server
    clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
    funded(clients, "cold-a", 2)
    open_account(clients.alice, "warm-b")
    expire_at_s = time.time() + 2
    transfer = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="t1", debit_account_id="cold-a", credit_account_id="warm-b", amount_sats=1000, memo="m",
        expire_time=timestamp_pb2.Timestamp(seconds=int(expire_at_s), nanos=int(expire_at_s % 1 * 1e9))), timeout=10)
    filler = fill(mount)
    failures = []
    for n in range(40):  # the WAL may still have room for a few pages; the disk refuses soon after
        try:
            clients.alice.RecordPurchase(purchase_request(f"full-{n}-{uuid.uuid4().hex[:6]}"), timeout=10)
        except grpc.RpcError as error:
            failures.append(error)
            if len(failures) >= 3:
                break
    assert failures, "the full disk never refused a write"
    for error in failures:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        assert error_reason(error) == "STORE_UNAVAILABLE"
        assert "disk" not in error.details() and "sqlite" not in error.details().lower()
    assert health_of(clients.address, certs_dir, WRITES_HEALTH_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
    wait_for(lambda: time.time() > expire_at_s + 1, what="the transfer's expiry")
    wait_for(lambda: health_of(clients.address, certs_dir, WORKER_HEALTH_PREFIX + "expiry")
             == health_pb2.HealthCheckResponse.NOT_SERVING, what="the expiry worker to report its failure")
    assert clients.dave.ListAccounts(pb.ListAccountsRequest(), timeout=10).accounts  # reads still served

    filler.unlink()
    wait_for(lambda: health_of(clients.address, certs_dir, WRITES_HEALTH_NAME)
             == health_pb2.HealthCheckResponse.SERVING, what="writes to be SERVING again")
    wait_for(lambda: not clients.dave.ListPending(pb.ListPendingRequest(), timeout=10).pending,
             what="the expiry worker to expire the due transfer after the disk came back")
    assert health_of(clients.address, certs_dir, WORKER_HEALTH_PREFIX + "expiry") == \
        health_pb2.HealthCheckResponse.SERVING
    clients.alice.RecordPurchase(purchase_request("after-recovery"), timeout=10)
    expired = rpc_error(clients.alice.ExpireTransfer, pb.ExpireTransferRequest(request_id="late",
                                                                               transfer_id=transfer.transfer_id))
    assert error_reason(expired) == "PENDING_ALREADY_RESOLVED"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'reserve_ledger_worker_failures{worker="expiry"}' in metrics
    assert 'outcome="UNAVAILABLE"' in metrics


def scrape(port: int) -> dict[str, float]:
    """The metrics page as {name{labels}: value} (comments dropped)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_the_metrics_endpoint_shows_calls_batches_streams_lag_heads_and_workers(tmp_path, certs_dir):
    server = build_server(ServerConfig(create_store=True, metrics_listen="127.0.0.1:0", listen="127.0.0.1:0",
                                       data_dir=str(tmp_path / "d"), certs_dir=str(certs_dir))).start()
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        funded(clients, "cold-a", 2)
        rpc_error(clients.alice.RecordPurchase, purchase_request(""))  # refused: no request_id
        stream = clients.dave.StreamEvents(pb.StreamEventsRequest(start_position=0))
        next(stream)  # the stream is open now
        server.signer.latest()
        during = scrape(server.metrics_port)
        stream.cancel()
        assert during['reserve_ledger_calls_total{method="RecordPurchase",outcome="OK"}'] >= 1
        assert during['reserve_ledger_calls_total{method="RecordPurchase",outcome="INVALID_ARGUMENT"}'] == 1
        assert during["reserve_ledger_group_commit_batch_size_count"] >= 2
        assert during["reserve_ledger_open_streams"] == 1
        assert during["reserve_ledger_log_size_events"] == 2
        assert 0 <= during["reserve_ledger_projection_lag_events"] <= 2
        assert during["reserve_ledger_tree_head_size_events"] == 2
        assert during["reserve_ledger_tree_head_age_seconds"] < 60
        assert during["reserve_ledger_writes_serving"] == 1
        assert during['reserve_ledger_worker_healthy{worker="expiry"}'] == 1
        assert "reserve_ledger_events_not_anchored" not in during   # no chain configured: not reported
        wait_for(lambda: scrape(server.metrics_port)["reserve_ledger_open_streams"] == 0, what="the stream to close")
    finally:
        server.stop(grace_s=1)


def test_a_history_of_maximal_accounts_exports_over_grpc_with_default_client_limits(tmp_path, certs_dir):
    """400 accounts with the documented maximum of addresses: 4.8 MB of events, more than gRPC's default 4 MiB
    receive limit in one batch; every page and batch is cut by bytes, so default clients read it all."""
    import hashlib
    import subprocess as sp
    import sys

    from ledger import limits
    from services.bitcoin.addresses import address_of_script_pubkey
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0",
                                       data_dir=str(tmp_path / "d"), certs_dir=str(certs_dir))).start()
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        for n in range(400):
            addresses = [address_of_script_pubkey(b"\x00\x20" + hashlib.sha256(f"{n}/{i}".encode()).digest(),
                                                  "regtest") for i in range(limits.ADDRESSES_MAX)]
            clients.alice.OpenAccount(pb.OpenAccountRequest(
                request_id=f"open-{n}", account_id=f"cold-{n:04d}", kind=pb.ACCOUNT_KIND_COLD, custodian="Vault",
                wallet_label="w" * 64, quorum=pb.Quorum(required=2, total=3), addresses=addresses), timeout=30)
        events = clients.dave.ListEvents(pb.ListEventsRequest(page_size=1000), timeout=30)
        assert events.next_page_token and len(events.events) < 400
        accounts = clients.dave.ListAccounts(pb.ListAccountsRequest(page_size=1000), timeout=30)
        assert accounts.next_page_token
        stream = clients.dave.StreamEvents(pb.StreamEventsRequest(start_position=0, batch_size=1000))
        first = next(stream)
        stream.cancel()
        assert 0 < len(first.events) < 400
        server.signer.latest()
        out = tmp_path / "bundle"
        export = sp.run([sys.executable, "-m", "services.cli.main", "export", "--server", clients.address,
                         "--certs", str(certs_dir), "--identity", "dave", "--out", str(out)],
                        capture_output=True, text=True, timeout=300)
        assert export.returncode == 0, export.stderr
        audit = sp.run([sys.executable, "-m", "services.cli.main", "audit", str(out)], capture_output=True,
                       text=True, timeout=300)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "400 events" in audit.stdout
    finally:
        server.stop(grace_s=1)


def test_streams_are_capped_per_identity_and_unary_calls_keep_their_threads(clients, certs_dir):
    """One auditor's idle follow streams stop at the per-identity cap (RESOURCE_EXHAUSTED with ErrorInfo), while
    another identity still opens one and unary calls and health are served."""
    from services.api.streams import STREAMS_PER_IDENTITY_MAX
    funded(clients, "cold-a", 1)
    streams = []
    try:
        for _ in range(STREAMS_PER_IDENTITY_MAX):
            stream = clients.dave.StreamEvents(pb.StreamEventsRequest(start_position=0))
            next(stream)
            streams.append(stream)
        refused = clients.dave.StreamEvents(pb.StreamEventsRequest(start_position=0))
        with pytest.raises(grpc.RpcError) as caught:
            next(refused)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(caught.value) == "STREAM_LIMIT_REACHED"
        other = clients.erin.StreamEvents(pb.StreamEventsRequest(start_position=0))
        assert next(other).next_position >= 1   # another identity still gets a stream
        other.cancel()
        for _ in range(50):  # unary calls are served while the streams sit idle
            assert clients.dave.ListAccounts(pb.ListAccountsRequest(), timeout=5).accounts
        assert health_of(clients.address, certs_dir, "reserve_ledger.v1.ReserveLedgerService") == \
            health_pb2.HealthCheckResponse.SERVING
        streams.pop().cancel()
        wait_for(lambda: _stream_opens(clients), what="a slot to free up after a stream closed")
    finally:
        for stream in streams:
            stream.cancel()


def _stream_opens(clients) -> bool:
    stream = clients.dave.StreamEvents(pb.StreamEventsRequest(start_position=0))
    try:
        next(stream)
        return True
    except grpc.RpcError:
        return False
    finally:
        stream.cancel()
