"""The core both auditors share: rebuild a log from its events and check its signed tree heads against it.

`reserve-ledger verify` (services/audit/verify.py, over storage rows) and the offline bundle audit
(ledger/audit.py, over exported bytes) each feed it every event in log order: the leaf goes into an RFC 9162
frontier (the roots at the sizes asked for are kept), the canonical event into the fold. Then each signed
head is checked against the rebuilt root at its size and its signature. Each caller words its own findings.
"""

import dataclasses
from typing import Callable, Iterable, Iterator, Sequence

from ledger import merkle
from ledger.events import CanonicalEvent
from ledger.key_history import KeyHistory
from ledger.state import ReserveState
from ledger.tree_heads import TreeHead, verify_tree_head


@dataclasses.dataclass(frozen=True)
class HeadCheck:
    head: TreeHead
    previous_size: int               # the tree size of the head before it (0 for the first)
    root_matches: bool | None        # None: the head covers more events than were rebuilt
    signature_valid: bool | None     # None: no public key to check it with


class LogRebuild:
    """Feed `append` every leaf and `replay` every event, in log order; then read `head_checks`."""

    def __init__(self, sizes: Iterable[int], wanted: Iterable[merkle.NodeKey] = ()) -> None:
        """Keep the roots at `sizes` and the subtrees in `wanted` (see merkle.CompactRange)."""
        self._sizes = frozenset(sizes)
        self.frontier = merkle.CompactRange(wanted)
        self.roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT} if 0 in self._sizes else {}
        self.state: ReserveState | None = ReserveState()
        self.keys = KeyHistory()  # the tree-head key's rotations, in log order

    @property
    def size(self) -> int:
        return self.frontier.size

    def append(self, leaf: bytes) -> None:
        self.frontier.append(leaf)
        if self.frontier.size in self._sizes:
            self.roots[self.frontier.size] = self.frontier.root()

    def replay(self, event: CanonicalEvent,
               observe: Callable[[CanonicalEvent, ReserveState], None] | None = None) -> Exception | None:
        """Fold the event (after `observe` looked at it and the state before it); a refusal by either is
        returned and stops the replay (later events are not folded)."""
        self.keys.observe(event)
        if self.state is None:
            return None
        try:
            if observe is not None:
                observe(event, self.state)
            self.state.apply(event)
        except Exception as error:  # noqa: BLE001 - any refusal of the fold is a finding, not a crash
            self.state = None
            return error
        return None

    def head_checks(self, heads: Sequence[TreeHead], first_key_raw: bytes | None) -> Iterator[HeadCheck]:
        """Each head, in the order given (by size), against the rebuilt root at its size and the key in force
        at its size: the first key, then each rotation recorded in the log (ledger/key_history.py)."""
        previous_size = 0
        for head in heads:
            root = self.roots.get(head.tree_size) if head.tree_size <= self.size else None
            assert head.tree_size > self.size or root is not None, (head.tree_size, "a size not asked for")
            key = None if first_key_raw is None else self.keys.key_at(head.tree_size, first_key_raw)
            signature_valid = None if first_key_raw is None else key is not None and verify_tree_head(key, head)
            yield HeadCheck(head, previous_size, None if root is None else head.root_hash == root, signature_valid)
            previous_size = head.tree_size
