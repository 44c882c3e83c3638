"""ReserveLedgerService: proto -> one ledger call -> proto. No business rules and no try/except here;
errors raised as LedgerError are turned into statuses by the interceptor (services/api/interceptor.py)."""

import collections
import contextlib
import json
import threading

from google.protobuf import timestamp_pb2

from ledger import commands as cmd
from ledger import errors, limits
from ledger import state as views
from ledger.accounts import CUSTODY_KINDS, NOMINAL_KIND, Account
from ledger.application import Recorded, ReserveLedger
from ledger.pending import Pending
from reserve_ledger.v1 import ledger_pb2 as pb
from reserve_ledger.v1 import ledger_pb2_grpc
from services.api.auth import caller_of
from services.api.paging import offset_of, offsets_of, token_invalid, token_of, within_bytes
from services.api.tail import LogTail
from services.reserves.descriptors import require_derivable
from services.store.writer import CommandWriter

KIND_TO_PROTO = {"cold": pb.ACCOUNT_KIND_COLD, "warm": pb.ACCOUNT_KIND_WARM, "hot": pb.ACCOUNT_KIND_HOT,
                 NOMINAL_KIND: pb.ACCOUNT_KIND_NOMINAL}
assert set(KIND_TO_PROTO) == {*CUSTODY_KINDS, NOMINAL_KIND}, KIND_TO_PROTO
PROTO_TO_KIND = {KIND_TO_PROTO[kind]: kind for kind in CUSTODY_KINDS}
STATUS_TO_PROTO = {"open": pb.ACCOUNT_STATUS_OPEN, "frozen": pb.ACCOUNT_STATUS_FROZEN,
                   "closed": pb.ACCOUNT_STATUS_CLOSED}
STREAM_HEARTBEAT_S = 5.0
STREAM_RETRY_S = 0.2


def time_us_of(stamp: timestamp_pb2.Timestamp, field: str) -> int:
    """Microseconds since the epoch of a valid Timestamp (the ranges google/protobuf/timestamp.proto defines)."""
    if not (limits.TIMESTAMP_SECONDS_MIN <= stamp.seconds <= limits.TIMESTAMP_SECONDS_MAX
            and 0 <= stamp.nanos <= limits.TIMESTAMP_NANOS_MAX):
        rule = "EXPIRE_TIME_INVALID" if field == "expire_time" else "TIMESTAMP_INVALID"
        raise errors.RequestInvalid([errors.Violation(
            field, rule, f"{field} must be a valid Timestamp: seconds within 0001-01-01..9999-12-31, "
                         f"nanos 0..{limits.TIMESTAMP_NANOS_MAX}")])
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def expire_time_us_of(request) -> int | None:
    return time_us_of(request.expire_time, "expire_time") if request.HasField("expire_time") else None


def timestamp_of(time_us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=time_us // 1_000_000, nanos=(time_us % 1_000_000) * 1000)


def result_of(recorded: Recorded) -> pb.CommandResult:
    return pb.CommandResult(position=recorded.position, event_type=recorded.event_type, replayed=recorded.replayed)


def event_to_proto(event: dict, event_bytes: bytes, leaf: bytes) -> pb.Event:
    return pb.Event(position=event["position"], event_type=event["type"], actor=event["actor"],
                    actor_role=event["actor_role"], record_time=timestamp_of(event["time_us"]),
                    payload_json=json.dumps(event["data"], sort_keys=True, separators=(",", ":")),
                    canonical_bytes=event_bytes, leaf_hash=leaf)


def account_to_proto(account: Account) -> pb.Account:
    return pb.Account(account_id=account.account_id, kind=KIND_TO_PROTO[account.kind],
                      status=STATUS_TO_PROTO[account.status], custodian=account.custodian,
                      wallet_label=account.wallet_label,
                      quorum=pb.Quorum(required=account.quorum[0], total=account.quorum[1]),
                      addresses=account.addresses, descriptor=account.descriptor, gap_limit=account.gap_limit)


def pending_to_proto(pending: Pending) -> pb.Pending:
    return pb.Pending(pending_id=pending.pending_id, pending_kind=pending.pending_kind,
                      debit_account_id=pending.debit_account_id, credit_account_id=pending.credit_account_id,
                      amount_sats=pending.amount_sats, proposer=pending.proposer, position=pending.position,
                      expire_time=timestamp_of(pending.expire_time_us))


def page_size_of(requested: int, field: str = "page_size") -> int:
    if requested < 0:
        raise errors.RequestInvalid([errors.Violation(field, "PAGE_SIZE_NEGATIVE", f"{field} must not be negative")])
    return min(requested or limits.PAGE_SIZE_DEFAULT, limits.PAGE_SIZE_MAX)


class CostBasisSnapshots:
    """The states (and their totals) that GetCostBasis listings page through, by position, the newest few kept:
    later pages read the first page's position without walking every open lot again. A snapshot not kept
    (evicted, or another server issued the token) is folded again from the log."""

    def __init__(self, ledger: ReserveLedger):
        self._ledger = ledger
        self._kept: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()

    def totals(self, snapshot) -> dict:
        """The totals of a first page's snapshot, kept with it for the later pages."""
        with self._lock:
            kept = self._kept.get(snapshot.position)
        if kept is not None:
            return kept[1]
        totals = views.cost_totals(snapshot)
        self._keep(snapshot, totals)
        return totals

    def at(self, position: int) -> tuple:
        """The snapshot at `position` and its totals (a page token's position, not beyond the log)."""
        with self._lock:
            kept = self._kept.get(position)
            if kept is not None:
                self._kept.move_to_end(position)
                return kept
        with self._ledger.reading() as live:
            if position > live.position:
                raise token_invalid()
        snapshot = self._ledger.state_as_of(position)
        totals = views.cost_totals(snapshot)
        self._keep(snapshot, totals)
        return snapshot, totals

    def _keep(self, snapshot, totals: dict) -> None:
        with self._lock:
            self._kept[snapshot.position] = (snapshot, totals)
            self._kept.move_to_end(snapshot.position)
            while len(self._kept) > limits.COST_BASIS_SNAPSHOTS_MAX:
                self._kept.popitem(last=False)


class LedgerServicer(ledger_pb2_grpc.ReserveLedgerServiceServicer):
    def __init__(self, ledger: ReserveLedger, writer: CommandWriter, leaf_of, dev_mode: bool = False,
                 tail: LogTail | None = None):
        """`tail` tells follow streams when the log grows (the server shares one; by default one of its own)."""
        self._ledger = ledger
        self._writer = writer
        self._leaf_of = leaf_of
        self._dev_mode = dev_mode
        self._tail = tail or LogTail(ledger.store.log_size)
        self._cost_snapshots = CostBasisSnapshots(ledger)

    def _run(self, command: cmd.Command, context) -> Recorded:
        command.validate()
        remaining_s = context.time_remaining()
        outcome = self._writer.execute(command, caller_of(context, self._dev_mode), context.is_active,
                                       remaining_s if remaining_s is not None and remaining_s < 86_400 else None)
        if isinstance(outcome, errors.LedgerError):
            raise outcome
        return outcome

    # --- accounts -------------------------------------------------------------------------------------

    def OpenAccount(self, request, context):
        command = cmd.OpenAccount(
            request_id=request.request_id, account_id=request.account_id,
            kind=PROTO_TO_KIND.get(request.kind, "unspecified"), custodian=request.custodian,
            wallet_label=request.wallet_label, quorum_required=request.quorum.required,
            quorum_total=request.quorum.total, addresses=tuple(request.addresses), descriptor=request.descriptor,
            gap_limit=request.gap_limit)
        command.validate()
        require_derivable(command.descriptor)
        recorded = self._run(command, context)
        data = recorded.data
        return pb.OpenAccountResponse(result=result_of(recorded), account=pb.Account(
            account_id=data["account_id"], kind=KIND_TO_PROTO[data["kind"]], status=pb.ACCOUNT_STATUS_OPEN,
            custodian=data["custodian"], wallet_label=data["wallet_label"],
            quorum=pb.Quorum(required=data["quorum_required"], total=data["quorum_total"]),
            addresses=data["addresses"], descriptor=data["descriptor"], gap_limit=data.get("gap_limit", 0)))

    def FreezeAccount(self, request, context):
        recorded = self._run(cmd.FreezeAccount(request.request_id, request.account_id, request.reason), context)
        return pb.FreezeAccountResponse(result=result_of(recorded))

    def UnfreezeAccount(self, request, context):
        recorded = self._run(cmd.UnfreezeAccount(request.request_id, request.account_id, request.reason), context)
        return pb.UnfreezeAccountResponse(result=result_of(recorded))

    def CloseAccount(self, request, context):
        recorded = self._run(cmd.CloseAccount(request.request_id, request.account_id, request.reason), context)
        return pb.CloseAccountResponse(result=result_of(recorded))

    # --- purchases ------------------------------------------------------------------------------------

    def RecordPurchase(self, request, context):
        recorded = self._run(cmd.RecordPurchase(
            request_id=request.request_id, account_id=request.account_id, quantity_sats=request.quantity_sats,
            price_per_btc=request.price_per_btc, currency_code=request.currency_code,
            fiat_total=request.fiat_total, counterparty=request.counterparty,
            trade_reference=request.trade_reference, trade_date=request.trade_date, txid=request.txid), context)
        return pb.RecordPurchaseResponse(result=result_of(recorded), purchase_id=recorded.data["purchase_id"],
                                         pending_approval=recorded.event_type == "PurchaseProposed")

    def ApprovePurchase(self, request, context):
        recorded = self._run(cmd.ApprovePurchase(request.request_id, request.purchase_id), context)
        return pb.ApprovePurchaseResponse(result=result_of(recorded))

    def RejectPurchase(self, request, context):
        recorded = self._run(cmd.RejectPurchase(request.request_id, request.purchase_id, request.reason), context)
        return pb.RejectPurchaseResponse(result=result_of(recorded))

    # --- transfers ------------------------------------------------------------------------------------

    def ProposeTransfer(self, request, context):
        recorded = self._run(cmd.ProposeTransfer(
            request_id=request.request_id, debit_account_id=request.debit_account_id,
            credit_account_id=request.credit_account_id, amount_sats=request.amount_sats, memo=request.memo,
            expire_time_us=expire_time_us_of(request),
            corrects_position=request.corrects_position if request.HasField("corrects_position") else -1), context)
        return pb.ProposeTransferResponse(result=result_of(recorded), transfer_id=recorded.data["transfer_id"])

    def ApproveTransfer(self, request, context):
        recorded = self._run(cmd.ApproveTransfer(request.request_id, request.transfer_id), context)
        return pb.ApproveTransferResponse(result=result_of(recorded))

    def RejectTransfer(self, request, context):
        recorded = self._run(cmd.RejectTransfer(request.request_id, request.transfer_id, request.reason), context)
        return pb.RejectTransferResponse(result=result_of(recorded))

    def ExpireTransfer(self, request, context):
        recorded = self._run(cmd.ExpireTransfer(request.request_id, request.transfer_id), context)
        return pb.ExpireTransferResponse(result=result_of(recorded))

    # --- custody changes ------------------------------------------------------------------------------

    def ProposeCustodyChange(self, request, context):
        recorded = self._run(cmd.ProposeCustodyChange(
            request_id=request.request_id, from_account_id=request.from_account_id,
            to_account_id=request.to_account_id, amount_sats=request.amount_sats, reason=request.reason,
            key_ceremony_reference=request.key_ceremony_reference,
            new_quorum_required=request.new_quorum.required, new_quorum_total=request.new_quorum.total,
            txid=request.txid, network_fee_sats=request.network_fee_sats,
            expire_time_us=expire_time_us_of(request)), context)
        return pb.ProposeCustodyChangeResponse(result=result_of(recorded),
                                               custody_change_id=recorded.data["custody_change_id"])

    def ApproveCustodyChange(self, request, context):
        recorded = self._run(cmd.ApproveCustodyChange(request.request_id, request.custody_change_id), context)
        return pb.ApproveCustodyChangeResponse(result=result_of(recorded))

    def RejectCustodyChange(self, request, context):
        recorded = self._run(cmd.RejectCustodyChange(request.request_id, request.custody_change_id,
                                                     request.reason), context)
        return pb.RejectCustodyChangeResponse(result=result_of(recorded))

    # --- queries --------------------------------------------------------------------------------------

    def _state_at(self, as_of: pb.AsOf):
        """A context manager over the state the query reads (the live one, uncopied, when `as_of` is unset)."""
        which = as_of.WhichOneof("point")
        if which == "position":
            if as_of.position < 0:
                raise errors.RequestInvalid([errors.Violation("as_of.position", "POSITION_INVALID",
                                                              "as_of.position must not be negative")])
            return self._ledger.querying(as_of.position)
        if which == "time":
            position = self._ledger.position_at_time(time_us_of(as_of.time, "as_of.time"))
            if position < 0:
                from ledger.state import ReserveState
                return contextlib.nullcontext(ReserveState())
            return self._ledger.querying(position)
        return self._ledger.querying(None)

    def ListAccounts(self, request, context):
        size = page_size_of(request.page_size)
        offset = offset_of(request.page_token, "accounts")
        with self._ledger.reading() as state:
            accounts = sorted(state.accounts.values(), key=lambda a: a.account_id)
            page = within_bytes([account_to_proto(a) for a in accounts[offset:offset + size]])
            more = offset + len(page) < len(accounts)
        return pb.ListAccountsResponse(accounts=page,
                                       next_page_token=token_of("accounts", offset + len(page)) if more else "")

    def GetBalances(self, request, context):
        with self._state_at(request.as_of) as state:
            position, rows = state.position, views.balances(state)
        return pb.GetBalancesResponse(position=position, balances=[
            pb.Balance(**{**row, "kind": KIND_TO_PROTO[row["kind"]]}) for row in rows])

    def GetHoldings(self, request, context):
        with self._state_at(request.as_of) as state:
            position, view = state.position, views.holdings(state)
        return pb.GetHoldingsResponse(position=position, total_sats=view["total_sats"],
                                      custodians=[pb.CustodianHolding(**row) for row in view["custodians"]])

    def GetCostBasis(self, request, context):
        """A page of the open lots at one position (a page token carries the position and the next lot's
        number), with the totals over all of them."""
        size = page_size_of(request.page_size)
        if request.page_token:
            position, number = offsets_of(request.page_token, "cost_basis", 2)
            snapshot, totals = self._cost_snapshots.at(position)
            if not snapshot.lots.head_number <= number < snapshot.lots.created:
                raise token_invalid()
        else:
            with self._state_at(request.as_of) as state:
                snapshot = state.copy()   # cheap (lot chunks are shared, immutable): the view is built outside the lock
            totals, number = self._cost_snapshots.totals(snapshot), snapshot.lots.head_number
        page = within_bytes([pb.Lot(**lot) for lot in views.open_lots_page(snapshot, number, size)])
        more = number + len(page) < snapshot.lots.created
        return pb.GetCostBasisResponse(
            position=snapshot.position, lots=page, currencies=[pb.CurrencyCost(**c) for c in totals["currencies"]],
            lots_total=totals["lots_total"],
            next_page_token=token_of("cost_basis", snapshot.position, number + len(page)) if more else "")

    def ListPending(self, request, context):
        with self._ledger.reading() as state:
            rows = sorted(state.pending.values(), key=lambda p: p.position)
            position = state.position
        return pb.ListPendingResponse(position=position, pending=[pending_to_proto(p) for p in rows])

    def _events(self, start: int, limit: int) -> list[pb.Event]:
        return [event_to_proto(event, data, self._leaf_of(data)) for event, data in
                self._ledger.read_events(start, limit)]

    def ListEvents(self, request, context):
        size = page_size_of(request.page_size)
        if request.start_position < 0:
            raise errors.RequestInvalid([errors.Violation("start_position", "POSITION_INVALID",
                                                          "start_position must not be negative")])
        start = offset_of(request.page_token, "events") if request.page_token else request.start_position
        events = self._events(start, size + 1)
        page = within_bytes(events[:size])
        more = len(events) > len(page)
        return pb.ListEventsResponse(events=page,
                                     next_page_token=token_of("events", start + len(page)) if more else "")

    async def StreamEvents(self, request, context):
        """A follow stream (an async generator: services/api/calls.py): each read runs in the executor; while
        the log holds nothing new it awaits the tail, holding no thread, and sends a heartbeat now and then."""
        size = page_size_of(request.batch_size, "batch_size") if request.batch_size else limits.STREAM_BATCH_DEFAULT
        if request.start_position < 0:
            raise errors.RequestInvalid([errors.Violation("start_position", "POSITION_INVALID",
                                                          "start_position must not be negative")])
        batch_size = min(size, limits.STREAM_BATCH_MAX)
        async for events, position in self._tail.follow(request.start_position,
                                                         lambda start: self._event_batch(start, batch_size),
                                                         STREAM_HEARTBEAT_S, STREAM_RETRY_S):
            yield pb.StreamEventsResponse(events=events, next_position=position)

    def _event_batch(self, start: int, limit: int) -> tuple[list, int]:
        """StreamEvents' read: the next events from `start` within the byte budget, and the position after them."""
        events = within_bytes(self._events(start, limit))
        return events, events[-1].position + 1 if events else start
