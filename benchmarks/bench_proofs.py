"""Merkle log costs: append overhead while filling, and proof latency on a large log.

    python benchmarks/bench_proofs.py --events 1000000 [--data-dir DIR | --database URL] [--samples 2000]

Fills the store (as bench_replay.py does, group-committed batches) while timing the part of each insert
transaction spent on the log (canonical bytes, leaf and subtree hashes, ledger_log and merkle_nodes rows),
then times inclusion proofs (random leaf, current size) and consistency proofs (random older size to the
current size) computed from the stored subtrees, and verifies every one of them.
"""

import argparse
import pathlib
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_replay import fill  # noqa: E402

from ledger import merkle  # noqa: E402
from ledger.application import ReserveLedger  # noqa: E402
from services.store import recorders as storage  # noqa: E402
from services.store.config import storage_env  # noqa: E402


def timed_fill(ledger: ReserveLedger, events: int) -> tuple[float, float]:
    """Fill to `events`; returns (total seconds, seconds spent in the log's part of the inserts)."""
    spent = [0.0]
    original = storage._LedgerTables._append_log

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    storage._LedgerTables._append_log = timed
    try:
        started = time.perf_counter()
        fill(ledger, events)
        return time.perf_counter() - started, spent[0]
    finally:
        storage._LedgerTables._append_log = original


def percentiles(samples_s: list[float]) -> str:
    cuts = statistics.quantiles(samples_s, n=100)
    return f"p50 {cuts[49] * 1000:.3f} ms   p99 {cuts[98] * 1000:.3f} ms"


def measure_proofs(store, size: int, samples: int, rng: random.Random) -> None:
    root = merkle.root_hash(store, size)
    inclusion, consistency, lengths = [], [], []
    for _ in range(samples):
        index = rng.randrange(size)
        started = time.perf_counter()
        proof = merkle.inclusion_proof(store, index, size)
        inclusion.append(time.perf_counter() - started)
        leaf = store.get_nodes([(0, index)])[(0, index)]
        assert merkle.verify_inclusion(leaf, index, size, proof, root)
        lengths.append(len(proof))
    for _ in range(samples):
        first = rng.randrange(1, size)
        started = time.perf_counter()
        proof = merkle.consistency_proof(store, first, size)
        consistency.append(time.perf_counter() - started)
        assert merkle.verify_consistency(first, size, merkle.root_hash(store, first), root, proof)
    print(f"inclusion proof (size {size:,}):   {percentiles(inclusion)}   ({max(lengths)} hashes at most)")
    print(f"consistency proof (to {size:,}):  {percentiles(consistency)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--data-dir")
    parser.add_argument("--database")
    args = parser.parse_args()
    ledger = ReserveLedger(storage_env(args.data_dir or tempfile.mkdtemp(prefix="bench-proofs-"), args.database))
    if ledger.store.log_size() < args.events:
        before = ledger.store.log_size()
        total_s, log_s = timed_fill(ledger, args.events)
        added = ledger.store.log_size() - before
        print(f"filled {added:,} events in {total_s:.1f} s ({added / total_s:,.0f} events/s)")
        print(f"log part of the inserts (bytes, leaf, subtrees, rows): {log_s / added * 1e6:.1f} us/event, "
              f"{log_s / total_s:.1%} of the fill time")
    measure_proofs(ledger.store, ledger.store.log_size(), args.samples, random.Random(11))
    ledger.close()


if __name__ == "__main__":
    main()
