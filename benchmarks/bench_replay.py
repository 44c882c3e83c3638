"""Replay speed: fold N events into fresh projections, beside a raw scan of the same table.

    python benchmarks/bench_replay.py --events 1000000 [--data-dir DIR | --database URL]

Fills the store with transfers between a few hundred accounts (group-committed batches, as the service
does), then times (1) a raw scan of the events table, (2) reading and parsing every event without folding
(the floor of any replay), (3) the fold without deciding each event again (what the live projection does for
events this process decided and checked itself) and (4) `ReserveLedger.rebuild()`, which reads the log,
parses every event, decides its command again (rules.check_recorded) and folds it. Prints events/s for each
and the ratio replay / raw scan.
"""

import argparse
import random
import sqlite3
import tempfile
import time

from ledger import commands as cmd
from ledger.application import ReserveLedger
from ledger.state import ReserveState
from services.store.config import storage_env

OPERATOR, APPROVER = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver")
ACCOUNTS = 300
BATCH = 256


def fill(ledger: ReserveLedger, events: int, seed: int = 7) -> None:
    rng, t = random.Random(seed), 1_790_000_000_000_000
    opening = [(cmd.OpenAccount(f"open-{i}", f"acct-{i}", "cold", f"custodian-{i % 12}", "w", 2, 3), OPERATOR)
               for i in range(ACCOUNTS)]
    opening += [(cmd.RecordPurchase(f"buy-{i}", f"acct-{i}", 5 * 10**8, "60000", "USD", "300000", "V", f"T{i}",
                                    "2026-11-02"), OPERATOR) for i in range(ACCOUNTS)]
    for start in range(0, len(opening), BATCH):
        ledger.execute(opening[start:start + BATCH], t)
    written, n = ledger.store.log_size(), 0
    while written < events:
        proposals = []
        for _ in range(min(BATCH // 2, (events - written) // 2 or 1)):
            a, b = rng.sample(range(ACCOUNTS), 2)
            proposals.append((cmd.ProposeTransfer(f"t-{n}", f"acct-{a}", f"acct-{b}", rng.randint(1, 10**6)), OPERATOR))
            n += 1
        outcomes = ledger.execute(proposals, t)
        approvals = [(cmd.ApproveTransfer(f"ok-{o.data['transfer_id']}", o.data["transfer_id"]), APPROVER)
                     for o in outcomes if hasattr(o, "data")]
        ledger.execute(approvals, t + 1)
        t += 1000
        if ledger.store.log_size() == written:
            raise RuntimeError(f"fill made no progress at {written} events: {outcomes[:3]}")
        written = ledger.store.log_size()


def raw_scan_s(ledger: ReserveLedger, env: dict) -> float:
    started = time.perf_counter()
    if env["PERSISTENCE_MODULE"].endswith("sqlite"):
        connection = sqlite3.connect(env["SQLITE_DBNAME"])
        count = sum(1 for _ in connection.execute("SELECT originator_version, topic, state FROM stored_events"))
    else:
        count = 0
        position = 0
        while True:
            rows = ledger.store.read_log(position, 5000)
            if not rows:
                break
            count += len(rows)
            position = rows[-1].position + 1
    assert count == ledger.store.log_size()
    return time.perf_counter() - started


def parse_only_s(ledger: ReserveLedger) -> float:
    """The floor of any replay: read every row through the store and parse its canonical bytes."""
    started = time.perf_counter()
    count = sum(1 for _ in ledger.iter_events(0))
    assert count == ledger.store.log_size()
    return time.perf_counter() - started


def own_fold_s_of(ledger: ReserveLedger) -> float:
    """Read, parse and fold every event without deciding it again (ReserveState.apply(decided_here=True))."""
    started, state = time.perf_counter(), ReserveState()
    for event in ledger.iter_events(0):
        state.apply(event, decided_here=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data-dir")
    parser.add_argument("--database")
    args = parser.parse_args()
    env = storage_env(args.data_dir or tempfile.mkdtemp(prefix="bench-replay-"), args.database)
    ledger = ReserveLedger(env)
    if ledger.store.log_size() < args.events:
        started = time.perf_counter()
        fill(ledger, args.events)
        print(f"filled {ledger.store.log_size():,} events in {time.perf_counter() - started:.1f} s")
    size = ledger.store.log_size()
    scan_s = raw_scan_s(ledger, env)
    parse_s, own_fold_s = parse_only_s(ledger), own_fold_s_of(ledger)
    started = time.perf_counter()
    state = ledger.rebuild()
    replay_s = time.perf_counter() - started
    assert state.position + 1 == size
    print(f"events: {size:,}")
    print(f"raw scan of the events table: {size / scan_s:12,.0f} events/s ({scan_s:.2f} s)")
    print(f"read and parse, no fold:      {size / parse_s:12,.0f} events/s ({parse_s:.2f} s)")
    print(f"fold without deciding again:  {size / own_fold_s:12,.0f} events/s ({own_fold_s:.2f} s; what the projection "
          "does for events this process decided)")
    print(f"replay into fresh projections: {size / replay_s:11,.0f} events/s ({replay_s:.2f} s)")
    print(f"replay / raw scan: {scan_s / replay_s:.2f}")
    ledger.close()


if __name__ == "__main__":
    main()
