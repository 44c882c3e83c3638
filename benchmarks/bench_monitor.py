"""The live reserves monitor's latency: from a block holding an unrecorded movement being mined to its alert
being recorded, on the embedded regtest chain (blocks validated by libbitcoinkernel).

    python benchmarks/bench_monitor.py [--accounts 100] [--rounds 20] [--block-txs 500] [--data-dir DIR]

Opens `--accounts` custody accounts (one address each, funded on chain to their ledger balance), then per
round: `--block-txs` unrelated transactions and one unrecorded movement between two custody accounts go into a
block; the clock starts when `mine` returns and stops when one monitor step has recorded the alerts. The
service polls every `--monitor-interval-s` (10 s by default), so its latency is this plus up to one interval.
"""

import argparse
import hashlib
import pathlib
import statistics
import sys
import tempfile
import time
from decimal import Decimal

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ledger import commands as cmd  # noqa: E402
from ledger.anchoring import internal_from_display  # noqa: E402
from ledger.application import ReserveLedger  # noqa: E402
from services.bitcoin.addresses import address_of_script_pubkey  # noqa: E402
from services.bitcoin.regtest.blocks import serialize_tx  # noqa: E402
from services.bitcoin.regtest.chain import ANYONE_CAN_SPEND, RegtestChain  # noqa: E402
from services.monitor.worker import ReservesMonitor  # noqa: E402
from services.store.config import sqlite_env  # noqa: E402

FUNDING_SATS = 100_000_000
MOVED_SATS = 1_000_000
FEE_SATS = 1_000
OPERATOR, SYSTEM = cmd.Caller("bench", "operator"), cmd.Caller("system", "system")


def witness_script(n: int) -> bytes:
    """`<n> OP_DROP OP_TRUE` (n as a 2-byte push): anyone may spend it, each account has its own address."""
    return b"\x02" + n.to_bytes(2, "little") + b"\x75\x51"


def script_pubkey(n: int) -> bytes:
    return b"\x00\x20" + hashlib.sha256(witness_script(n)).digest()


class Books:
    def __init__(self, directory: str):
        self.ledger = ReserveLedger(sqlite_env(directory))
        self._time_us = 1_800_000_000_000_000

    def run(self, command: cmd.Command, caller: cmd.Caller = SYSTEM):
        self._time_us += 1_000
        return self.ledger.execute([(command, caller)], self._time_us)[0]


def open_accounts(books: Books, count: int) -> None:
    fiat = format(Decimal(50000) * FUNDING_SATS / 10**8, "f")
    for n in range(count):
        address = address_of_script_pubkey(script_pubkey(n), "regtest")
        books.run(cmd.OpenAccount(f"open-{n}", f"acct-{n}", "cold", "C", "w", 1, 1, (address,)), OPERATOR)
        books.run(cmd.RecordPurchase(f"buy-{n}", f"acct-{n}", FUNDING_SATS, "50000", "USD", fiat, "V", "T",
                                     "2026-11-01"), OPERATOR)


def unrecorded_move(chain: RegtestChain, source: int, destination: int) -> str:
    coin = max(chain.utxos(script_pubkey(source)), key=lambda c: c.value_sats)
    raw = serialize_tx(2, [(internal_from_display(coin.txid), coin.vout, b"", 0xFFFFFFFD)],
                       [(MOVED_SATS, script_pubkey(destination)),
                        (coin.value_sats - MOVED_SATS - FEE_SATS, script_pubkey(source))], [[witness_script(source)]])
    return chain.broadcast(raw)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block-txs", type=int, default=500, help="unrelated transactions in each block")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    directory = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="bench-monitor-"))
    books = Books(str(directory / "data"))
    open_accounts(books, args.accounts)
    with RegtestChain.create(directory / "chain") as chain:
        for n in range(args.accounts):
            chain.send(script_pubkey(n), FUNDING_SATS)
        chain.mine(1)
        monitor = ReservesMonitor(books.ledger, chain, books.run)
        started_s = time.perf_counter()
        monitor.step()
        baseline_ms = (time.perf_counter() - started_s) * 1000
        latencies_ms, quiet_ms = [], []
        for round_ in range(args.rounds):
            for _ in range(args.block_txs):
                chain.send(ANYONE_CAN_SPEND, 10_000)
            unrecorded_move(chain, round_ % args.accounts, (round_ + 1) % args.accounts)
            alerts_before = len(books.ledger._caught_up_copy().discrepancies)
            chain.mine(1)
            mined_s = time.perf_counter()
            monitor.step()
            latencies_ms.append((time.perf_counter() - mined_s) * 1000)
            assert len(books.ledger._caught_up_copy().discrepancies) == alerts_before + 2, "alerts missing"
            started_s = time.perf_counter()
            monitor.step()
            quiet_ms.append((time.perf_counter() - started_s) * 1000)
    books.ledger.close()
    print(f"accounts: {args.accounts:,} (one address each), {args.block_txs + 2} transactions per block, "
          f"{args.rounds} rounds")
    print(f"first step (coins of every address read): {baseline_ms:.1f} ms")
    print(f"block mined -> alerts recorded: p50 {statistics.median(latencies_ms):.1f} ms, "
          f"max {max(latencies_ms):.1f} ms")
    print(f"step without a new block: p50 {statistics.median(quiet_ms):.1f} ms")


if __name__ == "__main__":
    main()
