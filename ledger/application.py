"""The ledger application: decides commands in batches, appends their events, serves projections.

Write path (one writer per process; several processes may share one PostgreSQL database, where they
take turns through an advisory lock so that no process starves; correctness does not depend on it):
  catch the decision state up with the log -> decide each command of the batch in order, folding each
  new event into the decision state -> append all events in ONE transaction (group commit) -> answer.
  A conflicting append by another process (same log position) raises AppendConflict: the decision
  state is discarded, caught up and the batch decided again, at most COMMAND_ATTEMPTS_MAX times.
Each event's canonical bytes are computed once, from the decided event, and stored as they are (the
store's mapper writes them as the row's state); reading the log parses them.
Read path: a separate projection state, folded only from committed events, caught up before every
query (read-your-writes) and saved with its position in one row (atomic) every PROJECTION_SAVE_EVERY.
"""

import contextlib
import dataclasses
import hashlib
import json
import threading
from typing import Callable, Iterator, Protocol, Sequence

from eventsourcing.application import Application
from eventsourcing.utils import Environment

from ledger import commands as cmd
from ledger import errors, limits, rules
from ledger import pending as kinds
from ledger.events import BOOK_ID, CanonicalEvent, LoggedEvent, logged_event, read_canonical_bytes
from ledger.state import InvariantBroken, ReserveState

PROJECTION_NAME = "reserve_state"
PROJECTION_SAVE_EVERY = 1000
CHECKPOINT_EVERY = 10_000
# Which events a command may have produced (for idempotent replays).
COMMAND_EVENTS = {
    cmd.OpenAccount: {"AccountOpened"}, cmd.FreezeAccount: {"AccountFrozen"},
    cmd.UnfreezeAccount: {"AccountUnfrozen"}, cmd.CloseAccount: {"AccountClosed"},
    cmd.RecordPurchase: {"ReservePurchased", "PurchaseProposed"}, cmd.ApprovePurchase: {"PurchaseApproved"},
    cmd.RejectPurchase: {"PurchaseRejected"}, cmd.ProposeTransfer: {"TransferProposed"},
    cmd.ApproveTransfer: {"TransferApproved"}, cmd.RejectTransfer: {"TransferRejected"},
    cmd.ExpirePending: kinds.EXPIRED_EVENTS, cmd.ExpireTransfer: {kinds.TRANSFER.expired},
    cmd.ProposeCustodyChange: {"CustodyChangeProposed"}, cmd.ApproveCustodyChange: {"CustodyChangeApproved"},
    cmd.RejectCustodyChange: {"CustodyChangeRejected"},
}


@dataclasses.dataclass(frozen=True)
class LogRow:
    """One stored event as the log store returns it: its position and its canonical bytes."""

    position: int
    canonical_bytes: bytes


class AppendConflict(Exception):
    """The store refused an append because another writer appended at those positions first."""


class LogStore(Protocol):
    """What the ledger needs from storage beyond eventsourcing's recorder (services/store/recorders.py).

    The recorder's insert_events raises AppendConflict, never a storage error, when it loses an append race.
    """

    def log_size(self) -> int: ...
    def read_log(self, start_position: int, limit: int) -> Sequence[LogRow]: ...
    def find_requests(self, request_ids: Sequence[str]) -> dict[str, int]: ...
    def position_at_time(self, time_us: int) -> int: ...
    def load_projection(self, name: str) -> tuple[int, bytes] | None: ...
    def save_projection(self, name: str, position: int, state: bytes) -> None: ...
    def load_checkpoint(self, position_max: int) -> tuple[int, bytes] | None: ...
    def save_checkpoint(self, position: int, state: bytes) -> None: ...
    def writer_turn(self) -> contextlib.AbstractContextManager: ...


@dataclasses.dataclass(frozen=True)
class Recorded:
    """A command's result: the event it recorded (or recorded earlier, when replayed)."""

    position: int
    event_type: str
    data: dict
    replayed: bool = False


Outcome = Recorded | errors.LedgerError


def request_digest(command: cmd.Command, caller: cmd.Caller) -> str:
    """SHA-256 of the command's name, caller and payload. An unset expiry hashes as 0, its encoding before
    expire_time_us became optional, so that digests recorded then still match their retries."""
    payload = {k: 0 if v is None else v for k, v in command.payload().items()}
    body = {"command": type(command).__name__, "caller": caller.identity, **payload}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ReserveLedger(Application):
    """eventsourcing Application whose recorder also implements LogStore (see services/store/recorders.py)."""

    name = "ReserveLedger"

    def construct_env(self, name: str, env: dict | None = None) -> Environment:
        """Only the given configuration: never os.environ (ledger/ reads no environment)."""
        return Environment(name, dict(env or {}))

    def __init__(self, env: dict, policy: rules.Policy = rules.Policy(),
                 backoff: Callable[[int], None] = lambda attempt: None):
        """`backoff(attempt)` is called after a lost append race (the service sleeps with jitter)."""
        super().__init__(env)
        self.policy = policy
        self._backoff = backoff
        self.store: LogStore = self.recorder  # type: ignore[assignment]
        self._require_canonical_mapper()
        self._write_lock = threading.Lock()
        self._read_lock = threading.RLock()
        self._decisions: ReserveState | None = None
        self._projection = self._load_projection()
        self._saved_position = self._projection.position

    # --- commands ---------------------------------------------------------------------------------

    def execute(self, requests: Sequence[tuple[cmd.Command, cmd.Caller]], time_us: int) -> list[Outcome]:
        """Decide and durably record a batch of validated commands; one outcome per command, in order."""
        with self._write_lock, self.store.writer_turn():
            for attempt in range(limits.COMMAND_ATTEMPTS_MAX):
                if self._decisions is None:
                    self._decisions = self._caught_up_copy()
                self._catch_up(self._decisions)
                try:
                    outcomes, events = self._decide_batch(requests, time_us)
                    if events:
                        self.save(*events)
                    return outcomes
                except AppendConflict:
                    self._decisions = None  # another writer appended first: decide again on fresh state
                    self._backoff(attempt)
                except BaseException:
                    self._decisions = None  # unknown whether the append happened: re-read before deciding
                    raise
        conflict = errors.ConcurrencyRetriesExhausted(
            f"other writers kept appending first; gave up after {limits.COMMAND_ATTEMPTS_MAX} attempts")
        return [conflict for _ in requests]

    def _require_canonical_mapper(self) -> None:
        """The event store must write each event's canonical bytes unchanged (MAPPER_TOPIC in the env)."""
        probe = LoggedEvent(BOOK_ID, 1, b'{"probe":1}')
        try:
            state = self.mapper.to_stored_event(probe).state
        except Exception as error:  # noqa: BLE001 - any failure means the wrong mapper
            state = error
        if state != probe.canonical_bytes:
            raise ValueError("the event store does not store canonical bytes as they are: set MAPPER_TOPIC to "
                             "services.store.mapper:CanonicalBytesMapper (services.store.config does)")

    def _decide_batch(self, requests, time_us: int):
        state = self._decisions
        time_us = max(time_us, state.time_us)
        earlier = self.store.find_requests(sorted({c.request_id for c, _ in requests}))
        in_batch: dict[str, dict] = {}
        outcomes: list[Outcome] = []
        events = []
        for command, caller in requests:
            digest = request_digest(command, caller)
            try:
                command.validate()  # the domain's own entry check, whoever calls (the servicer checks early too)
                prior = in_batch.get(command.request_id)
                if prior is None and command.request_id in earlier:
                    prior = self.read_events(earlier[command.request_id], 1)[0][0]
                if prior is not None:
                    outcomes.append(self._replay(command, caller, digest, prior))
                    continue
                event_type, data = self._decide(state, command, caller, time_us)
            except errors.LedgerError as error:
                outcomes.append(error)
                continue
            metadata = {"request_id": command.request_id, "request_digest": digest,
                        "actor": caller.identity, "actor_role": caller.role}
            event: CanonicalEvent = {"format_version": 1, "position": state.position + 1, "type": event_type,
                                     "time_us": time_us, **metadata, "data": data}
            events.append(logged_event(event))  # the bytes, before the fold could touch the event
            state.apply(event)
            in_batch[command.request_id] = event
            outcomes.append(Recorded(event["position"], event_type, data))
        return outcomes, events

    def _decide(self, state: ReserveState, command: cmd.Command, caller: cmd.Caller, time_us: int):
        try:
            return rules.decide(state, command, caller, time_us, self.policy)
        except errors.PendingNotFound as error:
            raise self._resolved_or_unknown(error, state) from None

    def _resolved_or_unknown(self, error: errors.PendingNotFound, state: ReserveState) -> errors.LedgerError:
        """Pending ids are <kind>-<position of the proposal>: tell 'already resolved' from 'unknown'."""
        if error.pending_id is None:
            return error
        kind, position = kinds.kind_of_id(error.pending_id), int(error.pending_id.partition("-")[2])
        if position <= state.position and position < self.store.log_size():
            proposal = self.read_events(position, 1)[0][0]
            if proposal["type"] == kind.proposed:
                return errors.PendingAlreadyResolved(f"{error.pending_id} was already resolved", field=error.field)
        return error

    @staticmethod
    def _replay(command: cmd.Command, caller: cmd.Caller, digest: str, prior: dict) -> Outcome:
        if prior["request_digest"] == digest and prior["type"] in COMMAND_EVENTS[type(command)]:
            return Recorded(prior["position"], prior["type"], prior["data"], replayed=True)
        differences = [] if prior["type"] in COMMAND_EVENTS[type(command)] else ["command"]
        if prior["actor"] != caller.identity:
            differences.append("caller")
        for field, value in command.payload().items():
            if field in prior["data"] and prior["data"][field] != value and not (field.startswith("expire") and not value):
                differences.append(field)
        return errors.RequestIdReusedWithDifferentPayload(command.request_id, differences or ["payload"])

    # --- reading the log ------------------------------------------------------------------------------

    def read_events(self, start_position: int, limit: int) -> list[tuple[dict, bytes]]:
        """Canonical events and their canonical bytes, in log order."""
        return [(self._parsed(row), row.canonical_bytes) for row in self.store.read_log(start_position, limit)]

    @staticmethod
    def _parsed(row: LogRow) -> CanonicalEvent:
        try:
            return read_canonical_bytes(row.canonical_bytes, row.position)
        except ValueError as error:
            raise InvariantBroken(row.position, "EVENT_MALFORMED", str(error)) from None

    def iter_events(self, start_position: int = 0, stop_position: int | None = None) -> Iterator[dict]:
        position = start_position
        while stop_position is None or position <= stop_position:
            limit = limits.REPLAY_PAGE_SIZE if stop_position is None else min(
                limits.REPLAY_PAGE_SIZE, stop_position - position + 1)
            rows = self.store.read_log(position, limit)
            if not rows:
                return
            for row in rows:
                yield self._parsed(row)
            position = rows[-1].position + 1

    def _catch_up(self, state: ReserveState, stop_position: int | None = None) -> ReserveState:
        for event in self.iter_events(state.position + 1, stop_position):
            state.apply(event)
        return state

    # --- projections ------------------------------------------------------------------------------

    def _load_projection(self) -> ReserveState:
        stored = self.store.load_projection(PROJECTION_NAME)
        return ReserveState() if stored is None else ReserveState.from_bytes(stored[1])

    def _caught_up_copy(self) -> ReserveState:
        with self.reading() as state:
            return state.copy()

    @contextlib.contextmanager
    def reading(self) -> Iterator[ReserveState]:
        """The projection, caught up with every committed event (read-your-writes), under a lock."""
        with self._read_lock:
            self._catch_up(self._projection)
            self._persist_projection_if_due()
            yield self._projection

    def _persist_projection_if_due(self, force: bool = False) -> None:
        state = self._projection
        if state.position >= 0 and (force or state.position - self._saved_position >= PROJECTION_SAVE_EVERY):
            self.store.save_projection(PROJECTION_NAME, state.position, state.to_bytes())
            if state.position // CHECKPOINT_EVERY > self._saved_position // CHECKPOINT_EVERY:
                self.store.save_checkpoint(state.position, state.to_bytes())
            self._saved_position = state.position

    def persist_projection(self) -> None:
        with self._read_lock:
            self._catch_up(self._projection)
            self._persist_projection_if_due(force=True)

    def state_as_of(self, position: int) -> ReserveState:
        """A fresh fold of the log up to and including `position` (from the nearest checkpoint)."""
        with self.reading() as live:
            if position > live.position:
                raise errors.PositionBeyondLog(
                    f"position {position} is beyond the last event ({live.position})", field="as_of.position")
            if position == live.position:
                return live.copy()
        checkpoint = self.store.load_checkpoint(position)
        state = ReserveState() if checkpoint is None else ReserveState.from_bytes(checkpoint[1])
        return self._catch_up(state, stop_position=position)

    def position_at_time(self, time_us: int) -> int:
        return self.store.position_at_time(time_us)

    def rebuild(self, progress: Callable[[int], None] = lambda n: None) -> ReserveState:
        """Replay every event from zero into a fresh state (what `reserve-ledger rebuild` compares)."""
        state = ReserveState()
        for event in self.iter_events(0):
            state.apply(event)
            if event["position"] % limits.REPLAY_PAGE_SIZE == 0:
                progress(event["position"])
        return state

    def replace_projection(self, state: ReserveState) -> None:
        with self._read_lock:
            self._projection = state
            self._persist_projection_if_due(force=True)

    def live_state_bytes(self) -> bytes:
        with self.reading() as state:
            return state.to_bytes()

    def due_for_expiry(self, time_us: int) -> list[str]:
        with self.reading() as state:
            return rules.due_for_expiry(state, time_us)
