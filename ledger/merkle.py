"""RFC 9162 Merkle log over the ledger's events, computed from stored complete subtrees.

Hashes (RFC 9162 section 2.1.1, with the leaf input being the SHA-256 of the event's canonical bytes):
  leaf  = SHA-256(0x00 || SHA-256(event_bytes))
  node  = SHA-256(0x01 || left || right)
  empty = SHA-256("")

A *node key* ``(level, idx)`` names the perfect subtree over leaves ``[idx << level, (idx + 1) << level)``;
level 0 is the leaf itself. The log stores every perfect subtree once it is complete, so appending costs
O(log n) hashes and any root or proof for any size up to the current one needs O(log n) stored nodes,
fetched in one call to a :class:`NodeReader`. Nothing here touches a database: storage adapters
implement ``get_nodes``.

Verification functions (``verify_inclusion``, ``verify_consistency``) need only hashes and integers.
"""

import hashlib
from typing import Iterable, Protocol, Sequence

HASH_SIZE_BYTES = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeKey = tuple[int, int]


class NodeReader(Protocol):
    def get_nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        """Return the stored hash of every requested complete subtree (missing ones are left out)."""


class ProofError(ValueError):
    """A proof or root was asked for a size or index the log cannot answer."""


def event_digest(event_bytes: bytes) -> bytes:
    return hashlib.sha256(event_bytes).digest()


def leaf_hash_from_digest(digest: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + digest).digest()


def leaf_hash(event_bytes: bytes) -> bytes:
    return leaf_hash_from_digest(event_digest(event_bytes))


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 section 2.1.1: the largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# --- which stored subtrees make up a range -------------------------------------------------------------

def range_keys(start: int, end: int) -> list[NodeKey]:
    """The perfect subtrees covering leaves [start, end), largest first.

    Valid for every range an RFC 9162 root or proof asks for: ``start`` is aligned to a power of two at
    least as large as the range, so the decomposition follows the set bits of ``end - start``.
    """
    keys, position, size = [], start, end - start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            if position % (1 << level):
                raise ProofError(f"range [{start}, {end}) is not aligned")
            keys.append((level, position >> level))
            position += 1 << level
    return keys


def frontier_keys(tree_size: int) -> list[NodeKey]:
    """The perfect subtrees that make up a log of ``tree_size`` leaves (what an append needs)."""
    return range_keys(0, tree_size)


def fold_range(hashes: Sequence[bytes]) -> bytes:
    """The root of a range from its perfect subtrees, largest (leftmost) first."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def append_nodes(tree_size: int, leaf: bytes, frontier: dict[NodeKey, bytes]) -> list[tuple[NodeKey, bytes]]:
    """The subtrees completed by appending ``leaf`` at index ``tree_size``: the leaf, then its new parents.

    ``frontier`` must hold the nodes of ``frontier_keys(tree_size)``.
    """
    level, idx, current = 0, tree_size, leaf
    created = [((0, tree_size), leaf)]
    while idx & 1:
        current = node_hash(frontier[(level, idx - 1)], current)
        level, idx = level + 1, idx >> 1
        created.append(((level, idx), current))
    return created


# --- roots and proofs from stored subtrees -------------------------------------------------------------

def _inclusion_ranges(index: int, start: int, end: int) -> list[tuple[int, int]]:
    """RFC 9162 PATH(m, D[start:end]) as ranges, leaf to root."""
    if end - start <= 1:
        return []
    k = largest_power_of_two_below(end - start)
    if index < start + k:
        return _inclusion_ranges(index, start, start + k) + [(start + k, end)]
    return _inclusion_ranges(index, start + k, end) + [(start, start + k)]


def _consistency_ranges(m: int, start: int, end: int, whole: bool) -> list[tuple[int, int]]:
    """RFC 9162 SUBPROOF(m, D[start:end], b) as ranges; ``m`` counts from ``start``."""
    if m == end - start:
        return [] if whole else [(start, end)]
    k = largest_power_of_two_below(end - start)
    if m <= k:
        return _consistency_ranges(m, start, start + k, whole) + [(start + k, end)]
    return _consistency_ranges(m - k, start + k, end, False) + [(start, start + k)]


def _hash_ranges(reader: NodeReader, ranges: list[tuple[int, int]]) -> list[bytes]:
    wanted = [range_keys(start, end) for start, end in ranges]
    found = reader.get_nodes(sorted({key for keys in wanted for key in keys}))
    missing = [key for keys in wanted for key in keys if key not in found]
    if missing:
        raise ProofError(f"the log holds no subtree {missing[0]}")
    return [fold_range([found[key] for key in keys]) for keys in wanted]


def root_hash(reader: NodeReader, tree_size: int) -> bytes:
    if tree_size < 0:
        raise ProofError("tree size must not be negative")
    if tree_size == 0:
        return EMPTY_ROOT
    return _hash_ranges(reader, [(0, tree_size)])[0]


def inclusion_proof(reader: NodeReader, index: int, tree_size: int) -> list[bytes]:
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf {index} is not in a tree of size {tree_size}")
    return _hash_ranges(reader, _inclusion_ranges(index, 0, tree_size))


def consistency_proof(reader: NodeReader, first_size: int, second_size: int) -> list[bytes]:
    if not 0 <= first_size <= second_size:
        raise ProofError(f"no consistency proof from size {first_size} to size {second_size}")
    if first_size in (0, second_size):
        return []
    return _hash_ranges(reader, _consistency_ranges(first_size, 0, second_size, True))


# --- verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2) ----------------------------------------------

def _well_formed(hashes: Iterable[bytes]) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE_BYTES for h in hashes)


def inclusion_steps(index: int, tree_size: int, proof: Sequence[bytes]) -> list[tuple[bool, bytes]]:
    """The walk of RFC 9162 section 2.1.3.2: (sibling is on the left, sibling) per proof hash, leaf to root.

    Raises ProofError unless the proof has exactly the path's length and holds only 32-byte hashes.
    """
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf {index} is not in a tree of size {tree_size}")
    steps, fn, sn = [], index, tree_size - 1
    for sibling in proof:
        if sn == 0 or not _well_formed([sibling]):
            raise ProofError("the proof is longer than the path or holds a non-32-byte hash")
        if fn & 1 or fn == sn:
            steps.append((True, sibling))
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            steps.append((False, sibling))
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the proof is shorter than the path")
    return steps


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True only if ``proof`` shows ``leaf`` at ``index`` in the tree of ``tree_size`` with ``root``."""
    if not _well_formed([leaf, root]):
        return False
    try:
        steps = inclusion_steps(index, tree_size, proof)
    except ProofError:
        return False
    result = leaf
    for sibling_on_left, sibling in steps:
        result = node_hash(sibling, result) if sibling_on_left else node_hash(result, sibling)
    return result == root


def verify_consistency(first_size: int, second_size: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """True only if ``proof`` shows the tree (first_size, first_root) is a prefix of (second_size, second_root)."""
    if not (0 <= first_size <= second_size) or not _well_formed([first_root, second_root, *proof]):
        return False
    if first_size == second_size:
        return not proof and first_root == second_root
    if first_size == 0:
        return not proof and first_root == EMPTY_ROOT
    path = list(proof)
    if first_size & (first_size - 1) == 0:  # a power of two: the first root is the first node of the path
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for node in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(node, fr), node_hash(node, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, node)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root


def root_from_leaves(leaves: Sequence[bytes]) -> bytes:
    """Root of a list of leaf hashes, in O(n) hashing; for tests and offline verification."""
    store = MemoryNodeStore()
    for leaf in leaves:
        store.append(leaf)
    return root_hash(store, len(leaves))


class MemoryNodeStore:
    """An in-memory NodeReader: the auditor's offline rebuild of a log, and the tests' log."""

    def __init__(self) -> None:
        self.nodes: dict[NodeKey, bytes] = {}
        self.size = 0

    def append(self, leaf: bytes) -> None:
        self.nodes.update(append_nodes(self.size, leaf, self.nodes))
        self.size += 1

    def get_nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        return {key: self.nodes[key] for key in keys if key in self.nodes}


class CompactRange:
    """The O(log n) frontier of a log rebuilt leaf by leaf: its right edge as a stack of (level, hash).

    Appends are O(1) amortised; the root is available at any size without storing the tree. It also keeps
    the complete subtrees named in ``wanted`` (say, the nodes consistency proofs will need, see
    ``ledger.audit.consistency_keys``) and serves them as a NodeReader, so memory stays O(log n + len(wanted)).
    """

    def __init__(self, wanted: Iterable[NodeKey] = ()) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []
        self._wanted = frozenset(wanted)
        self.nodes: dict[NodeKey, bytes] = {}

    def append(self, leaf: bytes) -> None:
        level, index, current = 0, self.size, leaf
        if (0, index) in self._wanted:
            self.nodes[(0, index)] = leaf
        stack = self._stack
        while stack and stack[-1][0] == level:
            current = node_hash(stack.pop()[1], current)
            level, index = level + 1, index >> 1
            if (level, index) in self._wanted:
                self.nodes[(level, index)] = current
        stack.append((level, current))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        return fold_range([node for _, node in self._stack])

    def copy(self) -> "CompactRange":
        """An independent frontier at the same size (to extend tentatively, e.g. inside a transaction)."""
        other = CompactRange(self._wanted)
        other.size, other._stack, other.nodes = self.size, list(self._stack), dict(self.nodes)
        return other

    def get_nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        """NodeReader over the kept subtrees."""
        return {key: self.nodes[key] for key in keys if key in self.nodes}
