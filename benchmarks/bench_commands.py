"""Durable commands per second over gRPC with concurrent clients, against a trivial echo server, in one run.

    python benchmarks/bench_commands.py [--clients 16] [--seconds 20] [--database URL]

Starts real servers as child processes on loopback, all with mTLS:
  * `reserve-ledger serve` on a fresh SQLite data dir (or the given PostgreSQL database);
  * an echo server (`python benchmarks/bench_commands.py echo-server PORT CERTS aio`) on the ledger's own
    stack: grpc.aio with a plain sync handler that returns its request, run in a pool of the same size as
    the ledger's call pool: the ceiling this server model allows on this machine (the ratio's baseline);
  * for reference, the same echo on gRPC's sync server (`... sync`, a thread pool of the same size), the
    model the ledger used before it moved to grpc.aio (`--no-sync-echo` skips it).
Then N client threads (one channel each) send RecordPurchase commands (each one a durable event, acknowledged
only after its commit) for the given time, and the same number of threads send requests of the same size to
each echo server in turn. Prints calls/s, p50 and p99 latency for each, and the ratio ledger / echo (aio).
"""

import argparse
import asyncio
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # tests.e2e.processes starts servers

from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.certs import init_certs
from services.api.client import ledger_stub, secure_channel
from services.api.server import server_credentials
from services.compose import CALL_THREADS
from tests.e2e.processes import free_port, start_server

ECHO_METHOD = "/bench.Echo/Echo"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _echo_handler():
    """One unary method that returns its request bytes, nothing else (a plain sync function)."""
    return grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})


def serve_echo(port: int, certs_dir: str, stack: str) -> None:
    if stack == "aio":
        asyncio.run(_serve_echo_aio(port, certs_dir))
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=CALL_THREADS), handlers=[_echo_handler()],
                         options=[("grpc.so_reuseport", 0)])
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(certs_dir))
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


async def _serve_echo_aio(port: int, certs_dir: str) -> None:
    """grpc.aio runs the sync handler in its migration pool: the same hop as the ledger's call pool."""
    server = grpc.aio.server(futures.ThreadPoolExecutor(max_workers=CALL_THREADS), handlers=[_echo_handler()],
                             options=[("grpc.so_reuseport", 0)])
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(certs_dir))
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def start_echo(certs_dir: str, stack: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "echo-server", str(port), certs_dir, stack],
                               stdout=subprocess.PIPE, cwd=ROOT)
    if process.stdout.readline().strip() != b"ready":
        raise RuntimeError("echo server did not start")
    return process, f"127.0.0.1:{port}"


def purchase_request(client: int, n: int) -> pb.RecordPurchaseRequest:
    return pb.RecordPurchaseRequest(
        request_id=f"bench-{client}-{n}", account_id=f"bench-{client % 4}", quantity_sats=100_000,
        price_per_btc="60000.00", currency_code="USD", fiat_total="60.00", counterparty="Bench Desk",
        trade_reference=f"B-{client}-{n}", trade_date="2026-11-22")


def run_clients(call, clients: int, seconds: float) -> list[float]:
    """Each client thread calls `call(client, n)` back to back until the time is up; returns latencies (s)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop_at = time.perf_counter() + seconds

    def loop(client: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            call(client, n)
            latencies[client].append(time.perf_counter() - started)
            n += 1

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [x for per_client in latencies for x in per_client]


def summary(name: str, latencies: list[float], seconds: float) -> float:
    rate = len(latencies) / seconds
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{name:<28} {rate:10,.0f} calls/s   p50 {cuts[49] * 1000:7.2f} ms   p99 {cuts[98] * 1000:7.2f} ms")
    return rate


def measure(args) -> float:
    certs_dir = args.certs or tempfile.mkdtemp(prefix="bench-certs-")
    if not args.certs:
        init_certs(certs_dir)
    data_dir = tempfile.mkdtemp(prefix="bench-data-")
    ledger_process, ledger_address = start_server(certs_dir, data_dir, args.database)
    processes, echo_latencies = [ledger_process], {}
    try:
        stubs = [ledger_stub(ledger_address, certs_dir, "alice") for _ in range(args.clients)]
        for account in range(4):
            stubs[0].OpenAccount(pb.OpenAccountRequest(
                request_id=f"open-bench-{account}-{time.time_ns()}", account_id=f"bench-{account}",
                kind=pb.ACCOUNT_KIND_COLD, custodian="Bench Custody", wallet_label="bench",
                quorum=pb.Quorum(required=2, total=3)), timeout=10)
        ledger_latencies = run_clients(lambda c, n: stubs[c].RecordPurchase(purchase_request(c, n), timeout=30),
                                       args.clients, args.seconds)
        for stack in ("aio", "sync") if args.sync_echo else ("aio",):
            echo_process, echo_address = start_echo(certs_dir, stack)
            processes.append(echo_process)
            echo_latencies[stack] = run_echo(echo_address, certs_dir, args)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    print(f"{args.clients} concurrent clients, {args.seconds:.0f} s each, mTLS on loopback")
    ledger_rate = summary("ledger RecordPurchase", ledger_latencies, args.seconds)
    echo_rate = summary("echo, grpc.aio (same bytes)", echo_latencies["aio"], args.seconds)
    if "sync" in echo_latencies:
        summary("echo, sync server (reference)", echo_latencies["sync"], args.seconds)
    ratio = ledger_rate / echo_rate
    print(f"ledger / echo: {ratio:.2f} (echo on grpc.aio, the ledger's own stack)")
    return ratio


def run_echo(address: str, certs_dir: str, args) -> list[float]:
    calls = [secure_channel(address, certs_dir, "alice").unary_unary(ECHO_METHOD) for _ in range(args.clients)]
    payload = purchase_request(0, 0).SerializeToString()
    return run_clients(lambda c, n: calls[c](payload, timeout=30), args.clients, args.seconds)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "echo-server":
        serve_echo(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite in a temporary data dir)")
    parser.add_argument("--certs", help="existing certs dir (default: a fresh development CA)")
    parser.add_argument("--no-sync-echo", dest="sync_echo", action="store_false",
                        help="skip the reference echo on gRPC's sync server")
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
