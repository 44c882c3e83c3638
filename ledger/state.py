"""The reserve's state as a fold over events: accounts, balances, holds, pending proposals, lots.

One fold serves both the decision model (rules.py decides against it) and every projection that
queries read (balances, holdings, cost basis, pending). It consumes events in their canonical form
(see events.py): {"type", "position", "time_us", "actor", "actor_role", "request_id", "data"}.
An auditor's replay uses this same fold on the exported canonical bytes.
"""

import json
from decimal import Decimal, localcontext

from ledger.limits import SATS_PER_BTC

NOMINAL_ACCOUNTS = (
    "nominal:acquisitions",   # where purchased coins come from
    "nominal:network-fees",   # where on-chain fees go
    "nominal:disposals",      # where sold or spent coins go
    "nominal:adjustments",    # the other side of every correction
)
STATE_FORMAT_VERSION = 1


class InvariantBroken(Exception):
    """The event sequence breaks a ledger invariant: a bug when live, a finding when auditing."""


def _new_account(account_id: str, kind: str, **details) -> dict:
    return {"account_id": account_id, "kind": kind, "status": "open", "custodian": details.get("custodian", ""),
            "wallet_label": details.get("wallet_label", ""), "quorum": details.get("quorum", [0, 0]),
            "addresses": details.get("addresses", []), "descriptor": details.get("descriptor", ""),
            "credits_sats": 0, "debits_sats": 0, "held_sats": 0}


class ReserveState:
    """Mutable fold state. `apply` is the only writer; everything else reads."""

    def __init__(self):
        self.position = -1
        self.time_us = 0
        self.accounts: dict[str, dict] = {a: _new_account(a, "nominal") for a in NOMINAL_ACCOUNTS}
        self.pending: dict[str, dict] = {}
        self.lots: list[dict] = []
        self.currencies: dict[str, dict] = {}
        self.debits_sats = 0
        self.credits_sats = 0

    # --- reads ---------------------------------------------------------------------------------------

    def balance_sats(self, account_id: str) -> int:
        account = self.accounts[account_id]
        return account["credits_sats"] - account["debits_sats"]

    def available_sats(self, account_id: str) -> int:
        return self.balance_sats(account_id) - self.accounts[account_id]["held_sats"]

    def reserve_total_sats(self) -> int:
        return sum(self.balance_sats(a) for a, acc in self.accounts.items() if acc["kind"] != "nominal")

    # --- the fold ------------------------------------------------------------------------------------

    def apply(self, event: dict) -> None:
        if event["position"] != self.position + 1:
            raise InvariantBroken(f"event at position {event['position']} follows position {self.position}")
        handler = getattr(self, "_on_" + event["type"], None)
        if handler is None:
            raise InvariantBroken(f"unknown event type {event['type']!r} at position {event['position']}")
        handler(event["data"], event)
        self.position = event["position"]
        self.time_us = event["time_us"]
        if self.debits_sats != self.credits_sats:
            raise InvariantBroken(f"debits {self.debits_sats} != credits {self.credits_sats} at {self.position}")

    def _post(self, debit_account_id: str, credit_account_id: str, amount_sats: int) -> None:
        debit, credit = self.accounts[debit_account_id], self.accounts[credit_account_id]
        debit["debits_sats"] += amount_sats
        credit["credits_sats"] += amount_sats
        self.debits_sats += amount_sats
        self.credits_sats += amount_sats
        if debit["kind"] != "nominal" and self.available_sats(debit_account_id) < 0:
            raise InvariantBroken(f"account {debit_account_id} overdrawn at position {self.position + 1}")
        if debit["kind"] == "nominal" and credit["kind"] != "nominal" and debit_account_id != "nominal:acquisitions":
            self._add_lot(f"adjustment@{self.position + 1}", "", "XXX", "0", amount_sats)
        elif debit["kind"] != "nominal" and credit["kind"] == "nominal":
            self._consume_lots(amount_sats)

    def _hold(self, account_id: str, amount_sats: int) -> None:
        account = self.accounts[account_id]
        account["held_sats"] += amount_sats
        if account["held_sats"] < 0 or (account["kind"] != "nominal" and self.available_sats(account_id) < 0):
            raise InvariantBroken(f"hold on {account_id} breaks its balance at position {self.position + 1}")

    def _add_lot(self, purchase_id: str, trade_date: str, currency: str, price: str, quantity_sats: int) -> None:
        self.lots.append({"purchase_id": purchase_id, "trade_date": trade_date, "currency_code": currency,
                          "price_per_btc": price, "quantity_sats": quantity_sats, "remaining_sats": quantity_sats})

    def _consume_lots(self, amount_sats: int) -> None:
        for lot in self.lots:
            if amount_sats == 0:
                return
            taken = min(lot["remaining_sats"], amount_sats)
            lot["remaining_sats"] -= taken
            amount_sats -= taken
        if amount_sats:
            raise InvariantBroken(f"more sats left the reserve than its lots hold at {self.position + 1}")

    def _record_purchase(self, data: dict) -> None:
        self._post("nominal:acquisitions", data["account_id"], data["quantity_sats"])
        self._add_lot(data["purchase_id"], data["trade_date"], data["currency_code"], data["price_per_btc"],
                      data["quantity_sats"])
        totals = self.currencies.setdefault(data["currency_code"], {"quantity_sats": 0, "fiat_total": "0"})
        totals["quantity_sats"] += data["quantity_sats"]
        totals["fiat_total"] = str(Decimal(totals["fiat_total"]) + Decimal(data["fiat_total"]))

    def _take_pending(self, pending_id: str, kind: str) -> dict:
        pending = self.pending.pop(pending_id, None)
        if pending is None or pending["pending_kind"] != kind:
            raise InvariantBroken(f"{pending_id} is not a pending {kind} at position {self.position + 1}")
        return pending

    def _on_AccountOpened(self, data: dict, event: dict) -> None:
        if data["account_id"] in self.accounts:
            raise InvariantBroken(f"account {data['account_id']} opened twice")
        self.accounts[data["account_id"]] = _new_account(
            data["account_id"], data["kind"], custodian=data["custodian"], wallet_label=data["wallet_label"],
            quorum=[data["quorum_required"], data["quorum_total"]], addresses=list(data["addresses"]),
            descriptor=data["descriptor"])

    def _on_AccountFrozen(self, data: dict, event: dict) -> None:
        self.accounts[data["account_id"]]["status"] = "frozen"

    def _on_AccountUnfrozen(self, data: dict, event: dict) -> None:
        self.accounts[data["account_id"]]["status"] = "open"

    def _on_AccountClosed(self, data: dict, event: dict) -> None:
        self.accounts[data["account_id"]]["status"] = "closed"

    def _on_ReservePurchased(self, data: dict, event: dict) -> None:
        self._record_purchase(data)

    def _on_PurchaseProposed(self, data: dict, event: dict) -> None:
        self.pending[data["purchase_id"]] = {
            "pending_id": data["purchase_id"], "pending_kind": "purchase", "debit_account_id": "nominal:acquisitions",
            "credit_account_id": data["account_id"], "amount_sats": data["quantity_sats"],
            "proposer": event["actor"], "position": event["position"], "expire_time_us": data["expire_time_us"],
            "purchase": dict(data)}

    def _on_PurchaseApproved(self, data: dict, event: dict) -> None:
        self._record_purchase(self._take_pending(data["purchase_id"], "purchase")["purchase"])

    def _on_PurchaseRejected(self, data: dict, event: dict) -> None:
        self._take_pending(data["purchase_id"], "purchase")

    def _on_PurchaseExpired(self, data: dict, event: dict) -> None:
        self._take_pending(data["purchase_id"], "purchase")

    def _propose(self, pending_id: str, kind: str, debit: str, credit: str, amount_sats: int, event: dict,
                 **extra) -> None:
        self.pending[pending_id] = {
            "pending_id": pending_id, "pending_kind": kind, "debit_account_id": debit, "credit_account_id": credit,
            "amount_sats": amount_sats, "proposer": event["actor"], "position": event["position"],
            "expire_time_us": event["data"]["expire_time_us"], **extra}
        self._hold(debit, amount_sats)

    def _release(self, pending_id: str, kind: str) -> dict:
        pending = self._take_pending(pending_id, kind)
        self._hold(pending["debit_account_id"], -pending["amount_sats"])
        return pending

    def _on_TransferProposed(self, data: dict, event: dict) -> None:
        self._propose(data["transfer_id"], "transfer", data["debit_account_id"], data["credit_account_id"],
                      data["amount_sats"], event)

    def _on_TransferApproved(self, data: dict, event: dict) -> None:
        pending = self._release(data["transfer_id"], "transfer")
        self._post(pending["debit_account_id"], pending["credit_account_id"], pending["amount_sats"])

    def _on_TransferRejected(self, data: dict, event: dict) -> None:
        self._release(data["transfer_id"], "transfer")

    def _on_TransferExpired(self, data: dict, event: dict) -> None:
        self._release(data["transfer_id"], "transfer")

    def _on_CustodyChangeProposed(self, data: dict, event: dict) -> None:
        self._propose(data["custody_change_id"], "custody_change", data["from_account_id"], data["to_account_id"],
                      data["amount_sats"], event, network_fee_sats=data["network_fee_sats"],
                      new_quorum=[data["new_quorum_required"], data["new_quorum_total"]])

    def _on_CustodyChangeApproved(self, data: dict, event: dict) -> None:
        pending = self._release(data["custody_change_id"], "custody_change")
        fee_sats = pending["network_fee_sats"]
        self._post(pending["debit_account_id"], pending["credit_account_id"], pending["amount_sats"] - fee_sats)
        if fee_sats:
            self._post(pending["debit_account_id"], "nominal:network-fees", fee_sats)
        if pending["new_quorum"][0]:
            self.accounts[pending["credit_account_id"]]["quorum"] = list(pending["new_quorum"])

    def _on_CustodyChangeRejected(self, data: dict, event: dict) -> None:
        self._release(data["custody_change_id"], "custody_change")

    def _on_CustodyChangeExpired(self, data: dict, event: dict) -> None:
        self._release(data["custody_change_id"], "custody_change")

    # --- serialisation (snapshots, rebuild comparison) ------------------------------------------------

    def to_dict(self) -> dict:
        return {"format_version": STATE_FORMAT_VERSION, "position": self.position, "time_us": self.time_us,
                "accounts": self.accounts, "pending": self.pending, "lots": self.lots,
                "currencies": self.currencies, "debits_sats": self.debits_sats, "credits_sats": self.credits_sats}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReserveState":
        fields = json.loads(data)
        if fields.pop("format_version") != STATE_FORMAT_VERSION:
            raise ValueError("unknown state format version")
        state = cls()
        for name, value in fields.items():
            setattr(state, name, value)
        return state

    def copy(self) -> "ReserveState":
        return ReserveState.from_bytes(self.to_bytes())


# --- query views (pure functions of a state) ---------------------------------------------------------

def balances(state: ReserveState) -> list[dict]:
    return [{"account_id": a["account_id"], "kind": a["kind"], "credits_sats": a["credits_sats"],
             "debits_sats": a["debits_sats"], "balance_sats": a["credits_sats"] - a["debits_sats"],
             "held_sats": a["held_sats"],
             "available_sats": a["credits_sats"] - a["debits_sats"] - a["held_sats"]}
            for a in sorted(state.accounts.values(), key=lambda a: a["account_id"])]


def holdings(state: ReserveState) -> dict:
    custodians: dict[str, dict] = {}
    for account in state.accounts.values():
        if account["kind"] == "nominal":
            continue
        entry = custodians.setdefault(account["custodian"], {"custodian": account["custodian"], "balance_sats": 0,
                                                             "held_sats": 0, "wallet_count": 0})
        entry["balance_sats"] += account["credits_sats"] - account["debits_sats"]
        entry["held_sats"] += account["held_sats"]
        entry["wallet_count"] += 1 if account["status"] != "closed" else 0
    rows = sorted(custodians.values(), key=lambda c: c["custodian"])
    return {"custodians": rows, "total_sats": sum(c["balance_sats"] for c in rows)}


def cost_basis(state: ReserveState) -> dict:
    per_currency: dict[str, dict] = {}
    with localcontext() as ctx:
        ctx.prec = 60
        for code, totals in sorted(state.currencies.items()):
            average = Decimal(totals["fiat_total"]) * SATS_PER_BTC / totals["quantity_sats"]
            per_currency[code] = {"currency_code": code, "quantity_sats": totals["quantity_sats"],
                                  "fiat_total": totals["fiat_total"],
                                  "average_price_per_btc": _plain(average.quantize(Decimal("0.00000001"))),
                                  "remaining_cost_fifo": Decimal(0), "remaining_sats": 0}
        for lot in state.lots:
            entry = per_currency.get(lot["currency_code"])
            if entry is not None and lot["remaining_sats"]:
                entry["remaining_sats"] += lot["remaining_sats"]
                entry["remaining_cost_fifo"] += Decimal(lot["price_per_btc"]) * lot["remaining_sats"] / SATS_PER_BTC
        for entry in per_currency.values():
            entry["remaining_cost_fifo"] = _plain(entry["remaining_cost_fifo"].quantize(Decimal("0.00000001")))
    return {"lots": [dict(lot) for lot in state.lots], "currencies": list(per_currency.values())}


def _plain(number: Decimal) -> str:
    return format(number, "f")
