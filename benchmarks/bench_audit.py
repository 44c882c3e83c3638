"""Export and offline audit of an N-event ledger: wall time and peak memory of each, in child processes.

    python benchmarks/bench_audit.py --events 1000000 [--data-dir DIR]

Fills a SQLite ledger (bench_replay.fill: transfers between a few hundred accounts) unless DIR already
holds N events, signs one tree head over the whole log, then runs `reserve-ledger export` and
`reserve-ledger audit` as child processes and reads each one's peak resident memory with os.wait4.
Targets for 1,000,000 events: audit <= 30 s and <= 300 MB.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench_replay import fill  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from ledger import merkle  # noqa: E402
from ledger.application import ReserveLedger  # noqa: E402
from services.store.config import storage_env  # noqa: E402
from services.store.signing import SIGNING_KEY_FILE_NAME, TreeHeadSigner, load_or_create_signing_key  # noqa: E402
from ledger.tree_heads import sign_tree_head  # noqa: E402


def timed_child(args: list[str]) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MB, exit status, stdout) of `reserve-ledger ARGS` run as a child process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, child.returncode, out


def prepared_ledger(data_dir: str, events: int, key_path: pathlib.Path) -> int:
    ledger = ReserveLedger(storage_env(data_dir, None))
    if ledger.store.log_size() < events:
        started = time.perf_counter()
        fill(ledger, events)
        print(f"filled {ledger.store.log_size():,} events in {time.perf_counter() - started:.1f} s")
    size = ledger.store.log_size()
    head = ledger.store.load_tree_head()
    if head is None or head.tree_size < size:
        key = load_or_create_signing_key(key_path)
        ledger.store.save_tree_head(sign_tree_head(key, size, merkle.root_hash(ledger.store, size),
                                                   1_790_000_000_000_000))
    started = time.perf_counter()
    signer = TreeHeadSigner(ledger.store, load_or_create_signing_key(key_path), lambda: 1_790_000_000_000_001)
    alarm = signer.open_log()  # what `serve` does before taking writes
    assert alarm is None, alarm
    check_s = time.perf_counter() - started
    print(f"start check (the latest head's root rebuilt from {size:,} stored events): {check_s:.1f} s, "
          f"{check_s / max(size, 1) * 1e6:.1f} us per event")
    ledger.close()
    return size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data-dir")
    parser.add_argument("--signing-key", metavar="FILE", help="key of the stored tree heads "
                                                              "(default DATA_DIR/tree-head-signing.key, created)")
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench-audit-")
    key_path = pathlib.Path(args.signing_key or pathlib.Path(data_dir) / SIGNING_KEY_FILE_NAME)
    size = prepared_ledger(data_dir, args.events, key_path)
    out = pathlib.Path(data_dir) / "bundle"
    shutil.rmtree(out, ignore_errors=True)
    export_s, export_mb, status, _ = timed_child(["export", "--data-dir", data_dir, "--out", str(out),
                                                  "--signing-key", str(key_path)])
    assert status == 0, "export failed"
    bundle_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    audit_s, audit_mb, status, report = timed_child(["audit", str(out)])
    assert status == 0 and report.startswith("OK: "), report[-2000:]
    print(f"events: {size:,}")
    print(f"export: {export_s:.1f} s, peak {export_mb:.0f} MB, bundle {bundle_mb:.1f} MB")
    print(f"audit: {audit_s:.1f} s, peak {audit_mb:.0f} MB ({size / audit_s:,.0f} events/s)")


if __name__ == "__main__":
    main()
