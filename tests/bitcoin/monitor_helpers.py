"""Shared by the reserves monitor tests: custody wallets on the embedded chain and a ledger to record into.

A custody "wallet" here is a P2WSH output whose witness script is `<n> OP_DROP OP_TRUE`: anyone may spend it
(the test needs no keys), each account gets its own address, and libbitcoinkernel still runs the script.
"""

import hashlib
import pathlib
from decimal import Decimal

from ledger import commands as cmd
from ledger.anchoring import Utxo, internal_from_display
from ledger.application import ReserveLedger
from services.bitcoin.addresses import address_of_script_pubkey
from services.bitcoin.regtest.blocks import serialize_tx
from services.store.config import sqlite_env

ALICE, BOB, SYSTEM = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver"), cmd.Caller("system", "system")
FEE_SATS = 1_000
TIME_US = 1_800_000_000_000_000


def witness_script(n: int) -> bytes:
    return bytes([0x01, n, 0x75, 0x51])   # push n, OP_DROP, OP_TRUE


def script_pubkey(n: int) -> bytes:
    return b"\x00\x20" + hashlib.sha256(witness_script(n)).digest()


def address(n: int) -> str:
    return address_of_script_pubkey(script_pubkey(n), "regtest")


def spend(chain, n: int, coin: Utxo, outputs: list[tuple[int, bytes]]) -> bytes:
    """A transaction spending custody coin `coin` of wallet n to `outputs` (the fee is what is left)."""
    return serialize_tx(2, [(internal_from_display(coin.txid), coin.vout, b"", 0xFFFFFFFD)], outputs,
                        [[witness_script(n)]])


class Books:
    """A ledger on SQLite whose commands are executed at increasing times, as the service's writer would."""

    def __init__(self, directory: pathlib.Path | None = None, env: dict | None = None):
        self.ledger = ReserveLedger(env or sqlite_env(str(directory)))
        self._time_us = TIME_US

    def run(self, command: cmd.Command, caller: cmd.Caller = SYSTEM):
        self._time_us += 1_000_000
        return self.ledger.execute([(command, caller)], self._time_us)[0]

    def open(self, account_id: str, n: int, kind: str = "cold") -> None:
        self.run(cmd.OpenAccount(f"open-{account_id}", account_id, kind, "Custodian", "wallet", 1, 1,
                                 (address(n),)), ALICE)

    def purchase(self, account_id: str, sats: int, txid: str = "") -> None:
        fiat = format((Decimal(50000) * sats / 10**8).quantize(Decimal("0.01")), "f")
        recorded = self.run(cmd.RecordPurchase(f"buy-{account_id}-{sats}-{txid[:8]}", account_id, sats, "50000", "USD",
                                               fiat, "Venue", "T-1", "2026-11-01", txid=txid), ALICE)
        assert not isinstance(recorded, Exception), recorded

    def discrepancies(self):
        with self.ledger.reading() as state:
            return list(state.discrepancies.values())

    def close(self) -> None:
        self.ledger.close()
