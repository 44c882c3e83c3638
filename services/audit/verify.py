"""`reserve-ledger verify`: re-check everything stored, trusting no derived table.

From the raw rows it recomputes every event's canonical bytes and leaf, the roots at every signed tree
head and at the current size, and a replay of the projections; it reports every disagreement with the
log position it concerns. What it catches, and how:
  edited / copied-over event row  -> its bytes no longer hash to the stored leaf
  deleted event row               -> the log position's event row is missing
  deleted log row                 -> a gap in the positions
  reordered rows                  -> a row holds another version, or its bytes miss the stored leaf
  inserted event row              -> an event row no log position refers to
  events appended behind the back -> they lie beyond the latest signed tree head (each commit signs its own)
  edited leaves and subtrees too  -> a signed tree head's root no longer matches (its signature does)
  deleted / altered lot chunk     -> a saved state names a lot chunk that is missing, no longer matches its digest
                                     or is not the chunk of lots it should be (loading it would fail)
  deleted / edited anchor rows    -> a gap in anchor_ids, a chain of anchors that starts elsewhere than the
                                     recorded genesis, a payload root that is not the recomputed root at its size,
                                     an anchor beyond the log's size (the log was truncated)
Anchor rows deleted from the end leave a consistent prefix: only the chain shows them (`audit --chain`).
"""

import dataclasses
from typing import Callable

from ledger import audit, merkle
from ledger.anchoring import AnchoringError, Outpoint, parse_transaction, spent_outpoints
from ledger.anchors import Anchor
from ledger.application import PROJECTION_NAME, SET_ASIDE_PREFIX, ReserveLedger
from ledger.events import CanonicalEvent, parse_canonical_bytes
from ledger.log_rebuild import LogRebuild
from ledger.lots import LotChunkUnusable, check_saved_chunks
from ledger.state import ReserveState, StateFormatUnknown, saved_lot_fields
from services.store.seals import StateProofs

SCAN_PAGE_SIZE = 5000
STRAY_ROWS_REPORTED_MAX = 20


@dataclasses.dataclass(frozen=True)
class Problem:
    position: int | None   # the first log position concerned, when one can be named
    description: str
    exact: bool = True     # False: the change lies somewhere from `position` on (a tree head's span)


@dataclasses.dataclass
class VerifyReport:
    events: int = 0
    tree_heads: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def first_bad_position(self) -> int | None:
        """The smallest position named exactly; failing that, the start of the first span in doubt."""
        for exact in (True, False):
            positions = [p.position for p in self.problems if p.position is not None and p.exact == exact]
            if positions:
                return min(positions)
        return None

    def add(self, position: int | None, description: str, exact: bool = True) -> None:
        self.problems.append(Problem(position, description, exact))


class _Scan:
    """State carried along one pass over the log."""

    def __init__(self, ledger: ReserveLedger, public_key_raw: bytes | None, report: VerifyReport):
        store = ledger.store
        self.report = report
        self.public_key_raw = public_key_raw
        self.first_key_raw = self.last_key_raw = public_key_raw  # until the key history is followed
        # By size; a head of the empty log commits to nothing the rows could contradict.
        self.heads = [head for head in store.list_tree_heads() if head.tree_size > 0]
        projection = store.load_projection(PROJECTION_NAME)
        self.saved_states = {position: None for position in store.checkpoint_positions()}
        self.projection = projection
        self.anchors = store.list_anchors()
        self.rebuild = LogRebuild([head.tree_size for head in self.heads] + [a.tree_size for a in self.anchors])

    def event(self, position: int, row: dict, stored_leaf: bytes | None) -> None:
        if row["state"] is None:
            self.report.add(position, f"position {position}: its event row is missing (deleted?)")
            self.append_leaf(position, stored_leaf or merkle.EMPTY_ROOT)
            return
        if row["version"] != position + 1:
            self.report.add(position, f"position {position}: the event row holds version {row['version']}")
        event_bytes = bytes(row["state"])
        try:
            event = parse_canonical_bytes(event_bytes)  # the stored state IS the canonical bytes (FORMATS.md §1)
        except ValueError as error:
            self.report.add(position, f"position {position}: the event row is not a canonical event ({error})")
            self.append_leaf(position, stored_leaf or merkle.EMPTY_ROOT)
            return
        if event.get("position") != position:
            self.report.add(position, f"position {position}: the event row holds event {event.get('position')}")
        if (event.get("request_id"), event.get("type")) != (row["request_id"], row["event_type"]):
            self.report.add(position, f"position {position}: the event row disagrees with its log row")
        leaf = merkle.leaf_hash(event_bytes)
        if leaf != stored_leaf:
            self.report.add(position, f"position {position}: the event's bytes do not hash to the stored leaf")
        self._replay(position, event)
        self.append_leaf(position, leaf)

    def _replay(self, position: int, event: CanonicalEvent) -> None:
        """Fold the event read at log `position` (a copied-over row may claim another position)."""
        if self.rebuild.state is None:
            return
        error = self.rebuild.replay(event)
        if error is not None:
            self.report.add(position, f"position {position}: replay refuses the event ({error})")
            return
        self._compare_saved_state(position, self.rebuild.state)

    def _compare_saved_state(self, position: int, state: ReserveState) -> None:
        if self.projection and self.projection[0] == position and self.projection[1] != state.to_bytes():
            self.report.add(None, f"the saved projection {PROJECTION_NAME!r} at position {position} differs from a "
                                  "replay")
        if position in self.saved_states:
            self.saved_states[position] = state.to_bytes()

    def append_leaf(self, position: int, leaf: bytes) -> None:
        self.rebuild.append(leaf)

    def follow_key_history(self) -> None:
        """From the key given (the first key, or the one in force now) through each SigningKeyRotated event."""
        if self.public_key_raw is None:
            return
        keys = self.rebuild.keys
        self.first_key_raw = keys.first_key_for(self.public_key_raw)
        for position, why in keys.problems(self.first_key_raw):
            self.report.add(position, f"position {position}: {why}")
        self.last_key_raw = keys.last_key(self.first_key_raw)
        if keys.rotations:
            self.report.notes.append(f"the tree-head key was rotated {len(keys.rotations)} time(s); first key "
                                     f"{self.first_key_raw.hex()}")

    def check_heads(self) -> None:
        size = self.rebuild.size
        for check in self.rebuild.head_checks(self.heads, self.first_key_raw):
            head = check.head
            if check.root_matches is None:
                self.report.add(size, f"tree head {head.tree_size} covers more events than the log holds ({size})")
                continue
            self.report.tree_heads += 1
            if not check.root_matches:
                self.report.add(check.previous_size, f"tree head {head.tree_size}: its root does not match the "
                                f"events (one in [{check.previous_size}, {head.tree_size}) changed)", exact=False)
            if check.signature_valid is False:
                self.report.add(None, f"tree head {head.tree_size}: its signature does not verify")


def verify_ledger(ledger: ReserveLedger, public_key_raw: bytes | None,
                  progress: Callable[[int], None] = lambda n: None) -> VerifyReport:
    """Check the whole stored log; never raises for what it finds (see VerifyReport.problems)."""
    store, report = ledger.store, VerifyReport()
    size = store.log_size()
    scan = _Scan(ledger, public_key_raw, report)
    expected = 0
    while expected < size:
        rows = store.scan_log_rows(expected, SCAN_PAGE_SIZE)
        leaves = dict(store.scan_leaves(expected, SCAN_PAGE_SIZE + rows[-1]["position"] - expected))
        for row in rows:
            while expected < row["position"]:
                report.add(expected, f"position {expected}: no log row (deleted?)")
                scan.append_leaf(expected, leaves.get(expected, merkle.EMPTY_ROOT))
                expected += 1
            scan.event(expected, row, leaves.get(expected))
            expected += 1
        progress(expected)
    report.events = size
    scan.follow_key_history()
    scan.check_heads()
    _check_after_scan(ledger, scan, size, report)
    check_stored_anchors(scan.anchors, ledger.store.load_anchor_genesis(), scan.rebuild.roots, size, report)
    return report


def _check_after_scan(ledger: ReserveLedger, scan: _Scan, size: int, report: VerifyReport) -> None:
    store = ledger.store
    signed_size = scan.heads[-1].tree_size if scan.heads else 0
    if size > signed_size:
        report.add(signed_size, f"events {signed_size} to {size - 1} are covered by no signed tree head (every "
                                "commit signs its own: they were written behind the service's back)")
    for version in store.stray_event_versions(STRAY_ROWS_REPORTED_MAX):
        report.add(version - 1, f"an event row with version {version} is not in the log (inserted?)")
    extra = store.scan_leaves(size, 1)
    if extra:
        report.add(size, f"a leaf is stored at index {extra[0][0]}, beyond the log's {size} events")
    try:
        stored_root = merkle.root_hash(store, size)
    except merkle.ProofError as error:
        report.add(None, f"the stored subtree hashes cannot give a root: {error}")
    else:
        if stored_root != scan.rebuild.frontier.root():
            report.add(None, "the stored subtree hashes give a root that differs from the recomputed one")
    for position, state_bytes in scan.saved_states.items():
        saved = store.load_checkpoint(position)
        if state_bytes is not None and saved is not None and saved[1] != state_bytes:
            report.add(None, f"the checkpoint at position {position} differs from a replay")
    _check_saved_states(store, scan, size, report)


def _check_saved_states(store, scan: _Scan, size: int, report: VerifyReport) -> None:
    """Each saved state's proof (with the public key), saved states beyond the log, rows kept for inspection."""
    rows = [(f"projection {PROJECTION_NAME!r}", *scan.projection)] if scan.projection else []
    rows += [("checkpoint", position, store.load_checkpoint(position)[1]) for position in scan.saved_states]
    proofs = None if scan.last_key_raw is None else StateProofs(store, scan.last_key_raw)
    checked: dict[str, tuple[int, str]] = {}
    naming: dict[str, list[str]] = {}   # a lot chunk's problem -> the saved states that need the chunk
    for row, position, state_bytes in rows:
        if position >= size:
            report.add(None, f"the saved {row} at position {position} is beyond the log ({size} events)")
        elif proofs is not None and (reason := proofs.unproven_reason(position, state_bytes)) is not None:
            report.add(None, f"the saved {row} at position {position} is unproven: {reason}")
        if (problem := _lot_chunks_problem(store, state_bytes, checked)) is not None:
            naming.setdefault(problem, []).append(f"the saved {row} at position {position}")
    for problem, states in naming.items():   # one line per chunk, however many saved states need it
        report.add(None, f"{problem}; {' and '.join(states)} {'needs' if len(states) == 1 else 'need'} it")
    for name in store.projection_names():
        if name.startswith(SET_ASIDE_PREFIX):
            report.notes.append(f"projections row {name!r} holds a saved state that failed its proof, kept for "
                                "inspection (delete it once inspected)")


def _lot_chunks_problem(store, state_bytes: bytes, checked: dict[str, tuple[int, str]]) -> str | None:
    """Why the lot chunks a saved state needs cannot be loaded (missing, altered, out of place), or None.
    A state of another format is said by the comparison with the replay."""
    try:
        check_saved_chunks(saved_lot_fields(state_bytes), store.load_lot_chunk, checked)
    except StateFormatUnknown:
        return None
    except LotChunkUnusable as unusable:
        return f"lot chunk {unusable.digest} (lots from {unusable.number}) {unusable.problem}"
    except (ValueError, KeyError, TypeError) as error:
        return f"a lot queue that cannot be read ({error!r})"
    return None


def check_stored_anchors(anchors: list[Anchor], genesis: Outpoint | None, roots: dict[int, bytes], size: int,
                         report: VerifyReport) -> None:
    """Every anchor row against the log and its own transaction, with the bundle audit's checks (ledger/audit.py:
    txid, payload = the root recomputed here at its size, merkleblock, chain of anchors, genesis), plus what
    only the store shows: rows missing from the dense anchor_ids, a row that disagrees with its transaction,
    an anchor beyond the log (truncation), a genesis no anchor spends."""
    findings = audit.Findings()
    audit.check_anchors([a.to_json() for a in anchors], roots, size, findings, genesis)
    beyond = {f"anchor {a.txid}" for a in anchors if a.tree_size > size}
    for finding in findings.kept:
        if finding.where in beyond and "events were removed" in finding.message:
            continue  # said below in the store's words
        report.add(size if finding.where in beyond else None, f"{finding.where}: {finding.message}")
    for anchor in anchors:
        if anchor.tree_size > size:
            report.add(size, f"anchor {anchor.anchor_id} ({anchor.txid}) commits to tree size {anchor.tree_size}, "
                             f"beyond the log's {size} events: the log was truncated")
        _check_anchor_row(anchor, report)
    ids = [a.anchor_id for a in anchors]
    for before, after in zip([0, *ids], ids):
        if after != before + 1:
            report.add(None, f"anchor rows {before + 1}..{after - 1} are missing (deleted?)")
    if genesis is not None and not any(genesis in _spent(a) for a in anchors):
        report.add(None, f"the anchor genesis {genesis} is recorded but no anchor row spends it (anchor rows deleted, "
                         "or the worker stopped between recording it and its first anchor)")


def _spent(anchor: Anchor) -> list[Outpoint]:
    try:
        return spent_outpoints(parse_transaction(anchor.raw_tx))
    except AnchoringError:
        return []


def _check_anchor_row(anchor: Anchor, report: VerifyReport) -> None:
    """The row's own columns say what its transaction says (the coin spent, the change)."""
    try:
        tx = parse_transaction(anchor.raw_tx)
    except AnchoringError:
        return  # named by check_anchors
    where = f"anchor {anchor.anchor_id} ({anchor.txid})"
    if Outpoint(anchor.prev_txid, anchor.prev_vout) not in spent_outpoints(tx):
        report.add(None, f"{where}: its row says it spends {anchor.prev_txid}:{anchor.prev_vout}, its transaction "
                         "does not")
    if not 0 <= anchor.change_vout < len(tx.outputs) or \
            tx.outputs[anchor.change_vout].value_sats != anchor.change_value_sats:
        report.add(None, f"{where}: its row's change ({anchor.change_vout}, {anchor.change_value_sats} sats) is not "
                         "its transaction's")
