"""Decisions: given the state, a validated command, its caller and the record time, which event?

Nothing here mutates state; the caller folds the returned event into the state. Roles are checked by
the service (one method -> roles table); four-eyes, balances and account status are checked here.
"""

import dataclasses

from typing import Any

from ledger import commands as cmd
from ledger import errors
from ledger import pending as kinds
from ledger.accounts import ADJUSTMENTS, DISPOSALS, Account
from ledger.limits import EXPIRY_DEFAULT_US, EXPIRY_MAX_US, SATS_PER_BTC
from ledger.pending import Pending, PendingKind
from ledger.state import ReserveState

EventData = dict[str, Any]   # an event's data, as it goes into ledger.events.CanonicalEvent["data"]
Decision = tuple[str, EventData]


@dataclasses.dataclass(frozen=True)
class Policy:
    """Configuration the rules depend on; recorded in docs, supplied by the service."""

    # Purchases strictly above this quantity wait for a second identity's approval.
    purchase_approval_threshold_sats: int = 10 * SATS_PER_BTC


def _account(state: ReserveState, account_id: str, field: str) -> Account:
    account = state.accounts.get(account_id)
    if account is None:
        raise errors.AccountNotFound(f"account {account_id!r} does not exist", field=field)
    return account


def _usable(state: ReserveState, account_id: str, field: str) -> Account:
    account = _account(state, account_id, field)
    if account.status == "closed":
        raise errors.AccountClosed(f"account {account_id!r} is closed", field=field)
    if account.status == "frozen":
        raise errors.AccountFrozen(f"account {account_id!r} is frozen", field=field)
    return account


def _custody(state: ReserveState, account_id: str, field: str) -> Account:
    account = _usable(state, account_id, field)
    if account.is_nominal:
        raise errors.AccountMustBeCustody(f"account {account_id!r} is nominal, not a custody account", field=field)
    return account


def _changeable(state: ReserveState, account_id: str) -> Account:
    account = _account(state, account_id, "account_id")
    if account.is_nominal:
        raise errors.NominalAccountCannotChange(f"nominal account {account_id!r} cannot change", field="account_id")
    if account.status == "closed":
        raise errors.AccountClosed(f"account {account_id!r} is closed", field="account_id")
    return account


def _expiry(requested_us: int, time_us: int) -> int:
    if requested_us == 0:
        return time_us + EXPIRY_DEFAULT_US
    if not time_us < requested_us <= time_us + EXPIRY_MAX_US:
        raise errors.RequestInvalid([errors.Violation(
            "expire_time", "EXPIRE_TIME_OUT_OF_RANGE", "expire_time must be in the future and within 90 days")])
    return requested_us


def _pending(state: ReserveState, pending_id: str, kind: PendingKind, field: str = "") -> Pending:
    pending = state.pending.get(pending_id)
    if pending is None or pending.pending_kind != kind.name:
        error = errors.PendingNotFound(f"no pending {kind.name} {pending_id!r}", field=field or kind.id_field)
        error.pending_id = pending_id
        raise error
    return pending


def _approve(state: ReserveState, pending_id: str, kind: PendingKind, caller: cmd.Caller, time_us: int) -> EventData:
    """The approval event's data, once four eyes, expiry and both accounts allow it."""
    pending, field = _pending(state, pending_id, kind), kind.id_field
    if pending.proposer == caller.identity:
        raise errors.ApproverMustDifferFromProposer(
            f"{caller.identity!r} proposed {pending_id} and cannot also approve it", field=field)
    if time_us >= pending.expire_time_us:
        raise errors.PendingExpired(f"{pending_id} expired and can no longer be approved", field=field)
    for account_id in (pending.debit_account_id, pending.credit_account_id):
        _usable(state, account_id, field)
    return {kind.id_field: pending_id, "proposer": pending.proposer}


def decide(state: ReserveState, command: cmd.Command, caller: cmd.Caller, time_us: int, policy: Policy) -> Decision:
    """The event a command produces now, or a LedgerError naming the rule it breaks."""
    position = state.position + 1
    match command:
        case cmd.OpenAccount():
            if command.account_id in state.accounts:
                raise errors.AccountAlreadyExists(f"account {command.account_id!r} exists", field="account_id")
            return "AccountOpened", command.payload()
        case cmd.FreezeAccount():
            if _changeable(state, command.account_id).status == "frozen":
                raise errors.AccountFrozen(f"account {command.account_id!r} is already frozen", field="account_id")
            return "AccountFrozen", command.payload()
        case cmd.UnfreezeAccount():
            if _changeable(state, command.account_id).status != "frozen":
                raise errors.AccountNotFrozen(f"account {command.account_id!r} is not frozen", field="account_id")
            return "AccountUnfrozen", command.payload()
        case cmd.CloseAccount():
            account = _changeable(state, command.account_id)
            if state.balance_sats(command.account_id) or account.held_sats:
                raise errors.AccountNotEmpty(f"account {command.account_id!r} still holds sats", field="account_id")
            return "AccountClosed", command.payload()
        case cmd.RecordPurchase():
            _custody(state, command.account_id, "account_id")
            data = {"purchase_id": kinds.PURCHASE.new_id(position), **command.payload()}
            if command.quantity_sats > policy.purchase_approval_threshold_sats:
                return kinds.PURCHASE.proposed, {**data, "expire_time_us": time_us + EXPIRY_DEFAULT_US}
            return "ReservePurchased", data
        case cmd.ApprovePurchase():
            return kinds.PURCHASE.approved, _approve(state, command.purchase_id, kinds.PURCHASE, caller, time_us)
        case cmd.RejectPurchase():
            _pending(state, command.purchase_id, kinds.PURCHASE)
            return kinds.PURCHASE.rejected, command.payload()
        case cmd.ProposeTransfer():
            return kinds.TRANSFER.proposed, _propose_transfer(state, command, position, time_us)
        case cmd.ApproveTransfer():
            return kinds.TRANSFER.approved, _approve(state, command.transfer_id, kinds.TRANSFER, caller, time_us)
        case cmd.RejectTransfer():
            _pending(state, command.transfer_id, kinds.TRANSFER)
            return kinds.TRANSFER.rejected, command.payload()
        case cmd.ExpirePending():
            return _expire(state, command.pending_id, time_us)
        case cmd.ProposeCustodyChange():
            return kinds.CUSTODY_CHANGE.proposed, _propose_custody_change(state, command, position, time_us)
        case cmd.ApproveCustodyChange():
            return kinds.CUSTODY_CHANGE.approved, _approve(state, command.custody_change_id, kinds.CUSTODY_CHANGE,
                                                           caller, time_us)
        case cmd.RejectCustodyChange():
            _pending(state, command.custody_change_id, kinds.CUSTODY_CHANGE)
            return kinds.CUSTODY_CHANGE.rejected, command.payload()
    raise TypeError(f"no rule for {type(command).__name__}")  # a bug: every command has a rule


def _require_available(state: ReserveState, account_id: str, amount_sats: int, field: str) -> None:
    if not state.accounts[account_id].is_nominal and state.available_sats(account_id) < amount_sats:
        raise errors.InsufficientAvailableBalance(
            f"account {account_id!r} has {state.available_sats(account_id)} sats available (after holds), "
            f"{amount_sats} requested", field=field)


def _propose_transfer(state: ReserveState, command: cmd.ProposeTransfer, position: int, time_us: int) -> EventData:
    debit = _usable(state, command.debit_account_id, "debit_account_id")
    credit = _usable(state, command.credit_account_id, "credit_account_id")
    is_correction = ADJUSTMENTS in (command.debit_account_id, command.credit_account_id)
    if debit.is_nominal and credit.is_nominal:
        raise errors.AccountMustBeCustody("a transfer needs a custody account on one side", field="debit_account_id")
    if (debit.is_nominal or credit.is_nominal) and not is_correction and command.credit_account_id != DISPOSALS:
        raise errors.AccountMustBeCustody(
            "transfers touch nominal accounts only as corrections (adjustments) or disposals",
            field="credit_account_id" if credit.is_nominal else "debit_account_id")
    if command.corrects_position > state.position:
        raise errors.CorrectedPositionUnknown(
            f"position {command.corrects_position} is not in the log", field="corrects_position")
    _require_available(state, command.debit_account_id, command.amount_sats, "amount_sats")
    return {"transfer_id": kinds.TRANSFER.new_id(position), **command.payload(),
            "expire_time_us": _expiry(command.expire_time_us, time_us)}


def _propose_custody_change(state: ReserveState, command: cmd.ProposeCustodyChange, position: int,
                            time_us: int) -> EventData:
    _custody(state, command.from_account_id, "from_account_id")
    _custody(state, command.to_account_id, "to_account_id")
    _require_available(state, command.from_account_id, command.amount_sats, "amount_sats")
    return {"custody_change_id": kinds.CUSTODY_CHANGE.new_id(position), **command.payload(),
            "expire_time_us": _expiry(command.expire_time_us, time_us)}


def _expire(state: ReserveState, pending_id: str, time_us: int) -> Decision:
    kind = kinds.kind_of_id(pending_id)
    assert kind is not None, pending_id  # ExpirePending.check admits only the registered prefixes
    pending = _pending(state, pending_id, kind, "pending_id")
    if time_us < pending.expire_time_us:
        raise errors.PendingNotYetExpired(f"{pending_id} expires later", field="pending_id")
    return kind.expired, {kind.id_field: pending_id}


def due_for_expiry(state: ReserveState, time_us: int) -> list[str]:
    return sorted(p.pending_id for p in state.pending.values() if p.expire_time_us <= time_us)
