"""Durable commands per second over gRPC with concurrent clients, against a trivial echo server, in one run.

    python benchmarks/bench_commands.py [--clients 16] [--seconds 20] [--database URL]

Starts two real servers as child processes on loopback, both with mTLS and the same worker pool:
  * `reserve-ledger serve` on a fresh SQLite data dir (or the given PostgreSQL database);
  * an echo server (`python benchmarks/bench_commands.py echo-server ...`) whose one unary method returns
    its request: the ceiling this machine's gRPC stack allows.
Then N client threads (one channel each) send RecordPurchase commands (each one a durable event, acknowledged
only after its commit) for the given time, and the same number of threads send requests of the same size to
the echo server. Prints calls/s, p50 and p99 latency for both, and the ratio ledger / echo.
"""

import argparse
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


def serve_echo(port: int, certs_dir: str) -> None:
    """The echo server: one unary method that returns its request bytes, nothing else."""
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=CALL_THREADS), handlers=[handler],
                         options=[("grpc.so_reuseport", 0)])
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(certs_dir))
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def start_echo(certs_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "echo-server", str(port), certs_dir],
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
    echo_process, echo_address = start_echo(certs_dir)
    try:
        stubs = [ledger_stub(ledger_address, certs_dir, "alice") for _ in range(args.clients)]
        for account in range(4):
            stubs[0].OpenAccount(pb.OpenAccountRequest(
                request_id=f"open-bench-{account}-{time.time_ns()}", account_id=f"bench-{account}",
                kind=pb.ACCOUNT_KIND_COLD, custodian="Bench Custody", wallet_label="bench",
                quorum=pb.Quorum(required=2, total=3)), timeout=10)
        echo_calls = [secure_channel(echo_address, certs_dir, "alice").unary_unary(ECHO_METHOD)
                      for _ in range(args.clients)]
        payload = purchase_request(0, 0).SerializeToString()
        ledger_latencies = run_clients(lambda c, n: stubs[c].RecordPurchase(purchase_request(c, n), timeout=30),
                                       args.clients, args.seconds)
        echo_latencies = run_clients(lambda c, n: echo_calls[c](payload, timeout=30), args.clients, args.seconds)
    finally:
        for process in (ledger_process, echo_process):
            process.terminate()
            process.wait(timeout=30)
    print(f"{args.clients} concurrent clients, {args.seconds:.0f} s each, mTLS on loopback")
    ledger_rate = summary("ledger RecordPurchase", ledger_latencies, args.seconds)
    echo_rate = summary("echo (same request bytes)", echo_latencies, args.seconds)
    ratio = ledger_rate / echo_rate
    print(f"ledger / echo: {ratio:.2f}")
    return ratio


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "echo-server":
        serve_echo(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite in a temporary data dir)")
    parser.add_argument("--certs", help="existing certs dir (default: a fresh development CA)")
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
