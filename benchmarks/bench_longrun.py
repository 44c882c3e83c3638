"""Does the service stay flat as history grows? A long mixed load, reported window by window.

    python benchmarks/bench_longrun.py --minutes 10 [--clients 8] [--window-s 60] [--data-dir DIR]
    python benchmarks/bench_longrun.py --prefill-purchases 1000000 --data-dir DIR --minutes 1

Starts `reserve-ledger serve` on SQLite as a child process (mTLS on loopback), opens and funds 8 accounts,
times `--probe` GetBalances calls from one idle client (p50/p99), then N client threads (one channel each)
run the mix until the time is up: 45 % RecordPurchase, 40 % ProposeTransfer then ApproveTransfer (by a second
identity), 10 % GetBalances, 5 % ListEvents (a page of 100 from a random position). Each window prints calls/s,
commands/s (events recorded), p50/p99 in ms per call type and the server's resident memory (VmRSS); the end
compares the last window with the first. With --prefill-purchases the data dir first receives that many
purchases straight through the application (group-committed batches, no gRPC), one signed tree head and a
sealed projection, so that the probe and the load run on a long history.
"""

import argparse
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ledger import commands as cmd  # noqa: E402
from ledger import merkle  # noqa: E402
from ledger.limits import COMMAND_BATCH_MAX  # noqa: E402
from ledger.tree_heads import sign_tree_head  # noqa: E402
from reserve_ledger.v1 import ledger_pb2 as pb  # noqa: E402
from services import compose  # noqa: E402
from services.api.certs import init_certs  # noqa: E402
from services.api.client import ledger_stub, secure_channel  # noqa: E402
from services.store.signing import SIGNING_KEY_FILE_NAME, load_or_create_signing_key  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACCOUNTS = 8
FUND_SATS = 10 * 100_000_000      # at the approval threshold: posted at once
PURCHASE_SATS, TRANSFER_SATS = 100_000, 1_000
CALL_TYPES = ("RecordPurchase", "ProposeTransfer", "ApproveTransfer", "GetBalances", "ListEvents")
COMMANDS = CALL_TYPES[:3]
OPERATOR, APPROVER = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver")
T0_US = 1_790_000_000_000_000


def opening_commands() -> list[cmd.Command]:
    """The accounts and their funding; the same request ids over gRPC replay them on a prefilled log."""
    opened = [cmd.OpenAccount(f"open-lr-{i}", f"lr-{i}", "cold", f"Custodian {i % 3}", "w", 2, 3)
              for i in range(ACCOUNTS)]
    funded = [cmd.RecordPurchase(f"fund-lr-{i}", f"lr-{i}", FUND_SATS, "60000.00", "USD", "600000.00", "Desk",
                                 f"F{i}", "2026-11-22") for i in range(ACCOUNTS)]
    return opened + funded


def purchase_request(client: int, n: int) -> pb.RecordPurchaseRequest:
    return pb.RecordPurchaseRequest(
        request_id=f"lr-{client}-{n}-{time.time_ns()}", account_id=f"lr-{client % ACCOUNTS}",
        quantity_sats=PURCHASE_SATS, price_per_btc="60000.00", currency_code="USD", fiat_total="60.00",
        counterparty="Desk", trade_reference=f"L-{client}-{n}", trade_date="2026-11-22")


# --- prefill ------------------------------------------------------------------------------------------------

def prefill(data_dir: pathlib.Path, purchases: int) -> None:
    """`purchases` purchases through the application, a signed head over the log and a sealed projection."""
    key_path = data_dir / SIGNING_KEY_FILE_NAME
    ledger = compose.open_ledger(compose.StorageConfig(data_dir=str(data_dir)), create=True,
                                 proofs=compose.sealing_proofs(key_path, create=True))
    started, t = time.perf_counter(), T0_US
    ledger.execute([(command, OPERATOR) for command in opening_commands()], t)
    for start in range(0, purchases, COMMAND_BATCH_MAX):
        t += 1000
        batch = [(cmd.RecordPurchase(f"pre-{n}", f"lr-{n % ACCOUNTS}", PURCHASE_SATS, "60000.00", "USD", "60.00",
                                     "Desk", f"P{n}", "2026-11-22"), OPERATOR)
                 for n in range(start, min(start + COMMAND_BATCH_MAX, purchases))]
        ledger.execute(batch, t)
    size = ledger.store.log_size()
    key = load_or_create_signing_key(key_path)
    ledger.store.save_tree_head(sign_tree_head(key, size, merkle.root_hash(ledger.store, size), t))
    ledger.persist_projection()
    ledger.close()
    print(f"prefilled {purchases:,} purchases ({size:,} events) in {time.perf_counter() - started:.0f} s",
          flush=True)


# --- server -------------------------------------------------------------------------------------------------

def start_server(certs_dir: str, data_dir: pathlib.Path, timeout_s: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(data_dir.parent / f"{data_dir.name}-server.log", "ab")   # a file: a pipe left unread would block
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "--init", "--metrics-listen",
                                "off", "--listen", f"127.0.0.1:{port}", "--certs", certs_dir,
                                "--data-dir", str(data_dir)], stdout=log, stderr=log, cwd=ROOT)
    health = health_pb2_grpc.HealthStub(secure_channel(f"127.0.0.1:{port}", certs_dir, "dave"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service="reserve_ledger.v1.ReserveLedgerService"),
                                 timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return process, f"127.0.0.1:{port}"
        except grpc.RpcError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not become healthy (log: {log.name})")


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- load ---------------------------------------------------------------------------------------------------

class Load:
    """Client threads running the mix; each call is recorded as (end time, call type, latency s, ok)."""

    def __init__(self, address: str, certs_dir: str, clients: int):
        self.operators = [ledger_stub(address, certs_dir, "alice") for _ in range(clients)]
        self.approvers = [ledger_stub(address, certs_dir, "bob") for _ in range(clients)]
        self.auditors = [ledger_stub(address, certs_dir, "dave") for _ in range(clients)]
        self.records: list[tuple[float, str, float, bool]] = []
        self.last_position = 0
        self.stop_at = 0.0

    def timed(self, call_type: str, call, request):
        started = time.perf_counter()
        try:
            reply = call(request, timeout=60)
        except grpc.RpcError:
            reply = None
        ended = time.perf_counter()
        self.records.append((ended, call_type, ended - started, reply is not None))
        return reply

    def step(self, client: int, n: int, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.45:
            reply = self.timed("RecordPurchase", self.operators[client].RecordPurchase, purchase_request(client, n))
        elif roll < 0.85:
            debit, credit = rng.sample(range(ACCOUNTS), 2)
            reply = self.timed("ProposeTransfer", self.operators[client].ProposeTransfer, pb.ProposeTransferRequest(
                request_id=f"lt-{client}-{n}-{time.time_ns()}", debit_account_id=f"lr-{debit}",
                credit_account_id=f"lr-{credit}", amount_sats=TRANSFER_SATS, memo="long run"))
            if reply is not None:
                reply = self.timed("ApproveTransfer", self.approvers[client].ApproveTransfer, pb.ApproveTransferRequest(
                    request_id=f"la-{client}-{n}-{time.time_ns()}", transfer_id=reply.transfer_id))
        elif roll < 0.95:
            self.timed("GetBalances", self.auditors[client].GetBalances, pb.GetBalancesRequest())
            return
        else:
            start = rng.randrange(max(self.last_position, 1))
            self.timed("ListEvents", self.auditors[client].ListEvents,
                       pb.ListEventsRequest(start_position=start, page_size=100))
            return
        if reply is not None:
            self.last_position = max(self.last_position, reply.result.position)

    def run_client(self, client: int) -> None:
        rng, n = random.Random(client), 0
        while time.perf_counter() < self.stop_at:
            self.step(client, n, rng)
            n += 1

    def start(self, seconds: float) -> list[threading.Thread]:
        self.stop_at = time.perf_counter() + seconds
        threads = [threading.Thread(target=self.run_client, args=(c,), daemon=True)
                   for c in range(len(self.operators))]
        for thread in threads:
            thread.start()
        return threads


def cuts_ms(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        return (latencies[0] * 1000,) * 2 if latencies else (float("nan"),) * 2
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def window_row(records, start: float, end: float) -> dict:
    inside = [r for r in records if start <= r[0] < end]
    by_type = {t: [r[2] for r in inside if r[1] == t and r[3]] for t in CALL_TYPES}
    seconds = end - start
    return {"calls_per_s": len(inside) / seconds, "errors": sum(1 for r in inside if not r[3]),
            "commands_per_s": sum(len(by_type[t]) for t in COMMANDS) / seconds,
            "cuts": {t: cuts_ms(by_type[t]) for t in CALL_TYPES}}


HEADER = ("window  calls/s  cmds/s  errors " + "  ".join(f"{t[:11]:>15}" for t in CALL_TYPES) + "  RSS MB")


def print_row(label: str, row: dict, rss: float) -> None:
    cells = "  ".join(f"{p50:6.1f}/{p99:7.1f}" for p50, p99 in (row["cuts"][t] for t in CALL_TYPES))
    print(f"{label:>6} {row['calls_per_s']:8.0f} {row['commands_per_s']:7.0f} {row['errors']:7d} {cells}  {rss:6.0f}",
          flush=True)


def probe_balances(address: str, certs_dir: str, calls: int) -> None:
    stub = ledger_stub(address, certs_dir, "dave")
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        reply = stub.GetBalances(pb.GetBalancesRequest(), timeout=60)
        latencies.append(time.perf_counter() - started)
    p50, p99 = cuts_ms(latencies)
    print(f"GetBalances alone, one client, log position {reply.position:,}: p50 {p50:.2f} ms  p99 {p99:.2f} ms "
          f"({calls} calls)", flush=True)


def run(args) -> None:
    certs_dir = tempfile.mkdtemp(prefix="longrun-certs-")
    init_certs(certs_dir)
    data_dir = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="longrun-data-")) / "ledger"
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.prefill_purchases:
        prefill(data_dir, args.prefill_purchases)
    server, address = start_server(certs_dir, data_dir, args.start_timeout_s)
    try:
        setup = ledger_stub(address, certs_dir, "alice")
        for command in opening_commands():
            call = setup.OpenAccount if isinstance(command, cmd.OpenAccount) else setup.RecordPurchase
            call(opening_request(command), timeout=60)
        if args.probe:
            probe_balances(address, certs_dir, args.probe)
        report(Load(address, certs_dir, args.clients), server.pid, args)
    finally:
        server.terminate()
        server.wait(timeout=120)


def opening_request(command: cmd.Command):
    if isinstance(command, cmd.OpenAccount):
        return pb.OpenAccountRequest(request_id=command.request_id, account_id=command.account_id,
                                     kind=pb.ACCOUNT_KIND_COLD, custodian=command.custodian,
                                     wallet_label=command.wallet_label, quorum=pb.Quorum(required=2, total=3))
    return pb.RecordPurchaseRequest(
        request_id=command.request_id, account_id=command.account_id, quantity_sats=command.quantity_sats,
        price_per_btc=command.price_per_btc, currency_code=command.currency_code, fiat_total=command.fiat_total,
        counterparty=command.counterparty, trade_reference=command.trade_reference, trade_date=command.trade_date)


def report(load: Load, pid: int, args) -> None:
    seconds = args.minutes * 60
    print(f"{args.clients} clients for {seconds:.0f} s, windows of {args.window_s:.0f} s; "
          "latencies p50/p99 ms", flush=True)
    print(HEADER, flush=True)
    rss_start = rss_mb(pid)
    began = time.perf_counter()
    threads = load.start(seconds)
    rows, rss = [], []
    for index in range(max(1, round(seconds / args.window_s))):
        end = began + (index + 1) * args.window_s
        time.sleep(max(0.0, end - time.perf_counter()))
        rows.append(window_row(load.records, end - args.window_s, end))
        rss.append(rss_mb(pid))
        print_row(str(index + 1), rows[-1], rss[-1])
    for thread in threads:
        thread.join()
    first, last = rows[0], rows[-1]
    balances_first, balances_last = first["cuts"]["GetBalances"][0], last["cuts"]["GetBalances"][0]
    print(f"last / first window commands/s: {last['commands_per_s'] / max(first['commands_per_s'], 1e-9):.2f}")
    print(f"GetBalances p50 last / first window: {balances_last / balances_first:.2f} "
          f"({balances_first:.1f} -> {balances_last:.1f} ms)")
    print(f"server RSS: {rss_start:.0f} MB before the load, {rss[-1]:.0f} MB at the end "
          f"(growth {rss[-1] - rss[0]:+.0f} MB since the first window); log position {load.last_position:,}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--data-dir", help="where the ledger's data dir goes (default: a new temporary dir)")
    parser.add_argument("--prefill-purchases", type=int, default=0)
    parser.add_argument("--probe", type=int, default=200, help="GetBalances calls timed alone before the load")
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
