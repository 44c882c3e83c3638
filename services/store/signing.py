"""The tree-head signing key (an Ed25519 PEM file) and the service's signed tree heads.

The writer signs the head of every commit it makes, inside the commit's own transaction (the recorder calls
`TreeHeadSigner.sign_commit` from its append hook), so no acknowledged event is ever unsigned and nothing
signs rows this process did not decide. The signer extends an in-memory RFC 9162 frontier with the leaves it
appends; the frontier starts from the stored log, checked against the latest signed head at start
(`open_log`). Events found beyond the latest head, or that contradict it, raise a `LogIntegrityAlarm`: the
server refuses writes until an operator has looked (docs/OPERATIONS.md).

With SQLite the key lives by default in the data directory (created on first start, mode 0600 from the
first byte); it may instead live in a PKCS#11 token (services/keys/). With PostgreSQL every replica must sign
with the same key, so `--signing-key FILE|URI` is required. A new key takes over only through a
SigningKeyRotated event signed by both keys (`keys rotate`, services/keys/rotation.py): heads already signed
stay verifiable with the old key, and whoever checks them follows the key history (ledger/key_history.py).
"""

import logging
import pathlib
from typing import Callable, Protocol, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import limits, merkle
from ledger.errors import InvariantBroken, LedgerError
from ledger.tree_heads import (TreeHead, key_id, raw_public_key, sign_tree_head, superseded_head_kept,
                               verify_tree_head)
from services.keys.files import read_private, write_private
from services.keys.signers import as_signer

SIGNING_KEY_FILE_NAME = "tree-head-signing.key"
# Per-commit heads are pruned once superseded, except the first to reach each multiple of this size (and
# any head an anchor commits to): a log of 1,000,000 events keeps about 1,001 heads (docs/FORMATS.md §3).
TREE_HEAD_KEEP_EVERY_EVENTS = 1000
log = logging.getLogger("reserve_ledger.tree_heads")


def load_or_create_signing_key(path: str | pathlib.Path) -> Ed25519PrivateKey:
    """Load the PEM key at `path`, creating it (exclusively, mode 0600 from the first byte) when it does not
    exist yet. A key file that group or others may read is refused (KeyFileTooOpen)."""
    path = pathlib.Path(path)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        try:
            write_private(path, pem)
        except FileExistsError:
            pass  # another process created it first: use theirs
    key = serialization.load_pem_private_key(read_private(path, "the tree-head signing key"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


class LogIntegrityAlarm(LedgerError):
    """The stored log holds events no head this service signed covers, or that contradict a signed head:
    someone wrote to the database behind the service's back. Writes are refused (docs/OPERATIONS.md)."""

    def __init__(self, message: str, positions: tuple[int, int] | None = None):
        super().__init__(message + "; writes are refused until an operator has checked the log "
                                   "(reserve-ledger verify; docs/OPERATIONS.md)")
        self.positions = positions  # [first, end) of the events concerned, when known


def replay_alarm(broken: InvariantBroken) -> LogIntegrityAlarm:
    return LogIntegrityAlarm(f"events {broken.position} to {broken.position}: the replay refuses the stored event "
                             f"({broken.rule}: {broken.detail})", (broken.position, broken.position + 1))


class CommitLog(Protocol):
    """What the signer reads inside the commit's transaction (services/store/recorders.py)."""

    def latest_heads(self, count: int) -> list[TreeHead]: ...          # the largest stored heads, largest first
    def event_bytes(self, start: int, end: int) -> list[bytes]: ...    # canonical bytes of positions [start, end)


class TreeHeadSigner:
    """Signs the head of each commit this process makes; checks the stored log against the heads first."""

    def __init__(self, store, private_key: Ed25519PrivateKey, clock_us: Callable[[], int],
                 keep_every_events: int = TREE_HEAD_KEEP_EVERY_EVENTS):
        self._store = store
        self._key = as_signer(private_key)
        self._clock_us = clock_us
        self._keep_every_events = keep_every_events
        self.public_key_raw = raw_public_key(private_key.public_key())
        self.key_id = key_id(private_key.public_key())
        self._frontier: merkle.CompactRange | None = None  # the log as this process checked or appended it
        self._head: TreeHead | None = None                 # the head of that frontier
        self._pending: tuple[merkle.CompactRange, TreeHead] | None = None
        self.alarm: LogIntegrityAlarm | None = None
        self.on_alarm: Callable[[LogIntegrityAlarm], None] = lambda alarm: None

    @property
    def signing_key(self):
        """The Ed25519 signer of heads (services/keys/signers.py: sign(message) -> bytes, public_key_bytes):
        whatever else the log signs (checkpoints) is signed with the same key."""
        return self._key

    def rotate_to(self, new_key) -> None:
        """Sign with `new_key` from the next commit on: `keys rotate` records the SigningKeyRotated event in
        that commit, so the first head that includes the rotation is the new key's (ledger/key_history.py)."""
        self._key = as_signer(new_key)
        self.public_key_raw = raw_public_key(new_key.public_key())
        self.key_id = key_id(new_key.public_key())

    def latest(self) -> TreeHead | None:
        """The latest stored head (None when none was ever signed), its signature checked first."""
        head = self._store.load_tree_head()
        if head is not None and not verify_tree_head(self.public_key_raw, head):
            raise self._raised(LogIntegrityAlarm(
                f"the latest tree head (size {head.tree_size}) does not verify under this service's key "
                f"{self.key_id[:16]}…"))
        return head

    # --- at start -------------------------------------------------------------------------------------

    def open_log(self) -> LogIntegrityAlarm | None:
        """Check the stored log against the latest signed head and sign this process's commits from now on.

        The frontier is rebuilt from the stored event bytes (O(n) hashing, once; the stored subtree hashes
        are not trusted: an insider can rewrite them). Returns the alarm, if any (also kept in `alarm`).
        """
        size = self._store.log_size()  # before the head: a replica's commit adds its events and head at once
        head = self._store.load_tree_head()
        frontier = merkle.CompactRange()
        try:
            self._check_stored_log(head, size, frontier)
        except LogIntegrityAlarm as alarm:
            self._raised(alarm)
        self._frontier, self._head = frontier, head
        self._store.commit_signer = self
        return self.alarm

    def _check_stored_log(self, head: TreeHead | None, size: int, frontier: merkle.CompactRange) -> None:
        if head is None:
            if size:
                raise LogIntegrityAlarm(f"events 0 to {size - 1} are covered by no signed tree head", (0, size))
            return  # an empty log: the first commit signs the first head
        if not verify_tree_head(self.public_key_raw, head):
            raise LogIntegrityAlarm(f"the latest tree head (size {head.tree_size}) does not verify under this "
                                    f"service's key {self.key_id[:16]}…")
        # The kept earlier heads (about one per TREE_HEAD_KEEP_EVERY_EVENTS) narrow down where a change lies.
        earlier = {h.tree_size: h.root_hash for h in self._store.list_tree_heads(1, head.tree_size - 1)}
        matching_size = 0
        while frontier.size < head.tree_size:
            rows = self._store.read_log(frontier.size, min(limits.REPLAY_PAGE_SIZE, head.tree_size - frontier.size))
            if not rows or rows[0].position != frontier.size:
                raise LogIntegrityAlarm(f"the signed tree head covers {head.tree_size} events but the log has no "
                                        f"event at position {frontier.size} (deleted?)",
                                        (frontier.size, head.tree_size))
            for row in rows:
                frontier.append(merkle.leaf_hash(row.canonical_bytes))
                if earlier.get(frontier.size) == frontier.root():
                    matching_size = frontier.size
        if frontier.root() != head.root_hash:
            raise LogIntegrityAlarm(f"the stored events {matching_size} to {head.tree_size - 1} do not give the root "
                                    f"of the tree head signed at size {head.tree_size}: one of them was changed, "
                                    "removed or inserted", (matching_size, head.tree_size))
        if size > head.tree_size:
            raise LogIntegrityAlarm(f"events {head.tree_size} to {size - 1} are covered by no signed tree head "
                                    f"(written behind the service's back?)", (head.tree_size, size))

    # --- inside each commit's transaction -------------------------------------------------------------

    def sign_commit(self, commit: CommitLog, tree_size_before: int,
                    leaves: Sequence[bytes]) -> tuple[TreeHead, int | None]:
        """The signed head of the log after this commit, and the size of the head it prunes (None: none)."""
        if self.alarm is not None:
            raise self.alarm
        recent = commit.latest_heads(2)
        frontier = self._frontier_at(commit, tree_size_before, recent[0] if recent else None)
        for leaf in leaves:
            frontier.append(leaf)
        self._pending = None
        if not recent:
            head = sign_tree_head(self._key, frontier.size, frontier.root(), self._clock_us())
            self._pending = (frontier, head)
            return head, None
        previous = recent[0]
        head = sign_tree_head(self._key, frontier.size, frontier.root(), max(self._clock_us(), previous.timestamp_us))
        retained = recent[1].tree_size if len(recent) > 1 else None
        # The last head a key signed before a rotation is kept too: its final word, linked to the new key's heads.
        kept = previous.key_id != head.key_id or superseded_head_kept(previous.tree_size, retained,
                                                                        self._keep_every_events)
        self._pending = (frontier, head)
        return head, None if kept else previous.tree_size

    def settle(self, committed: bool) -> None:
        """After the transaction: adopt the signed frontier if it committed, forget it otherwise."""
        if committed and self._pending is not None:
            self._frontier, self._head = self._pending
        self._pending = None

    def _frontier_at(self, commit: CommitLog, size: int, latest: TreeHead | None) -> merkle.CompactRange:
        """A copy of the frontier at `size`; events committed by another replica (or a commit whose
        acknowledgement was lost) are checked against the head signed with them before they are taken in."""
        assert self._frontier is not None, "open_log() was not called"
        if latest == self._head and size == self._frontier.size:
            return self._frontier.copy()  # the usual case: the last commit was ours
        if latest is None or latest.tree_size != size:
            first = 0 if latest is None else latest.tree_size
            raise self._raised(LogIntegrityAlarm(
                f"events {first} to {size - 1} are covered by no signed tree head (written behind the service's "
                f"back?)", (first, size)))
        frontier = self._frontier.copy()
        if size >= frontier.size:
            for event_bytes in commit.event_bytes(frontier.size, size):
                frontier.append(merkle.leaf_hash(event_bytes))
        if (frontier.size, frontier.root()) != (size, latest.root_hash) or not verify_tree_head(
                self.public_key_raw, latest):
            raise self._raised(LogIntegrityAlarm(
                f"events {self._frontier.size} to {size - 1} do not match the tree head signed at size {size}",
                (min(self._frontier.size, size), size)))
        return frontier

    def refuse_log(self, broken: InvariantBroken) -> LogIntegrityAlarm:
        """The replay refuses a stored event: the same alarm as an unsigned or contradicted one."""
        return self._raised(replay_alarm(broken))

    def _raised(self, alarm: LogIntegrityAlarm) -> LogIntegrityAlarm:
        if self.alarm is None:
            self.alarm = alarm
            log.error("LOG INTEGRITY ALARM: %s", alarm)
            self.on_alarm(alarm)
        return alarm
