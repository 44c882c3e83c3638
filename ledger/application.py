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
Saved states (the projection row, checkpoints) are evidence, never authority: one is used only once
`SavedStateProofs` proves it equals the log it claims to summarise (ledger/saved_states.py); a row that
fails is reported, set aside for inspection and replaced by a replay from the log.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
from typing import Callable, Iterator, Protocol, Sequence

from eventsourcing.application import Application
from eventsourcing.utils import Environment

from ledger import commands as cmd
from ledger import errors, limits, monitor, rules
from ledger import pending as kinds
from ledger.events import BOOK_ID, CanonicalEvent, LoggedEvent, logged_event, read_canonical_bytes
from ledger.saved_states import StateSeal
from ledger.state import InvariantBroken, ReserveState, StateFormatUnknown

log = logging.getLogger("reserve_ledger.projections")

PROJECTION_NAME = "reserve_state"
SET_ASIDE_PREFIX = "set-aside:"   # projections rows kept for inspection after failing their proof
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
    cmd.ObserveReserveDiscrepancy: {"ReserveDiscrepancyObserved"},
    cmd.RecordDiscrepancyReorgedOut: {"ReserveDiscrepancyReorgedOut"},
    cmd.RotateSigningKey: {"SigningKeyRotated"},
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
    def save_projection(self, name: str, position: int, state: bytes, seal: StateSeal,
                        replace: bool = False) -> None: ...
    def load_checkpoint(self, position_max: int) -> tuple[int, bytes] | None: ...
    def save_checkpoint(self, position: int, state: bytes, seal: StateSeal, replace: bool = False) -> None: ...
    def checkpoint_positions(self) -> list[int]: ...
    def save_lot_chunks(self, chunks: Sequence[tuple[str, bytes]]) -> None: ...
    def load_lot_chunk(self, digest: str) -> bytes | None: ...
    def set_aside(self, name: str, position: int, state: bytes) -> None: ...
    def writer_turn(self) -> contextlib.AbstractContextManager: ...


class SavedStateProofs(Protocol):
    """Proves saved states and seals new ones (services/store/seals.py; the keys stay in services/)."""

    can_seal: bool

    def unproven_reason(self, position: int, state_bytes: bytes) -> str | None: ...
    def seal(self, position: int, state_bytes: bytes) -> StateSeal | None: ...


@dataclasses.dataclass(frozen=True)
class UnprovenRow:
    """A saved state that failed its proof: which row, at which position, and why."""

    row: str            # "projection reserve_state" or "checkpoint"
    position: int
    reason: str


@dataclasses.dataclass(frozen=True)
class SavedComparison:
    """A replay from zero against every saved state it passed (what `reserve-ledger rebuild` reports)."""

    state: ReserveState
    differing: tuple[tuple[str, int, bytes], ...]   # (row, position, replay's bytes there) per differing row
    lot_chunks: dict[int, list[tuple[str, bytes]]] = dataclasses.field(default_factory=dict)  # what those bytes name


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
                 backoff: Callable[[int], None] = lambda attempt: None,
                 proofs: Callable[[LogStore], SavedStateProofs] | None = None, repair: bool = False):
        """`backoff(attempt)` is called after a lost append race (the service sleeps with jitter).
        `proofs(store)` proves saved states; without it none is used and none saved. `repair`: replace an
        unproven row at once (set aside, then a sealed replay); read-only commands leave rows as they are."""
        super().__init__(env)
        self.policy = policy
        self._backoff = backoff
        self.store: LogStore = self.recorder  # type: ignore[assignment]
        self._require_canonical_mapper()
        self._write_lock = threading.Lock()
        self._read_lock = threading.RLock()
        self._decisions: ReserveState | None = None
        self._proofs = None if proofs is None else proofs(self.store)
        self._repair = repair
        self.unproven_rows: list[UnprovenRow] = []   # every saved row that failed its proof since start
        self.on_unproven: Callable[[UnprovenRow], None] = lambda row: None
        self._projection_state: ReserveState | None = None   # loaded on first use: opening never folds the log
        # The last position reads may fold (None: all). Set by the service under an integrity alarm, so that
        # reads are served from the trusted prefix, never from rows no signed tree head covers.
        self.fold_limit: int | None = None
        self._saved_position = -1
        self._lot_chunks_saved_until = 0   # the projection's full lot chunks before this lot number are stored
        # Canonical bytes of the events this process decided and committed, by position, until the projection
        # folds them: the projection skips deciding again only an event whose stored bytes are exactly these.
        self._own_events: dict[int, bytes] = {}

    @property
    def _projection(self) -> ReserveState:
        """The read projection, loaded (proven or replayed) on first use, so that a log the replay refuses can
        still be opened by `verify` and `export`; InvariantBroken surfaces to whoever reads it."""
        if self._projection_state is None:
            with self._read_lock:
                if self._projection_state is None:
                    state = self._load_projection()
                    self._saved_position = state.position
                    self._projection_state = state
        return self._projection_state

    @_projection.setter
    def _projection(self, state: ReserveState) -> None:
        self._projection_state = state

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
                        self._remember_own(events)
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

    def _remember_own(self, events: Sequence[LoggedEvent]) -> None:
        if len(self._own_events) + len(events) > limits.OWN_EVENTS_MAX:
            self._own_events.clear()   # forgotten events are decided again by the projection: only slower
        for event in events:
            self._own_events[event.originator_version - 1] = event.canonical_bytes

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
            state.apply(event)   # decided again before it is saved: every committed event is one the replay accepts
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
        for row in self._iter_rows(start_position, stop_position):
            yield self._parsed(row)

    def _iter_rows(self, start_position: int, stop_position: int | None) -> Iterator[LogRow]:
        position = start_position
        while stop_position is None or position <= stop_position:
            limit = limits.REPLAY_PAGE_SIZE if stop_position is None else min(
                limits.REPLAY_PAGE_SIZE, stop_position - position + 1)
            rows = self.store.read_log(position, limit)
            if not rows:
                return
            yield from rows
            position = rows[-1].position + 1

    def _catch_up(self, state: ReserveState, stop_position: int | None = None) -> ReserveState:
        for event in self.iter_events(state.position + 1, stop_position):
            state.apply(event)
        return state

    def _catch_up_projection(self, stop_position: int | None) -> ReserveState:
        """Fold committed events into the projection; an event this process decided and committed, found in the
        log byte for byte as decided, is not decided a third time (the writer decided it, then decided it
        again while folding it into its decision state, an equal fold of the same log)."""
        state, own = self._projection, self._own_events
        for row in self._iter_rows(state.position + 1, stop_position):
            state.apply(self._parsed(row), decided_here=own.pop(row.position, None) == row.canonical_bytes)
        return state

    # --- projections ------------------------------------------------------------------------------

    def _load_projection(self) -> ReserveState:
        """The saved projection if it is proven, else a replay (from the newest proven checkpoint)."""
        stored = self.store.load_projection(PROJECTION_NAME)
        if stored is not None:
            proven = self._proven(f"projection {PROJECTION_NAME}", *stored)
            if proven is not None:
                self._lot_chunks_saved_until = proven.lots.created - len(proven.lots.tail)
                return proven
        state = self._catch_up(self._proven_checkpoint(self.store.log_size() - 1) or ReserveState(), self.fold_limit)
        if stored is not None and self._repair and self._can_seal:
            self._replace_saved(PROJECTION_NAME, stored, state.position, state.to_bytes(), state.lots.full_chunks())
        return state

    @property
    def _can_seal(self) -> bool:
        return self._proofs is not None and self._proofs.can_seal

    def _proven(self, row: str, position: int, state_bytes: bytes) -> ReserveState | None:
        """The saved state if proven; otherwise None, after a WARNING naming the row (and a health report)."""
        reason = "no key to prove it with" if self._proofs is None else self._proofs.unproven_reason(
            position, state_bytes)
        if reason is None:
            try:
                return ReserveState.from_bytes(state_bytes, self.store.load_lot_chunk)
            except (StateFormatUnknown, ValueError) as error:
                reason = f"sealed but unreadable ({error})"
        if self._proofs is not None:  # a ledger without keys proves nothing: not a finding
            self._report(UnprovenRow(row, position, reason))
        return None

    def _report(self, unproven: UnprovenRow) -> None:
        log.warning("saved %s at position %d is unproven: %s; not used, replaced by a replay from the log",
                    unproven.row, unproven.position, unproven.reason)
        self.unproven_rows.append(unproven)
        self.on_unproven(unproven)

    def _proven_checkpoint(self, position_max: int) -> ReserveState | None:
        """The newest proven checkpoint at or before `position_max`; unproven ones on the way are reported
        and, when repairing, replaced by the replay."""
        if self._proofs is None:
            return None
        failed = []
        while position_max >= 0 and (stored := self.store.load_checkpoint(position_max)) is not None:
            proven = self._proven("checkpoint", *stored)
            if proven is not None:
                break
            failed.append(stored)
            position_max = stored[0] - 1
        else:
            proven = None
        if failed and self._repair and self._can_seal:
            state = proven.copy() if proven is not None else ReserveState()
            for stored in reversed(failed):
                replayed = self._catch_up(state, stop_position=stored[0])
                self._replace_saved(None, stored, stored[0], replayed.to_bytes(), replayed.lots.full_chunks())
        return proven

    def _replace_saved(self, name: str | None, stored: tuple[int, bytes], position: int, state_bytes: bytes,
                       lot_chunks: list[tuple[str, bytes]]) -> str:
        """Keep the old row for inspection (a projections row named set-aside:...), then save the replay's
        `state_bytes` at `position` sealed in its place (`name` None: a checkpoint), with the lot chunks its
        bytes name. Returns the kept name."""
        old_position, old_bytes = stored
        kept = f"{SET_ASIDE_PREFIX}{name or 'checkpoint'}@{old_position}:{hashlib.sha256(old_bytes).hexdigest()[:16]}"
        self.store.set_aside(kept, old_position, old_bytes)
        seal = self._proofs.seal(position, state_bytes)
        if seal is not None:
            self.store.save_lot_chunks(lot_chunks)
            if name is None:
                self.store.save_checkpoint(position, state_bytes, seal, replace=True)
            else:
                self.store.save_projection(name, position, state_bytes, seal, replace=True)
        log.warning("the saved %s at position %d was kept for inspection as projections row %r and replaced "
                    "by a replay at position %d", name or "checkpoint", old_position, kept, position)
        return kept

    def _caught_up_copy(self) -> ReserveState:
        """The writer's decision state: the projection's records without its lots (no rule reads them)."""
        with self.reading() as state:
            return state.copy(keep_lots=False)

    @contextlib.contextmanager
    def reading(self) -> Iterator[ReserveState]:
        """The projection, caught up with every committed event (read-your-writes), under a lock. Read it
        inside the block; it is the live state, not a copy."""
        with self._read_lock:
            self._catch_up_projection(self.fold_limit)
            self._persist_projection_if_due()
            yield self._projection

    @contextlib.contextmanager
    def querying(self, position: int | None) -> Iterator[ReserveState]:
        """The state a query reads: the live projection under the read lock (`position` None: no copy, so a
        query costs what its view costs, whatever the history's length), or a fold up to `position`."""
        if position is None:
            with self.reading() as state:
                yield state
        else:
            yield self.state_as_of(position)

    def _persist_projection_if_due(self, force: bool = False) -> None:
        """Save the projection (and a checkpoint when one is due), sealed; unsealed states are never saved."""
        state = self._projection
        if state.position >= 0 and (force or state.position - self._saved_position >= PROJECTION_SAVE_EVERY):
            state_bytes = state.to_bytes()
            seal = self._proofs.seal(state.position, state_bytes) if self._can_seal else None
            if seal is None:
                return
            self._save_new_lot_chunks(state)
            self.store.save_projection(PROJECTION_NAME, state.position, state_bytes, seal)
            if state.position // CHECKPOINT_EVERY > self._saved_position // CHECKPOINT_EVERY:
                self.store.save_checkpoint(state.position, state_bytes, seal)
            self._saved_position = state.position

    def _save_new_lot_chunks(self, state: ReserveState) -> None:
        """Store the projection's full lot chunks not stored yet (each once; the saved bytes name them)."""
        chunks = state.lots.full_chunks(self._lot_chunks_saved_until)
        if chunks:
            self.store.save_lot_chunks(chunks)
        self._lot_chunks_saved_until = state.lots.created - len(state.lots.tail)

    def projection_position(self) -> int:
        """The last position folded into the read projection (a lag gauge; no catching up)."""
        return self._projection.position

    def persist_projection(self) -> None:
        with self._read_lock:
            self._catch_up_projection(None)
            self._persist_projection_if_due(force=True)

    def state_as_of(self, position: int) -> ReserveState:
        """A fresh fold of the log up to and including `position` (from the nearest proven checkpoint)."""
        with self.reading() as live:
            if position > live.position:
                raise errors.PositionBeyondLog(
                    f"position {position} is beyond the last event ({live.position})", field="as_of.position")
            if position == live.position:
                return live.copy()
        return self._catch_up(self._proven_checkpoint(position) or ReserveState(), stop_position=position)

    def position_at_time(self, time_us: int) -> int:
        return self.store.position_at_time(time_us)

    def rebuild(self, progress: Callable[[int], None] = lambda n: None,
                saved: dict[int, list] | None = None) -> ReserveState:
        """Replay every event from zero into a fresh state (what `reserve-ledger rebuild` compares).
        `saved` maps positions to [row, saved bytes]; the replay's bytes are appended where they differ."""
        state, saved = ReserveState(), saved or {}
        for event in self.iter_events(0):
            state.apply(event)
            for entry in saved.get(event["position"], ()):
                if entry[1] != (state_bytes := state.to_bytes()):
                    entry += [state_bytes, state.lots.full_chunks()]
            if event["position"] % limits.REPLAY_PAGE_SIZE == 0:
                progress(event["position"])
        return state

    def compare_saved(self, progress: Callable[[int], None] = lambda n: None) -> SavedComparison:
        """Replay from zero and compare the saved projection and every checkpoint within the log with it
        (a checkpoint beyond the log is never read before the log reaches it, and then proven first)."""
        saved: dict[int, list] = {}
        for position in self.store.checkpoint_positions():
            saved.setdefault(position, []).append(["checkpoint", self.store.load_checkpoint(position)[1]])
        stored = self.store.load_projection(PROJECTION_NAME)
        if stored is not None:
            saved.setdefault(stored[0], []).append([PROJECTION_NAME, stored[1]])
        state = self.rebuild(progress, saved)
        differing = [(entry[0], position, entry[2]) for position, entries in saved.items() for entry in entries
                     if len(entry) > 2]
        chunks = {position: entry[3] for position, entries in saved.items() for entry in entries if len(entry) > 2}
        if stored is not None and stored[0] > state.position:
            differing.append((PROJECTION_NAME, stored[0], state.to_bytes()))
        return SavedComparison(state, tuple(sorted(differing, key=lambda item: item[1])), chunks)

    def replace_saved(self, comparison: SavedComparison) -> list[str]:
        """Set aside every differing saved state and save the replay in its place, sealed (needs the signing
        key); returns the names the old rows were kept under."""
        if not self._can_seal:
            raise ValueError("replacing saved states needs the tree-head signing key to seal the replay")
        kept = []
        with self._read_lock:
            for row, position, replay_bytes in comparison.differing:
                if row == "checkpoint":
                    kept.append(self._replace_saved(None, self.store.load_checkpoint(position), position, replay_bytes,
                                                    comparison.lot_chunks[position]))
                else:
                    kept.append(self._replace_saved(row, self.store.load_projection(row), comparison.state.position,
                                                    comparison.state.to_bytes(), comparison.state.lots.full_chunks()))
            self._projection = comparison.state.copy()
            self._saved_position = self._projection.position
            self._lot_chunks_saved_until = 0
        return kept

    def live_state_bytes(self) -> bytes:
        with self.reading() as state:
            return state.to_bytes()

    def open_alerts_total(self) -> int:
        """Discrepancies the reserves monitor recorded that are neither closed nor reorged out."""
        with self.reading() as state:
            return len(monitor.open_discrepancies(state))

    def due_for_expiry(self, time_us: int) -> list[str]:
        with self.reading() as state:
            return rules.due_for_expiry(state, time_us)
