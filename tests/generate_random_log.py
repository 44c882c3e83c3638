"""A seeded random log: the real ReserveLedger on SQLite, driven by valid commands from several callers.

The same seed and size give the same commands, the same clock and so the same events. The script prints
the log's Merkle root and the SHA-256 over every event's canonical bytes (length-prefixed, in log order),
so that a change to how events are stored can be shown not to change a single signed byte:

    python tests/generate_random_log.py --events 100000 --seed 1
"""

import argparse
import hashlib
import pathlib
import random
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ledger import commands as cmd  # noqa: E402
from ledger import merkle  # noqa: E402
from ledger.application import Recorded, ReserveLedger  # noqa: E402

T0_US = 1_790_000_000_000_000
BATCH_INTERVAL_US = 1_000_003   # the clock advances by a little more than a second per batch
BATCH_SIZE_MAX = 48
OPERATORS = (cmd.Caller("alice", "operator"), cmd.Caller("oscar", "operator"), cmd.Caller("frank", "operator"))
APPROVERS = (cmd.Caller("bob", "approver"), cmd.Caller("carol", "approver"))
ADMIN = cmd.Caller("erin", "admin")
CUSTODIANS = ("BNY Mellon", "Vault Zürich", "Ops \"desk\"", "Coinbase Custody", "Anchorage")
CURRENCIES = (("USD", 2), ("EUR", 2), ("JPY", 0), ("CHF", 2))
READ_PAGE_SIZE = 5000


class Driver:
    """Chooses each command from what the log holds so far; every choice comes from one seeded Random."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)
        self.accounts: list[str] = []
        self.frozen: set[str] = set()
        self.pending: dict[str, tuple[str, int, tuple]] = {}  # pending id -> (proposer, expire_time_us, accounts)
        self.requests = 0

    def request_id(self, kind: str) -> str:
        self.requests += 1
        return f"{kind}-{self.requests}"

    def batch(self, time_us: int) -> list[tuple[cmd.Command, cmd.Caller]]:
        """A batch of commands, each valid against the log as it stood before the batch."""
        size = self.random.randint(1, BATCH_SIZE_MAX)
        chosen, touched = [], set()
        for _ in range(size):
            command, caller = self.command(time_us, touched)
            command.validate()
            chosen.append((command, caller))
        return chosen

    def command(self, time_us: int, touched: set) -> tuple[cmd.Command, cmd.Caller]:
        rnd = self.random
        if len(self.accounts) < 4 or rnd.random() < 0.01:
            return self.open_account(), rnd.choice(OPERATORS)
        roll = rnd.random()
        free = [p for p in self.pending if p not in touched]
        if roll < 0.40 and free:
            return self.resolve(rnd.choice(free), time_us, touched)
        if roll < 0.55:
            return self.purchase(), rnd.choice(OPERATORS)
        if roll < 0.58:
            return self.freeze_or_unfreeze(touched), ADMIN
        if roll < 0.68:
            return self.custody_change(time_us, touched), rnd.choice(OPERATORS)
        return self.transfer(time_us, touched), rnd.choice(OPERATORS)

    def open_account(self) -> cmd.OpenAccount:
        rnd = self.random
        account_id = f"acct-{len(self.accounts):04d}"
        self.accounts.append(account_id)
        required = rnd.randint(1, 5)
        return cmd.OpenAccount(self.request_id("open"), account_id, rnd.choice(("cold", "warm", "hot")),
                               rnd.choice(CUSTODIANS), f"wallet {len(self.accounts)} ✓", required,
                               required + rnd.randint(0, 3))

    def usable(self, touched: frozenset | set = frozenset()) -> list[str]:
        return [a for a in self.accounts if a not in self.frozen and a not in touched]

    def purchase(self) -> cmd.RecordPurchase:
        rnd = self.random
        currency, minor_digits = rnd.choice(CURRENCIES)
        quantity_sats = rnd.randint(100_000, 20 * 100_000_000)
        price_minor = rnd.randint(10_000, 10_000_000) * 10 ** minor_digits
        price = price_minor // 10 ** minor_digits
        total_minor = price_minor * quantity_sats // 100_000_000
        total = f"{total_minor // 10 ** minor_digits}" + (
            f".{total_minor % 10 ** minor_digits:0{minor_digits}d}" if minor_digits else "")
        return cmd.RecordPurchase(self.request_id("buy"), rnd.choice(self.usable()), quantity_sats, str(price),
                                  currency, total, "Counterparty AG", f"T-{self.requests}",
                                  f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}")

    def transfer(self, time_us: int, touched: set) -> cmd.ProposeTransfer:
        rnd = self.random
        debit, credit = rnd.sample(self.usable(touched), 2)
        expire = time_us + rnd.randint(2, 30) * BATCH_INTERVAL_US if rnd.random() < 0.2 else None
        return cmd.ProposeTransfer(self.request_id("move"), debit, credit, rnd.randint(1, 50_000),
                                   rnd.choice(("", "rebalance", "payroll \\ Q3", "übertrag")), expire)

    def custody_change(self, time_us: int, touched: set) -> cmd.ProposeCustodyChange:
        rnd = self.random
        source, target = rnd.sample(self.usable(touched), 2)
        fee = rnd.choice((0, 0, 250, 1400))
        return cmd.ProposeCustodyChange(self.request_id("cc"), source, target, rnd.randint(fee + 1, 90_000),
                                        "key rotation", "KC-7", 2, 3, f"{rnd.getrandbits(256):064x}" if fee else "",
                                        fee)

    def freeze_or_unfreeze(self, touched: set) -> cmd.Command:
        """Freeze a usable account (keeping a few usable) or unfreeze a frozen one; once per batch each."""
        account_id = self.random.choice(self.accounts)
        if account_id in touched or (account_id not in self.frozen and len(self.usable()) <= 4):
            return self.purchase()
        touched.add(account_id)
        if account_id in self.frozen:
            return cmd.UnfreezeAccount(self.request_id("thaw"), account_id, "review done")
        return cmd.FreezeAccount(self.request_id("freeze"), account_id, "review")

    def resolve(self, pending_id: str, time_us: int, touched: set) -> tuple[cmd.Command, cmd.Caller]:
        rnd = self.random
        touched.add(pending_id)
        proposer, expire_time_us, accounts = self.pending[pending_id]
        if time_us >= expire_time_us:
            return cmd.ExpirePending(self.request_id("expire"), pending_id), cmd.Caller("system", "system")
        approvers = [a for a in APPROVERS if a.identity != proposer]
        approve = rnd.random() < 0.7 and not set(accounts) & (self.frozen | touched)
        kind = pending_id[:2]
        classes = {"pu": (cmd.ApprovePurchase, cmd.RejectPurchase), "tr": (cmd.ApproveTransfer, cmd.RejectTransfer),
                   "cc": (cmd.ApproveCustodyChange, cmd.RejectCustodyChange)}[kind]
        command_class = classes[0] if approve else classes[1]
        return command_class(self.request_id("ok" if approve else "no"), pending_id,
                             "" if approve else "declined"), rnd.choice(approvers)

    def observe(self, requests, outcomes) -> None:
        """Learn pending ids from what was recorded; frozen accounts from what was accepted."""
        for (command, caller), outcome in zip(requests, outcomes, strict=True):
            if not isinstance(outcome, Recorded):
                continue
            data = outcome.data
            for field in ("purchase_id", "transfer_id", "custody_change_id"):
                if field in data and outcome.event_type.endswith("Proposed"):
                    accounts = tuple(v for k, v in data.items() if k.endswith("account_id"))
                    self.pending[data[field]] = (caller.identity, data["expire_time_us"], accounts)
                elif field in data:
                    self.pending.pop(data[field], None)
            if outcome.event_type == "AccountFrozen":
                self.frozen.add(command.account_id)
            elif outcome.event_type == "AccountUnfrozen":
                self.frozen.discard(command.account_id)


def generate(ledger: ReserveLedger, events: int, seed: int) -> int:
    """Append at least `events` events (a batch may overshoot; the caller reads exactly `events`)."""
    driver = Driver(seed)
    time_us, size = T0_US, ledger.store.log_size()
    while size < events:
        requests = driver.batch(time_us)
        outcomes = ledger.execute(requests, time_us)
        driver.observe(requests, outcomes)
        size += sum(isinstance(o, Recorded) for o in outcomes)
        time_us += BATCH_INTERVAL_US
    return size


def digests(ledger: ReserveLedger, events: int) -> tuple[str, str]:
    """(Merkle root over the first `events` leaves, SHA-256 over their canonical bytes), both hex.

    The root is recomputed from the bytes and checked against the one the store's subtrees give.
    """
    content, compact, position = hashlib.sha256(), merkle.CompactRange(), 0
    while position < events:
        for _, data in ledger.read_events(position, min(READ_PAGE_SIZE, events - position)):
            content.update(len(data).to_bytes(8, "big") + data)
            compact.append(merkle.leaf_hash(data))
            position += 1
    root = compact.root()
    assert merkle.root_hash(ledger.store, events) == root, "stored subtrees disagree with the event bytes"
    return root.hex(), content.hexdigest()


def sqlite_ledger(data_dir: pathlib.Path) -> ReserveLedger:
    from services.store.config import sqlite_env
    return ReserveLedger(sqlite_env(data_dir))


def run(events: int, seed: int, data_dir: pathlib.Path) -> tuple[str, str]:
    ledger = sqlite_ledger(data_dir)
    try:
        generate(ledger, events, seed)
        return digests(ledger, events)
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", help="keep the log here (default: a temporary directory)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        root, content = run(args.events, args.seed, pathlib.Path(args.data_dir or scratch))
    print(f"events: {args.events}\nseed: {args.seed}\nmerkle_root: {root}\ncanonical_sha256: {content}\n"
          f"seconds: {time.monotonic() - started:.1f}")


if __name__ == "__main__":
    main()
