"""Decisions: given the state, a validated command, its caller and the record time, which event?

Nothing here mutates state; the caller folds the returned event into the state. Roles are checked by
the service (one method -> roles table); four-eyes, balances, bounds and account status are checked here.
`check_recorded` is the fold's half of the pairing: it decides again the command an event records.
"""

import dataclasses

from typing import TYPE_CHECKING, Any

from ledger import commands as cmd
from ledger import errors
from ledger import monitor
from ledger import pending as kinds
from ledger.accounts import ACQUISITIONS, ADJUSTMENTS, DISPOSALS, NETWORK_FEES, Account
from ledger.events import EVENT_FIELDS, EVENT_OPTIONAL_FIELDS, METADATA_FIELDS, CanonicalEvent, has_catalogue_fields
from ledger.limits import EXPIRY_DEFAULT_US, EXPIRY_MAX_US, SATS_PER_BTC, SUPPLY_CAP_SATS, TURNOVER_MAX_SATS
from ledger.pending import Pending, PendingKind

if TYPE_CHECKING:  # state.py folds through check_recorded below, so it imports this module
    from ledger.state import ReserveState

EventData = dict[str, Any]   # an event's data, as it goes into ledger.events.CanonicalEvent["data"]
Decision = tuple[str, EventData]


@dataclasses.dataclass(frozen=True)
class Policy:
    """Configuration the rules depend on; recorded in docs, supplied by the service."""

    # Purchases strictly above this quantity wait for a second identity's approval.
    purchase_approval_threshold_sats: int = 10 * SATS_PER_BTC


def _account(state: "ReserveState", account_id: str, field: str) -> Account:
    account = state.accounts.get(account_id)
    if account is None:
        raise errors.AccountNotFound(f"account {account_id!r} does not exist", field=field)
    return account


def _usable(state: "ReserveState", account_id: str, field: str) -> Account:
    account = _account(state, account_id, field)
    if account.status == "closed":
        raise errors.AccountClosed(f"account {account_id!r} is closed", field=field)
    if account.status == "frozen":
        raise errors.AccountFrozen(f"account {account_id!r} is frozen", field=field)
    return account


def _custody(state: "ReserveState", account_id: str, field: str) -> Account:
    account = _usable(state, account_id, field)
    if account.is_nominal:
        raise errors.AccountMustBeCustody(f"account {account_id!r} is nominal, not a custody account", field=field)
    return account


def _changeable(state: "ReserveState", account_id: str) -> Account:
    account = _account(state, account_id, "account_id")
    if account.is_nominal:
        raise errors.NominalAccountCannotChange(f"nominal account {account_id!r} cannot change", field="account_id")
    if account.status == "closed":
        raise errors.AccountClosed(f"account {account_id!r} is closed", field="account_id")
    return account


def _expiry(requested_us: int | None, time_us: int) -> int:
    if requested_us is None:
        return time_us + EXPIRY_DEFAULT_US
    if not time_us < requested_us <= time_us + EXPIRY_MAX_US:
        raise errors.RequestInvalid([errors.Violation(
            "expire_time", "EXPIRE_TIME_OUT_OF_RANGE", "expire_time must be in the future and within 90 days")])
    return requested_us


def _pending(state: "ReserveState", pending_id: str, kind: PendingKind, field: str = "") -> Pending:
    pending = state.pending.get(pending_id)
    if pending is None or pending.pending_kind != kind.name:
        error = errors.PendingNotFound(f"no pending {kind.name} {pending_id!r}", field=field or kind.id_field)
        error.pending_id = pending_id
        raise error
    return pending


def _approve(state: "ReserveState", pending_id: str, kind: PendingKind, caller: cmd.Caller,
             time_us: int) -> EventData:
    """The approval event's data, once four eyes, expiry, both accounts and the bounds allow it."""
    pending, field = _pending(state, pending_id, kind), kind.id_field
    if pending.proposer == caller.identity:
        raise errors.ApproverMustDifferFromProposer(
            f"{caller.identity!r} proposed {pending_id} and cannot also approve it", field=field)
    if time_us >= pending.expire_time_us:
        raise errors.PendingExpired(f"{pending_id} expired and can no longer be approved", field=field)
    for account_id in (pending.debit_account_id, pending.credit_account_id):
        _usable(state, account_id, field)
    _require_within_bounds(state, _postings_of(pending), field)
    data = {kind.id_field: pending_id, "proposer": pending.proposer}
    closes = monitor.closed_by_correction(state, pending.corrects_position, pending.debit_account_id,
                                          pending.credit_account_id) if pending.corrects_position >= 0 else []
    return {**data, "closes_discrepancy_ids": closes} if closes else data


def decide(state: "ReserveState", command: cmd.Command, caller: cmd.Caller, time_us: int, policy: Policy) -> Decision:
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
            _require_within_bounds(state, [(ACQUISITIONS, command.account_id, command.quantity_sats)], "quantity_sats")
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
        case cmd.RotateSigningKey():
            return "SigningKeyRotated", command.payload()
        case cmd.ExpirePending():
            return _expire(state, command.pending_id, time_us, "pending_id")
        case cmd.ExpireTransfer():
            if kinds.kind_of_id(command.transfer_id) is not kinds.TRANSFER:
                raise errors.PendingNotFound(f"no pending transfer {command.transfer_id!r}", field="transfer_id")
            return _expire(state, command.transfer_id, time_us, "transfer_id")
        case cmd.ProposeCustodyChange():
            return kinds.CUSTODY_CHANGE.proposed, _propose_custody_change(state, command, position, time_us)
        case cmd.ApproveCustodyChange():
            return kinds.CUSTODY_CHANGE.approved, _approve(state, command.custody_change_id, kinds.CUSTODY_CHANGE,
                                                           caller, time_us)
        case cmd.RejectCustodyChange():
            _pending(state, command.custody_change_id, kinds.CUSTODY_CHANGE)
            return kinds.CUSTODY_CHANGE.rejected, command.payload()
        case cmd.ObserveReserveDiscrepancy():
            return "ReserveDiscrepancyObserved", _observe_discrepancy(state, command, position)
        case cmd.RecordDiscrepancyReorgedOut():
            _open_discrepancy(state, command.discrepancy_id, "discrepancy_id")
            if command.best_block_hash == state.discrepancies[command.discrepancy_id].block_hash:
                raise errors.RequestInvalid([errors.Violation(
                    "best_block_hash", "BLOCK_STILL_BEST", "the discrepancy's block is still the best-chain block")])
            return "ReserveDiscrepancyReorgedOut", command.payload()
    raise TypeError(f"no rule for {type(command).__name__}")  # a bug: every command has a rule


def _open_discrepancy(state: "ReserveState", discrepancy_id: str, field: str) -> monitor.Discrepancy:
    discrepancy = state.discrepancies.get(discrepancy_id)
    if discrepancy is None:
        raise errors.DiscrepancyNotFound(f"no discrepancy {discrepancy_id!r}", field=field)
    if discrepancy.status != monitor.OPEN:
        raise errors.DiscrepancyNotOpen(f"{discrepancy_id} is {discrepancy.status}", field=field)
    return discrepancy


def _observe_discrepancy(state: "ReserveState", command: cmd.ObserveReserveDiscrepancy, position: int) -> EventData:
    """An observation is recorded once per account and block, and only when the ledger does not explain it."""
    account = _account(state, command.account_id, "account_id")
    if account.is_nominal:
        raise errors.AccountMustBeCustody(f"account {command.account_id!r} is nominal", field="account_id")
    standing = monitor.standing_at(state, command.account_id, command.block_hash)
    if standing is not None:
        raise errors.DiscrepancyAlreadyObserved(
            f"{standing.discrepancy_id} already records {command.account_id} in block {command.block_hash}",
            field="block_hash")
    finding = monitor.finding_of(state, command.account_id, command.txids, command.movement_sats,
                                 command.onchain_sats)
    if finding is None:
        raise errors.MovementExplained(f"the ledger explains the movement of {command.movement_sats} sats at "
                                       f"{command.account_id} in block {command.block_hash}", field="txids")
    return {"discrepancy_id": monitor.discrepancy_id(position), **command.payload(),
            "ledger_sats": account.balance_sats, "finding": finding}


def _require_available(state: "ReserveState", account_id: str, amount_sats: int, field: str) -> None:
    if not state.accounts[account_id].is_nominal and state.available_sats(account_id) < amount_sats:
        raise errors.InsufficientAvailableBalance(
            f"account {account_id!r} has {state.available_sats(account_id)} sats available (after holds), "
            f"{amount_sats} requested", field=field)


def _propose_transfer(state: "ReserveState", command: cmd.ProposeTransfer, position: int, time_us: int) -> EventData:
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
    corrected = monitor.discrepancy_id(command.corrects_position)
    if corrected in state.discrepancies:
        discrepancy = _open_discrepancy(state, corrected, "corrects_position")
        if discrepancy.account_id not in (command.debit_account_id, command.credit_account_id):
            raise errors.CorrectionMustTouchAccount(
                f"{corrected} is about {discrepancy.account_id}: its correction must debit or credit it",
                field="corrects_position")
    _require_available(state, command.debit_account_id, command.amount_sats, "amount_sats")
    _require_hold_within(state, command.debit_account_id, command.amount_sats)
    _require_within_bounds(state, [(command.debit_account_id, command.credit_account_id, command.amount_sats)],
                           "amount_sats")
    return {"transfer_id": kinds.TRANSFER.new_id(position), **command.payload(),
            "expire_time_us": _expiry(command.expire_time_us, time_us)}


def _propose_custody_change(state: "ReserveState", command: cmd.ProposeCustodyChange, position: int,
                            time_us: int) -> EventData:
    _custody(state, command.from_account_id, "from_account_id")
    _custody(state, command.to_account_id, "to_account_id")
    _require_available(state, command.from_account_id, command.amount_sats, "amount_sats")
    _require_hold_within(state, command.from_account_id, command.amount_sats)
    _require_within_bounds(state, _custody_postings(command.from_account_id, command.to_account_id,
                                                    command.amount_sats, command.network_fee_sats), "amount_sats")
    return {"custody_change_id": kinds.CUSTODY_CHANGE.new_id(position), **command.payload(),
            "expire_time_us": _expiry(command.expire_time_us, time_us)}


def _expire(state: "ReserveState", pending_id: str, time_us: int, field: str) -> Decision:
    kind = kinds.kind_of_id(pending_id)
    assert kind is not None, pending_id  # the commands' checks admit only the registered prefixes
    pending = _pending(state, pending_id, kind, field)
    if time_us < pending.expire_time_us:
        raise errors.PendingNotYetExpired(f"{pending_id} expires later", field=field)
    return kind.expired, {kind.id_field: pending_id}


def due_for_expiry(state: "ReserveState", time_us: int) -> list[str]:
    return sorted(p.pending_id for p in state.pending.values() if p.expire_time_us <= time_us)


# --- bounds: the supply cap and what the API's int64 fields can carry ---------------------------------------

Posting = tuple[str, str, int]   # (debit account, credit account, sats)


def _custody_postings(from_account_id: str, to_account_id: str, amount_sats: int, fee_sats: int) -> list[Posting]:
    fee = [(from_account_id, NETWORK_FEES, fee_sats)] if fee_sats else []
    return [(from_account_id, to_account_id, amount_sats - fee_sats), *fee]


def _postings_of(pending: Pending) -> list[Posting]:
    """What approving a pending item posts (ReserveState's handlers post exactly these)."""
    if pending.pending_kind == kinds.CUSTODY_CHANGE.name:
        return _custody_postings(pending.debit_account_id, pending.credit_account_id, pending.amount_sats,
                                 pending.network_fee_sats)
    return [(pending.debit_account_id, pending.credit_account_id, pending.amount_sats)]


def _require_within_bounds(state: "ReserveState", postings: list[Posting], field: str) -> None:
    """Refuse postings after which a balance of either sign or the custody total would pass the supply cap, or
    an account's credits or debits would pass TURNOVER_MAX_SATS. The purchase sum is the negated balance of
    nominal:acquisitions (only purchases touch it), so it is bounded here too."""
    moved: dict[str, list[int]] = {}
    for debit_account_id, credit_account_id, amount_sats in postings:
        moved.setdefault(credit_account_id, [0, 0])[0] += amount_sats
        moved.setdefault(debit_account_id, [0, 0])[1] += amount_sats
    custody = {a: moves for a, moves in moved.items() if not state.accounts[a].is_nominal}
    for account_id, (credits_sats, debits_sats) in custody.items():   # custody accounts are named first
        _require_account_within(state.accounts[account_id], credits_sats, debits_sats, field)
    custody_total_sats = state.custody_total_sats + sum(c - d for c, d in custody.values())
    if custody_total_sats > SUPPLY_CAP_SATS:
        credited = postings[0][1]
        raise errors.SupplyCapExceeded(credited, f"crediting account {credited!r} would bring the custody accounts "
                                       f"to {custody_total_sats} sats, beyond the {SUPPLY_CAP_SATS} sats that can "
                                       "exist", field=field)
    for account_id, (credits_sats, debits_sats) in moved.items():
        if account_id not in custody:
            _require_account_within(state.accounts[account_id], credits_sats, debits_sats, field)


def _require_account_within(account: Account, credits_sats: int, debits_sats: int, field: str) -> None:
    account_id = account.account_id
    if max(account.credits_sats + credits_sats, account.debits_sats + debits_sats) > TURNOVER_MAX_SATS:
        raise errors.TurnoverLimitExceeded(account_id, f"account {account_id!r} would have more than "
                                           f"{TURNOVER_MAX_SATS} sats credited or debited in total", field=field)
    balance_sats = account.balance_sats + credits_sats - debits_sats
    if abs(balance_sats) > SUPPLY_CAP_SATS:
        raise errors.SupplyCapExceeded(account_id, f"account {account_id!r} would have a balance of {balance_sats} "
                                       f"sats, beyond the {SUPPLY_CAP_SATS} sats (21 million BTC) that can exist",
                                       field=field)


def _require_hold_within(state: "ReserveState", account_id: str, amount_sats: int) -> None:
    held_sats = state.accounts[account_id].held_sats + amount_sats
    if held_sats > SUPPLY_CAP_SATS:
        raise errors.SupplyCapExceeded(account_id, f"holds on account {account_id!r} would reach {held_sats} sats, "
                                       f"beyond the {SUPPLY_CAP_SATS} sats that can exist", field="amount_sats")


# --- the fold's half of the pairing: decide again what an event records -------------------------------------

# The command each event type records; the expiries of every kind are decided by ExpirePending.
RECORDING_COMMAND: dict[str, type[cmd.Command]] = {
    "AccountOpened": cmd.OpenAccount, "AccountFrozen": cmd.FreezeAccount, "AccountUnfrozen": cmd.UnfreezeAccount,
    "AccountClosed": cmd.CloseAccount, "ReservePurchased": cmd.RecordPurchase,
    kinds.PURCHASE.proposed: cmd.RecordPurchase, kinds.PURCHASE.approved: cmd.ApprovePurchase,
    kinds.PURCHASE.rejected: cmd.RejectPurchase,
    kinds.TRANSFER.proposed: cmd.ProposeTransfer, kinds.TRANSFER.approved: cmd.ApproveTransfer,
    kinds.TRANSFER.rejected: cmd.RejectTransfer,
    kinds.CUSTODY_CHANGE.proposed: cmd.ProposeCustodyChange, kinds.CUSTODY_CHANGE.approved: cmd.ApproveCustodyChange,
    kinds.CUSTODY_CHANGE.rejected: cmd.RejectCustodyChange,
    **{kind.expired: cmd.ExpirePending for kind in kinds.PENDING_KINDS},
    "ReserveDiscrepancyObserved": cmd.ObserveReserveDiscrepancy,
    "ReserveDiscrepancyReorgedOut": cmd.RecordDiscrepancyReorgedOut,
    "SigningKeyRotated": cmd.RotateSigningKey,
}
assert RECORDING_COMMAND.keys() == EVENT_FIELDS.keys(), set(RECORDING_COMMAND) ^ set(EVENT_FIELDS)
EVENT_KEYS = frozenset({"format_version", "position", "type", "time_us", "data", *METADATA_FIELDS})
# The replay cannot know the configured approval threshold: it takes the recorded choice (proposed or posted).
_RECORDED_CHOICE = {kinds.PURCHASE.proposed: Policy(purchase_approval_threshold_sats=0)}
_POSTED_AT_ONCE = Policy(purchase_approval_threshold_sats=SUPPLY_CAP_SATS)


def check_recorded(state: "ReserveState", event: CanonicalEvent) -> None:
    """Refuse an event its command would not have produced: the command is rebuilt from the event, validated
    and decided again on `state`, by the recorded actor at the recorded time, and the decision must equal the
    event. Raises InvariantBroken naming the position and the rule (the reason the API would have refused with)."""
    position = event["position"]
    _check_shape(event)
    if event["time_us"] < state.time_us:
        raise errors.InvariantBroken(position, "TIME_BEFORE_PREVIOUS_EVENT",
                                     f"recorded at {event['time_us']} us, before the previous event ({state.time_us})")
    try:
        command = _recorded_command(event)
        command.validate()
        decided = decide(state, command, cmd.Caller(event["actor"], event["actor_role"]), event["time_us"],
                         _RECORDED_CHOICE.get(event["type"], _POSTED_AT_ONCE))
    except errors.LedgerError as error:
        raise errors.InvariantBroken(position, error.reason, str(error)) from None
    if decided != (event["type"], event["data"]):
        data = event["data"]
        differing = sorted(k for k in decided[1].keys() | data.keys() if decided[1].get(k) != data.get(k))
        raise errors.InvariantBroken(position, "EVENT_NOT_AS_DECIDED", f"its command decides {decided[0]}, not "
                                     f"{event['type']} as recorded (differing: {', '.join(differing) or 'type'})")


def _check_shape(event: CanonicalEvent) -> None:
    position, data = event["position"], event.get("data")
    problem = None
    if event.keys() != EVENT_KEYS:
        problem = f"the event's fields are {sorted(event)}"
    elif event["type"] not in EVENT_FIELDS:
        problem = f"unknown event type {event['type']!r}"
    elif not isinstance(data, dict) or not has_catalogue_fields(event["type"], data.keys()):
        problem = f"{event['type']} must have exactly the fields {sorted(EVENT_FIELDS[event['type']])}" + (
            f" (and, when set, {sorted(EVENT_OPTIONAL_FIELDS[event['type']])})"
            if event["type"] in EVENT_OPTIONAL_FIELDS else "")
    elif type(event["time_us"]) is not int or any(type(event[f]) is not str for f in METADATA_FIELDS):
        problem = "time_us must be an integer and request_id, request_digest, actor, actor_role strings"
    elif not event["actor"]:
        problem = "actor is empty"
    if problem:
        raise errors.InvariantBroken(position, "EVENT_MALFORMED", problem)


def _recorded_command(event: CanonicalEvent) -> cmd.Command:
    command_type, data = RECORDING_COMMAND[event["type"]], event["data"]
    if command_type is cmd.ExpirePending:
        (pending_id,) = data.values()
        return cmd.ExpirePending(event["request_id"], pending_id)
    values = {name: tuple(data[name]) if type(data[name]) is list else data[name]
              for name, _ in cmd.field_types(command_type) if name in data}
    return command_type(request_id=event["request_id"], **values)
