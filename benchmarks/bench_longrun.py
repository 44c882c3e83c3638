"""Does the service stay flat as history grows? A long mixed load, reported window by window.

    python benchmarks/bench_longrun.py --minutes 10 [--clients 8] [--window-s 60] [--data-dir DIR]
    python benchmarks/bench_longrun.py --prefill-purchases 1000000 --data-dir DIR --minutes 1
    python benchmarks/bench_longrun.py --database postgresql://postgres@127.0.0.1:5432/test --replicas 2 --minutes 3

Starts `reserve-ledger serve` on SQLite as a child process (mTLS on loopback), opens and funds 8 accounts,
times `--probe` GetBalances calls from one idle client (p50/p99), then N client threads (one channel each)
run the mix until the time is up: 45 % RecordPurchase, 40 % ProposeTransfer then ApproveTransfer (by a second
identity), 10 % GetBalances, 5 % ListEvents (a page of 100 from a random position). Each window prints calls/s,
commands/s (events recorded), p50/p99 in ms per call type and the server's resident memory (VmRSS); the end
compares the last window with the first. With --prefill-purchases the data dir first receives that many
purchases straight through the application (group-committed batches, no gRPC), one signed tree head and a
sealed projection, so that the probe and the load run on a long history.

With --database URL the servers run on PostgreSQL instead, in a fresh schema created in that database and
dropped at the end, all signing with one key file (--signing-key); --replicas N starts N of them on it.
Client c sends its purchases, proposals and reads to replica c mod N and its approvals to the next replica
(a replica decides against the shared log, so any replica may approve what another proposed). Each window
then prints one row for the whole system and one per replica (`1/r0`, ...), whose RSS is that process's.
The end also gives the CPU used over the load by each replica, this load generator, PostgreSQL's processes and
the whole machine (shared machines are noisy: read the figures with it), and each replica's mean commands per
group commit (from its metrics endpoint). With --profile FILE replica 0 runs under cProfile in every thread
(benchmarks/profile_threads.py) and the end lists the functions with the most own time.
"""

import argparse
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc
import psycopg
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
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


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


# --- storage ------------------------------------------------------------------------------------------------

class Storage:
    """Where the servers keep the ledger: a SQLite data dir, or a fresh schema in a PostgreSQL database (created
    here, dropped by `drop`) with a key file every replica signs with."""

    def __init__(self, data_dir: pathlib.Path, database: str | None):
        self.data_dir, self.base_url, self.schema = data_dir, database, None
        self.key_path = data_dir / SIGNING_KEY_FILE_NAME
        if database:
            self.schema = "longrun_" + uuid.uuid4().hex[:12]
            with psycopg.connect(database, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'CREATE SCHEMA "{self.schema}"')

    @property
    def database_url(self) -> str | None:
        if self.schema is None:
            return None
        return f"{self.base_url}{'&' if '?' in self.base_url else '?'}schema={self.schema}"

    def config(self) -> compose.StorageConfig:
        if self.database_url:
            return compose.StorageConfig(database_url=self.database_url)
        return compose.StorageConfig(data_dir=str(self.data_dir))

    def serve_args(self) -> list[str]:
        if self.database_url:
            return ["--database", self.database_url, "--signing-key", str(self.key_path)]
        return ["--data-dir", str(self.data_dir)]

    def drop(self) -> None:
        if self.schema is not None:
            with psycopg.connect(self.base_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


# --- prefill ------------------------------------------------------------------------------------------------

def prefill(storage: Storage, purchases: int) -> None:
    """`purchases` purchases through the application, a signed head over the log and a sealed projection."""
    ledger = compose.open_ledger(storage.config(), create=True,
                                 proofs=compose.sealing_proofs(storage.key_path, create=True))
    started, t = time.perf_counter(), T0_US
    ledger.execute([(command, OPERATOR) for command in opening_commands()], t)
    for start in range(0, purchases, COMMAND_BATCH_MAX):
        t += 1000
        batch = [(cmd.RecordPurchase(f"pre-{n}", f"lr-{n % ACCOUNTS}", PURCHASE_SATS, "60000.00", "USD", "60.00",
                                     "Desk", f"P{n}", "2026-11-22"), OPERATOR)
                 for n in range(start, min(start + COMMAND_BATCH_MAX, purchases))]
        ledger.execute(batch, t)
    size = ledger.store.log_size()
    key = load_or_create_signing_key(storage.key_path)
    ledger.store.save_tree_head(sign_tree_head(key, size, merkle.root_hash(ledger.store, size), t))
    ledger.persist_projection()
    ledger.close()
    print(f"prefilled {purchases:,} purchases ({size:,} events) in {time.perf_counter() - started:.0f} s",
          flush=True)


# --- servers ------------------------------------------------------------------------------------------------

def start_server(certs_dir: str, storage: Storage, index: int, timeout_s: float,
                 profile: str | None = None) -> tuple[subprocess.Popen, str, str]:
    """Replica `index`; the first one is started with --init (it creates the tables and, on PostgreSQL, the key)
    and, given `profile`, under cProfile in every thread (benchmarks/profile_threads.py)."""
    port, metrics_port = _free_port(), _free_port()
    python = [sys.executable, str(ROOT / "benchmarks" / "profile_threads.py"), profile] if profile else [sys.executable]
    log_path = storage.data_dir.parent / f"{storage.data_dir.name}-server-{index}.log"
    log = open(log_path, "ab")   # a file: a pipe left unread would block
    init = ["--init"] if index == 0 else []
    process = subprocess.Popen([*python, "-m", "services.cli.main", "serve", *init, "--metrics-listen",
                                f"127.0.0.1:{metrics_port}", "--listen", f"127.0.0.1:{port}", "--certs", certs_dir,
                                *storage.serve_args()], stdout=log, stderr=log, cwd=ROOT)
    health = health_pb2_grpc.HealthStub(secure_channel(f"127.0.0.1:{port}", certs_dir, "dave"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service="reserve_ledger.v1.ReserveLedgerService"),
                                 timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return process, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
        except grpc.RpcError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server {index} did not become healthy (log: {log_path})")


def start_servers(certs_dir: str, storage: Storage, replicas: int, timeout_s: float, profile: str | None = None):
    """The replicas one after the other (the first creates what the others open); stopped if any fails."""
    servers = []
    try:
        for index in range(replicas):
            servers.append(start_server(certs_dir, storage, index, timeout_s, profile if index == 0 else None))
    except BaseException:
        stop_servers([server[0] for server in servers])
        raise
    return tuple(list(column) for column in zip(*servers))


def stop_servers(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


def batch_totals(metrics_url: str) -> tuple[float, float]:
    """(commands, group commits) so far, from the replica's group-commit batch-size histogram."""
    import urllib.request
    with urllib.request.urlopen(metrics_url, timeout=30) as reply:
        text = reply.read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                  if line.startswith("reserve_ledger_group_commit_batch_size_"))
    return (float(values["reserve_ledger_group_commit_batch_size_sum"]),
            float(values["reserve_ledger_group_commit_batch_size_count"]))


def mean_batches(before: list[tuple[float, float]], metrics_urls: list[str]) -> str:
    cells = []
    for replica, (url, (commands, commits)) in enumerate(zip(metrics_urls, before)):
        commands_now, commits_now = batch_totals(url)
        cells.append(f"r{replica} {(commands_now - commands) / max(commits_now - commits, 1):.1f} "
                     f"({commits_now - commits:.0f} commits)")
    return "commands per group commit during the load: " + ", ".join(cells)


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on this machine (the server is local; other users' backends count too)."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot (/proc/stat; idle and iowait count as not busy)."""
    ticks = [int(field) for field in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


class CpuMeter:
    """CPU seconds spent by the replicas, this load generator and PostgreSQL between start and `shares`."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.started = time.perf_counter()
        self.replicas = [cpu_s(pid) for pid in pids]
        self.client = time.process_time()
        self.postgres = {pid: cpu_s(pid) for pid in postgres_pids()}
        self.machine = machine_jiffies()

    def shares(self) -> str:
        wall_s = time.perf_counter() - self.started
        replicas = [cpu_s(pid) - before for pid, before in zip(self.pids, self.replicas)]
        postgres = sum(cpu_s(pid) - self.postgres.get(pid, 0.0) for pid in postgres_pids())
        cells = ", ".join(f"r{i} {used / wall_s:.2f}" for i, used in enumerate(replicas))
        busy, total = (now - then for now, then in zip(machine_jiffies(), self.machine))
        return (f"CPU, in cores busy over the load: replicas {cells}; load generator "
                f"{(time.process_time() - self.client) / wall_s:.2f}; PostgreSQL {postgres / wall_s:.2f}; "
                f"whole machine {os.cpu_count() * busy / max(total, 1):.2f} of {os.cpu_count()}")


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- load ---------------------------------------------------------------------------------------------------

class Load:
    """Client threads running the mix; each call is recorded as (end time, call type, latency s, ok, replica).
    Client c calls replica c mod N, and approves on replica c + 1 mod N (the same one when N is 1)."""

    def __init__(self, addresses: list[str], certs_dir: str, clients: int):
        self.replicas = len(addresses)
        self.home = [c % self.replicas for c in range(clients)]
        self.away = [(c + 1) % self.replicas for c in range(clients)]
        self.operators = [ledger_stub(addresses[self.home[c]], certs_dir, "alice") for c in range(clients)]
        self.approvers = [ledger_stub(addresses[self.away[c]], certs_dir, "bob") for c in range(clients)]
        self.auditors = [ledger_stub(addresses[self.home[c]], certs_dir, "dave") for c in range(clients)]
        self.records: list[tuple[float, str, float, bool, int]] = []
        self.last_position = 0
        self.stop_at = 0.0

    def timed(self, call_type: str, call, request, replica: int):
        started = time.perf_counter()
        try:
            reply = call(request, timeout=60)
        except grpc.RpcError:
            reply = None
        ended = time.perf_counter()
        self.records.append((ended, call_type, ended - started, reply is not None, replica))
        return reply

    def step(self, client: int, n: int, rng: random.Random) -> None:
        roll, home = rng.random(), self.home[client]
        if roll < 0.45:
            reply = self.timed("RecordPurchase", self.operators[client].RecordPurchase, purchase_request(client, n),
                               home)
        elif roll < 0.85:
            reply = self.transfer(client, n, rng)
        elif roll < 0.95:
            self.timed("GetBalances", self.auditors[client].GetBalances, pb.GetBalancesRequest(), home)
            return
        else:
            start = rng.randrange(max(self.last_position, 1))
            self.timed("ListEvents", self.auditors[client].ListEvents,
                       pb.ListEventsRequest(start_position=start, page_size=100), home)
            return
        if reply is not None:
            self.last_position = max(self.last_position, reply.result.position)

    def transfer(self, client: int, n: int, rng: random.Random):
        """Propose on the client's replica, approve on the next one."""
        debit, credit = rng.sample(range(ACCOUNTS), 2)
        reply = self.timed("ProposeTransfer", self.operators[client].ProposeTransfer, pb.ProposeTransferRequest(
            request_id=f"lt-{client}-{n}-{time.time_ns()}", debit_account_id=f"lr-{debit}",
            credit_account_id=f"lr-{credit}", amount_sats=TRANSFER_SATS, memo="long run"), self.home[client])
        if reply is None:
            return None
        return self.timed("ApproveTransfer", self.approvers[client].ApproveTransfer, pb.ApproveTransferRequest(
            request_id=f"la-{client}-{n}-{time.time_ns()}", transfer_id=reply.transfer_id), self.away[client])

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


def window_row(records, start: float, end: float, replica: int | None = None) -> dict:
    """The calls that ended in [start, end), of every replica or of one."""
    inside = [r for r in records if start <= r[0] < end and (replica is None or r[4] == replica)]
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
    storage = Storage(data_dir, args.database)
    try:
        if args.prefill_purchases:
            prefill(storage, args.prefill_purchases)
        print(f"storage: {'PostgreSQL schema ' + storage.schema if storage.schema else 'SQLite'}, "
              f"{args.replicas} replica(s)", flush=True)
        servers, addresses, metrics_urls = start_servers(certs_dir, storage, args.replicas, args.start_timeout_s,
                                                         args.profile)
        try:
            open_accounts(addresses[0], certs_dir)
            if args.probe:
                probe_balances(addresses[0], certs_dir, args.probe)
            batches = [batch_totals(url) for url in metrics_urls]
            report(Load(addresses, certs_dir, args.clients), [server.pid for server in servers], args)
            print(mean_batches(batches, metrics_urls), flush=True)
        finally:
            stop_servers(servers)
    finally:
        storage.drop()
    if args.profile:
        print_profile(args.profile)


def print_profile(path: str) -> None:
    """Replica 0's threads merged: where its wall time went, by own time (builtins included)."""
    import pstats
    print(f"replica 0 under cProfile (every thread; {path}), the 25 functions with the most own time:")
    pstats.Stats(path, stream=sys.stdout).sort_stats("tottime").print_stats(25)


def open_accounts(address: str, certs_dir: str) -> None:
    setup = ledger_stub(address, certs_dir, "alice")
    for command in opening_commands():
        call = setup.OpenAccount if isinstance(command, cmd.OpenAccount) else setup.RecordPurchase
        call(opening_request(command), timeout=60)


def opening_request(command: cmd.Command):
    if isinstance(command, cmd.OpenAccount):
        return pb.OpenAccountRequest(request_id=command.request_id, account_id=command.account_id,
                                     kind=pb.ACCOUNT_KIND_COLD, custodian=command.custodian,
                                     wallet_label=command.wallet_label, quorum=pb.Quorum(required=2, total=3))
    return pb.RecordPurchaseRequest(
        request_id=command.request_id, account_id=command.account_id, quantity_sats=command.quantity_sats,
        price_per_btc=command.price_per_btc, currency_code=command.currency_code, fiat_total=command.fiat_total,
        counterparty=command.counterparty, trade_reference=command.trade_reference, trade_date=command.trade_date)


def report(load: Load, pids: list[int], args) -> None:
    seconds = args.minutes * 60
    print(f"{args.clients} clients for {seconds:.0f} s over {len(pids)} replica(s), windows of {args.window_s:.0f} s; "
          "latencies p50/p99 ms", flush=True)
    print(HEADER, flush=True)
    rss_start = sum(rss_mb(pid) for pid in pids)
    cpu = CpuMeter(pids)
    began = time.perf_counter()
    threads = load.start(seconds)
    rows, rss = [], []
    for index in range(max(1, round(seconds / args.window_s))):
        end = began + (index + 1) * args.window_s
        time.sleep(max(0.0, end - time.perf_counter()))
        rows.append(print_window(load, pids, index, end - args.window_s, end))
        rss.append(sum(rss_mb(pid) for pid in pids))
    for thread in threads:
        thread.join()
    print(cpu.shares())
    summarize(load, pids, rows, began, began + len(rows) * args.window_s)
    print(f"server RSS: {rss_start:.0f} MB before the load, {rss[-1]:.0f} MB at the end "
          f"(growth {rss[-1] - rss[0]:+.0f} MB since the first window); log position {load.last_position:,}")


def print_window(load: Load, pids: list[int], index: int, start: float, end: float) -> dict:
    """The system's row, then (with several replicas) one row per replica."""
    row = window_row(load.records, start, end)
    print_row(str(index + 1), row, sum(rss_mb(pid) for pid in pids))
    if len(pids) > 1:
        for replica, pid in enumerate(pids):
            print_row(f"{index + 1}/r{replica}", window_row(load.records, start, end, replica), rss_mb(pid))
    return row


def summarize(load: Load, pids: list[int], rows: list[dict], start: float, end: float) -> None:
    first, last = rows[0], rows[-1]
    whole = window_row(load.records, start, end)
    shares = ", ".join(f"r{replica} {window_row(load.records, start, end, replica)['commands_per_s']:.0f}"
                       for replica in range(len(pids)))
    print(f"whole run: {whole['calls_per_s']:.0f} calls/s, {whole['commands_per_s']:.0f} commands/s "
          f"({shares}), {whole['errors']} errors")
    balances_first, balances_last = first["cuts"]["GetBalances"][0], last["cuts"]["GetBalances"][0]
    print(f"last / first window commands/s: {last['commands_per_s'] / max(first['commands_per_s'], 1e-9):.2f}")
    print(f"GetBalances p50 last / first window: {balances_last / balances_first:.2f} "
          f"({balances_first:.1f} -> {balances_last:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--data-dir", help="where the ledger's data dir goes (default: a new temporary dir; with "
                        "--database it holds the signing key and the server logs)")
    parser.add_argument("--database", metavar="URL", help="a PostgreSQL database (no ?schema=): the run creates a "
                        "fresh schema in it and drops it at the end")
    parser.add_argument("--replicas", type=int, default=1, help="server processes on the same database")
    parser.add_argument("--prefill-purchases", type=int, default=0)
    parser.add_argument("--probe", type=int, default=200, help="GetBalances calls timed alone before the load")
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument("--profile", metavar="FILE", help="run replica 0 under cProfile in every thread and "
                        "write its statistics here (pstats); slows that replica down")
    args = parser.parse_args()
    if args.replicas < 1 or (args.replicas > 1 and not args.database):
        parser.error("--replicas N > 1 needs --database (replicas share a PostgreSQL database)")
    if args.database and "schema=" in args.database:
        parser.error("--database: give the database without ?schema= (the run makes its own schema)")
    run(args)


if __name__ == "__main__":
    main()
