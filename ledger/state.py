"""The reserve's state as a fold over events: accounts, balances, holds, pending proposals, lots.

One fold serves both the decision model (rules.py decides against it) and every projection that
queries read (balances, holdings, cost basis, pending). It consumes events in their canonical form
(ledger.events.CanonicalEvent). An auditor's replay uses this same fold on the exported canonical bytes.
"""

import collections
import copy
import dataclasses
import itertools
import json
from decimal import Decimal, localcontext
from typing import Any

from ledger import monitor
from ledger import pending as kinds
from ledger import rules
from ledger.accounts import ACQUISITIONS, NETWORK_FEES, NOMINAL_ACCOUNTS, NOMINAL_KIND, Account
from ledger.errors import InvariantBroken
from ledger.events import CanonicalEvent
from ledger.limits import SATS_PER_BTC
from ledger.lots import ChunkLoader, Lot, LotQueue
from ledger.pending import Pending

# 4: lots as a FIFO queue saved in digest-chained chunks (ledger/lots.py), and the reserves monitor's
#    discrepancies and expected movements (pending items carry txid, corrects_position); 3 had one of the two.
# 2: every lot ever created, listed; 1 held accounts, pending items and lots as keyed dicts.
STATE_FORMAT_VERSION = 4
__all__ = ["InvariantBroken", "ReserveState", "StateFormatUnknown", "balances", "holdings", "cost_basis", "cost_totals",
           "open_lots_page", "saved_lot_fields"]


class StateFormatUnknown(ValueError):
    """Saved state bytes of another format version: rebuild the projection from the log."""


@dataclasses.dataclass(frozen=True, slots=True)
class CurrencyTotal:
    quantity_sats: int = 0
    fiat_total: str = "0"   # decimal string


def _fields(record) -> dict[str, Any]:
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def _account_fields(account: Account) -> dict[str, Any]:
    """An unset gap limit is left out, so saved states of accounts without one keep their bytes."""
    fields = _fields(account)
    if not fields["gap_limit"]:
        del fields["gap_limit"]
    return fields


def _account(fields: dict[str, Any]) -> Account:
    return Account(**{**fields, "quorum": tuple(fields["quorum"]), "addresses": tuple(fields["addresses"])})


def _pending(fields: dict[str, Any]) -> Pending:
    return Pending(**{**fields, "new_quorum": tuple(fields["new_quorum"])})


class ReserveState:
    """Mutable fold state. `apply` is the only writer; everything else reads.

    `lots` is None in a state that keeps no lots: the writer's decision state (no rule reads lots; only the
    cost-basis view does), which is never saved."""

    def __init__(self, keep_lots: bool = True):
        self.position = -1
        self.time_us = 0
        self.accounts: dict[str, Account] = {a: Account(a, NOMINAL_KIND) for a in NOMINAL_ACCOUNTS}
        self.pending: dict[str, Pending] = {}
        self.lots: LotQueue | None = LotQueue() if keep_lots else None
        self.currencies: dict[str, CurrencyTotal] = {}
        self.debits_sats = 0
        self.credits_sats = 0
        self.custody_total_sats = 0   # the sum of custody balances, kept by _post (not serialised: derived)
        # txid -> {account_id: net sats the ledger says it moved there} (ledger/monitor.py)
        self.expected_movements: dict[str, dict[str, int]] = {}
        self.discrepancies: dict[str, monitor.Discrepancy] = {}   # in position order

    # --- reads ---------------------------------------------------------------------------------------

    def balance_sats(self, account_id: str) -> int:
        return self.accounts[account_id].balance_sats

    def available_sats(self, account_id: str) -> int:
        return self.accounts[account_id].available_sats

    def reserve_total_sats(self) -> int:
        return sum(a.balance_sats for a in self.accounts.values() if not a.is_nominal)

    # --- the fold ------------------------------------------------------------------------------------

    def apply(self, event: CanonicalEvent, decided_here: bool = False) -> None:
        """Fold one event, after rules.check_recorded decided its command again and got the same event: every
        check a command passes when decided is checked again here, on replay, rebuild, verify and audit.
        `decided_here`: this process already decided exactly this event again on a state equal to this one (the
        writer's decision state, moments ago), so doing it once more would repeat the same computation; never
        for a stored event that no one in this process decided."""
        if event.get("position") != self.position + 1:
            raise InvariantBroken(self.position + 1, "POSITION_OUT_OF_ORDER",
                                  f"the event at position {self.position + 1} says position {event.get('position')}")
        if not decided_here:
            rules.check_recorded(self, event)
        getattr(self, "_on_" + event["type"])(event["data"], event)
        self.position = event["position"]
        self.time_us = event["time_us"]
        if self.debits_sats != self.credits_sats:
            raise InvariantBroken(self.position, "DOUBLE_ENTRY",
                                  f"debits {self.debits_sats} != credits {self.credits_sats}")

    def _post(self, debit_account_id: str, credit_account_id: str, amount_sats: int) -> None:
        debit, credit = self.accounts[debit_account_id], self.accounts[credit_account_id]
        debit.debits_sats += amount_sats
        credit.credits_sats += amount_sats
        self.debits_sats += amount_sats
        self.credits_sats += amount_sats
        self.custody_total_sats += (0 if credit.is_nominal else amount_sats) - (0 if debit.is_nominal else amount_sats)
        if not debit.is_nominal and debit.available_sats < 0:
            raise InvariantBroken(self.position + 1, "OVERDRAFT", f"account {debit_account_id} overdrawn")
        if self.lots is None:
            return
        if debit.is_nominal and not credit.is_nominal and debit_account_id != ACQUISITIONS:
            self.lots.append(Lot(f"adjustment@{self.position + 1}", "", "XXX", "0", amount_sats))
        elif not debit.is_nominal and credit.is_nominal and not self.lots.consume(amount_sats):
            raise InvariantBroken(self.position + 1, "LOTS_EXHAUSTED", "more sats left the reserve than its lots hold")

    def _hold(self, account_id: str, amount_sats: int) -> None:
        account = self.accounts[account_id]
        account.held_sats += amount_sats
        if account.held_sats < 0 or (not account.is_nominal and account.available_sats < 0):
            raise InvariantBroken(self.position + 1, "OVERDRAFT", f"a hold on {account_id} breaks its balance")

    def _expect(self, txid: str, account_id: str, movement_sats: int) -> None:
        if txid:
            moves = self.expected_movements.setdefault(txid, {})
            moves[account_id] = moves.get(account_id, 0) + movement_sats

    def _record_purchase(self, data: dict[str, Any]) -> None:
        self._post(ACQUISITIONS, data["account_id"], data["quantity_sats"])
        self._expect(data.get("txid", ""), data["account_id"], data["quantity_sats"])
        if self.lots is not None:
            self.lots.append(Lot(data["purchase_id"], data["trade_date"], data["currency_code"],
                                 data["price_per_btc"], data["quantity_sats"]))
        totals = self.currencies.get(data["currency_code"], CurrencyTotal())
        self.currencies[data["currency_code"]] = CurrencyTotal(
            totals.quantity_sats + data["quantity_sats"], str(Decimal(totals.fiat_total) + Decimal(data["fiat_total"])))

    def _take_pending(self, pending_id: str, kind: kinds.PendingKind) -> Pending:
        pending = self.pending.pop(pending_id, None)
        if pending is None or pending.pending_kind != kind.name:
            raise InvariantBroken(self.position + 1, "PENDING_NOT_FOUND", f"{pending_id} is not a pending {kind.name}")
        return pending

    def _on_AccountOpened(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        if data["account_id"] in self.accounts:
            raise InvariantBroken(self.position + 1, "ACCOUNT_ALREADY_EXISTS", f"account {data['account_id']} opened twice")
        self.accounts[data["account_id"]] = Account(
            data["account_id"], data["kind"], custodian=data["custodian"], wallet_label=data["wallet_label"],
            quorum=(data["quorum_required"], data["quorum_total"]), addresses=tuple(data["addresses"]),
            descriptor=data["descriptor"], gap_limit=data.get("gap_limit", 0))

    def _on_AccountFrozen(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self.accounts[data["account_id"]].status = "frozen"

    def _on_AccountUnfrozen(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self.accounts[data["account_id"]].status = "open"

    def _on_AccountClosed(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self.accounts[data["account_id"]].status = "closed"

    def _on_ReservePurchased(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._record_purchase(data)

    def _on_PurchaseProposed(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self.pending[data["purchase_id"]] = Pending(
            data["purchase_id"], kinds.PURCHASE.name, ACQUISITIONS, data["account_id"], data["quantity_sats"],
            event["actor"], event["position"], data["expire_time_us"], purchase=dict(data))

    def _on_PurchaseApproved(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._record_purchase(self._take_pending(data["purchase_id"], kinds.PURCHASE).purchase)

    def _on_PurchaseRejected(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._take_pending(data["purchase_id"], kinds.PURCHASE)

    def _on_PurchaseExpired(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._take_pending(data["purchase_id"], kinds.PURCHASE)

    def _propose(self, pending: Pending) -> None:
        self.pending[pending.pending_id] = pending
        self._hold(pending.debit_account_id, pending.amount_sats)

    def _release(self, pending_id: str, kind: kinds.PendingKind) -> Pending:
        pending = self._take_pending(pending_id, kind)
        self._hold(pending.debit_account_id, -pending.amount_sats)
        return pending

    def _on_TransferProposed(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._propose(Pending(data["transfer_id"], kinds.TRANSFER.name, data["debit_account_id"],
                              data["credit_account_id"], data["amount_sats"], event["actor"], event["position"],
                              data["expire_time_us"], corrects_position=data["corrects_position"]))

    def _on_TransferApproved(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        pending = self._release(data["transfer_id"], kinds.TRANSFER)
        self._post(pending.debit_account_id, pending.credit_account_id, pending.amount_sats)
        for discrepancy_id in data.get("closes_discrepancy_ids", ()):
            self._resolve(discrepancy_id, monitor.CLOSED, event["position"])

    def _on_TransferRejected(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._release(data["transfer_id"], kinds.TRANSFER)

    def _on_TransferExpired(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._release(data["transfer_id"], kinds.TRANSFER)

    def _on_CustodyChangeProposed(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._propose(Pending(data["custody_change_id"], kinds.CUSTODY_CHANGE.name, data["from_account_id"],
                              data["to_account_id"], data["amount_sats"], event["actor"], event["position"],
                              data["expire_time_us"], network_fee_sats=data["network_fee_sats"],
                              new_quorum=(data["new_quorum_required"], data["new_quorum_total"]), txid=data["txid"]))

    def _on_CustodyChangeApproved(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        pending = self._release(data["custody_change_id"], kinds.CUSTODY_CHANGE)
        fee_sats = pending.network_fee_sats
        self._post(pending.debit_account_id, pending.credit_account_id, pending.amount_sats - fee_sats)
        if fee_sats:
            self._post(pending.debit_account_id, NETWORK_FEES, fee_sats)
        if pending.new_quorum[0]:
            self.accounts[pending.credit_account_id].quorum = pending.new_quorum
        self._expect(pending.txid, pending.debit_account_id, -pending.amount_sats)
        self._expect(pending.txid, pending.credit_account_id, pending.amount_sats - fee_sats)

    def _on_CustodyChangeRejected(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._release(data["custody_change_id"], kinds.CUSTODY_CHANGE)

    def _on_CustodyChangeExpired(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._release(data["custody_change_id"], kinds.CUSTODY_CHANGE)

    def _on_ReserveDiscrepancyObserved(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self.discrepancies[data["discrepancy_id"]] = monitor.Discrepancy(
            data["discrepancy_id"], data["account_id"], data["block_height"], data["block_hash"],
            tuple(data["txids"]), data["movement_sats"], data["onchain_sats"], data["ledger_sats"], data["finding"],
            event["position"], event["time_us"])

    def _on_ReserveDiscrepancyReorgedOut(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        self._resolve(data["discrepancy_id"], monitor.REORGED_OUT, event["position"])

    def _resolve(self, discrepancy_id: str, status: str, position: int) -> None:
        discrepancy = self.discrepancies.get(discrepancy_id)
        if discrepancy is None or discrepancy.status != monitor.OPEN:
            raise InvariantBroken(position, "DISCREPANCY_NOT_OPEN", f"{discrepancy_id} is not an open discrepancy")
        discrepancy.status, discrepancy.resolved_position = status, position

    # --- serialisation (snapshots, rebuild comparison) ------------------------------------------------

    def _on_SigningKeyRotated(self, data: dict[str, Any], event: CanonicalEvent) -> None:
        pass  # the balances do not change; whoever checks heads follows the key (ledger/key_history.py)

    def to_bytes(self) -> bytes:
        """Deterministic: records in the order the fold created them, keys sorted, no whitespace. The lots are
        summarised (ledger/lots.py): the bytes name their full chunks by digest (LotQueue.full_chunks)."""
        assert self.lots is not None, "a state that keeps no lots is never saved"
        fields = {"format_version": STATE_FORMAT_VERSION, "position": self.position, "time_us": self.time_us,
                  "accounts": [_account_fields(a) for a in self.accounts.values()],
                  "pending": [_fields(p) for p in self.pending.values()],
                  "lots": self.lots.to_fields(),
                  "currencies": {code: _fields(total) for code, total in self.currencies.items()},
                  "debits_sats": self.debits_sats, "credits_sats": self.credits_sats,
                  "expected_movements": self.expected_movements,
                  "discrepancies": [_fields(d) for d in self.discrepancies.values()]}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, load_chunk: ChunkLoader | None = None) -> "ReserveState":
        """The state saved as `data`; lot chunks come from `load_chunk` (ValueError if one is missing or
        altered)."""
        fields = _fields_of_saved(data)
        state = cls()
        state.position, state.time_us = fields["position"], fields["time_us"]
        state.accounts = {a["account_id"]: _account(a) for a in fields["accounts"]}
        state.pending = {p["pending_id"]: _pending(p) for p in fields["pending"]}
        state.lots = LotQueue.from_fields(fields["lots"], load_chunk)
        state.currencies = {code: CurrencyTotal(**total) for code, total in fields["currencies"].items()}
        state.debits_sats, state.credits_sats = fields["debits_sats"], fields["credits_sats"]
        state.expected_movements = fields["expected_movements"]
        state.discrepancies = {d["discrepancy_id"]: monitor.Discrepancy(**{**d, "txids": tuple(d["txids"])})
                               for d in fields["discrepancies"]}
        state.custody_total_sats = state.reserve_total_sats()
        return state

    def copy(self, keep_lots: bool = True) -> "ReserveState":
        """An independent state equal to this one (records copied; immutable lots shared)."""
        twin = ReserveState(keep_lots=False)
        twin.position, twin.time_us = self.position, self.time_us
        twin.accounts = {account_id: copy.copy(account) for account_id, account in self.accounts.items()}
        twin.pending = dict(self.pending)
        twin.lots = self.lots.copy() if keep_lots and self.lots is not None else None
        twin.currencies = dict(self.currencies)
        twin.debits_sats, twin.credits_sats = self.debits_sats, self.credits_sats
        twin.custody_total_sats = self.custody_total_sats
        twin.expected_movements = {txid: dict(moves) for txid, moves in self.expected_movements.items()}
        twin.discrepancies = {d_id: copy.copy(d) for d_id, d in self.discrepancies.items()}  # _resolve mutates
        return twin


# --- query views (pure functions of a state; JSON- and proto-shaped rows) ---------------------------------

def balances(state: ReserveState) -> list[dict[str, Any]]:
    return [{"account_id": a.account_id, "kind": a.kind, "credits_sats": a.credits_sats,
             "debits_sats": a.debits_sats, "balance_sats": a.balance_sats, "held_sats": a.held_sats,
             "available_sats": a.available_sats}
            for a in sorted(state.accounts.values(), key=lambda a: a.account_id)]


def holdings(state: ReserveState) -> dict[str, Any]:
    custodians: dict[str, dict[str, Any]] = {}
    for account in state.accounts.values():
        if account.is_nominal:
            continue
        entry = custodians.setdefault(account.custodian, {"custodian": account.custodian, "balance_sats": 0,
                                                          "held_sats": 0, "wallet_count": 0})
        entry["balance_sats"] += account.balance_sats
        entry["held_sats"] += account.held_sats
        entry["wallet_count"] += 1 if account.status != "closed" else 0
    rows = sorted(custodians.values(), key=lambda c: c["custodian"])
    return {"custodians": rows, "total_sats": sum(c["balance_sats"] for c in rows)}


def _fields_of_saved(data: bytes) -> dict[str, Any]:
    fields = json.loads(data)
    version = fields.get("format_version") if isinstance(fields, dict) else None
    if version != STATE_FORMAT_VERSION:
        raise StateFormatUnknown(f"saved state has format version {version!r}; this build reads only "
                                 f"{STATE_FORMAT_VERSION} (rebuild the projection from the log)")
    return fields


def saved_lot_fields(data: bytes) -> dict[str, Any]:
    """The lot queue's fields in saved state bytes (ledger/lots.py check_saved_chunks checks the chunks they
    name); StateFormatUnknown or ValueError when the bytes are no saved state of this format."""
    lots = _fields_of_saved(data).get("lots")
    if not isinstance(lots, dict):
        raise ValueError("the saved state holds no lot queue")
    return lots


def cost_basis(state: ReserveState, lots_max: int | None = None) -> dict[str, Any]:
    """Per-currency averages and FIFO remaining cost, and the open lots (the first `lots_max` of them when given:
    a long history holds millions; `lots_total` counts them all)."""
    return {"lots": open_lots_page(state, 0, lots_max), **cost_totals(state)}


def open_lots_page(state: ReserveState, number_min: int, lots_max: int | None) -> list[dict[str, Any]]:
    """The open lots from lot number `number_min` on (lots are numbered in the order the fold created them),
    oldest first, at most `lots_max` of them (None: all)."""
    lots = itertools.islice(state.lots.open_lots(number_min), lots_max)
    return [{**lot._asdict(), "remaining_sats": remaining_sats} for lot, remaining_sats in lots]


def cost_totals(state: ReserveState) -> dict[str, Any]:
    """Per-currency averages and FIFO remaining cost, and the number of open lots: a walk over every open lot."""
    per_currency: dict[str, dict[str, Any]] = {}
    with localcontext() as ctx:
        ctx.prec = 60
        for code, totals in sorted(state.currencies.items()):
            average = Decimal(totals.fiat_total) * SATS_PER_BTC / totals.quantity_sats
            per_currency[code] = {"currency_code": code, "quantity_sats": totals.quantity_sats,
                                  "fiat_total": totals.fiat_total,
                                  "average_price_per_btc": _plain(average.quantize(Decimal("0.00000001"))),
                                  "remaining_cost_fifo": Decimal(0), "remaining_sats": 0}
        lots_total, at_price = 0, collections.Counter()
        for lot, remaining_sats in state.lots.open_lots():
            lots_total += 1
            at_price[lot.currency_code, lot.price_per_btc] += remaining_sats
        for (code, price_per_btc), remaining_sats in at_price.items():   # exact: 60 digits hold every sum
            entry = per_currency.get(code)
            if entry is not None:
                entry["remaining_sats"] += remaining_sats
                entry["remaining_cost_fifo"] += Decimal(price_per_btc) * remaining_sats / SATS_PER_BTC
        for entry in per_currency.values():
            entry["remaining_cost_fifo"] = _plain(entry["remaining_cost_fifo"].quantize(Decimal("0.00000001")))
    return {"lots_total": lots_total, "currencies": list(per_currency.values())}


def _plain(number: Decimal) -> str:
    return format(number, "f")
