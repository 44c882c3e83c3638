"""The Merkle log against RFC 9162's worked example and a naive recursive reference, plus bad-proof probes."""

import hashlib

import pytest

from ledger import merkle

SIZE_MAX = 130


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- naive reference: RFC 9162 section 2.1 written out directly over the list of leaf inputs -------------

def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, leaves[:k], whole) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def leaf_inputs(n: int) -> list[bytes]:
    """The leaf input is SHA-256 of the event bytes; the event bytes here are b"event-<i>"."""
    return [sha(f"event-{i}".encode()) for i in range(n)]


@pytest.fixture(scope="module")
def log():
    store = merkle.MemoryNodeStore()
    for data in leaf_inputs(SIZE_MAX):
        store.append(merkle.leaf_hash_from_digest(data))
    return store


def test_hash_definitions():
    event = b'{"position":0}'
    assert merkle.leaf_hash(event) == sha(b"\x00" + sha(event))
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == sha(b"\x01" + b"a" * 32 + b"b" * 32)
    assert merkle.EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_roots_match_reference_for_every_size(log):
    inputs = leaf_inputs(SIZE_MAX)
    for n in range(SIZE_MAX + 1):
        assert merkle.root_hash(log, n) == ref_mth(inputs[:n]), n


def test_inclusion_proofs_match_reference_and_verify(log):
    inputs = leaf_inputs(SIZE_MAX)
    for n in range(1, SIZE_MAX + 1):
        root = ref_mth(inputs[:n])
        for m in range(n):
            proof = merkle.inclusion_proof(log, m, n)
            assert proof == ref_path(m, inputs[:n]), (m, n)
            assert merkle.verify_inclusion(merkle.leaf_hash_from_digest(inputs[m]), m, n, proof, root)


def test_consistency_proofs_match_reference_and_verify(log):
    inputs = leaf_inputs(SIZE_MAX)
    roots = [ref_mth(inputs[:n]) for n in range(SIZE_MAX + 1)]
    for n in range(1, SIZE_MAX + 1):
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(log, m, n)
            assert proof == ref_subproof(m, inputs[:n], True), (m, n)
            assert merkle.verify_consistency(m, n, roots[m], roots[n], proof), (m, n)


# --- RFC 9162 section 2.1.5: the seven-leaf example, with nodes named as in the RFC -----------------------

@pytest.fixture(scope="module")
def rfc_example():
    inputs = leaf_inputs(7)
    a, b, c, d, e, f, j = (merkle.leaf_hash_from_digest(x) for x in inputs)
    g, h, i = merkle.node_hash(a, b), merkle.node_hash(c, d), merkle.node_hash(e, f)
    k, l = merkle.node_hash(g, h), merkle.node_hash(i, j)
    root = merkle.node_hash(k, l)
    store = merkle.MemoryNodeStore()
    for x in inputs:
        store.append(merkle.leaf_hash_from_digest(x))
    return store, dict(a=a, b=b, c=c, d=d, e=e, f=f, g=g, h=h, i=i, j=j, k=k, l=l, root=root)


def test_rfc_example_inclusion(rfc_example):
    store, t = rfc_example
    assert merkle.root_hash(store, 7) == t["root"]
    assert merkle.inclusion_proof(store, 0, 7) == [t["b"], t["h"], t["l"]]
    assert merkle.inclusion_proof(store, 3, 7) == [t["c"], t["g"], t["l"]]
    assert merkle.inclusion_proof(store, 6, 7) == [t["i"], t["k"]]


def test_rfc_example_consistency(rfc_example):
    store, t = rfc_example
    assert merkle.consistency_proof(store, 3, 7) == [t["c"], t["d"], t["g"], t["l"]]
    assert merkle.consistency_proof(store, 4, 7) == [t["l"]]
    assert merkle.consistency_proof(store, 6, 7) == [t["i"], t["j"], t["k"]]
    hash0 = merkle.node_hash(t["g"], t["c"])
    assert merkle.verify_consistency(3, 7, hash0, t["root"], [t["c"], t["d"], t["g"], t["l"]])


# --- every corrupted proof must be refused ---------------------------------------------------------------

def flipped_bit_variants(proof: list[bytes]):
    for pos in range(len(proof)):
        for bit in (0, 7 * 8 + 3, 31 * 8 + 7):
            damaged = bytearray(proof[pos])
            damaged[bit // 8] ^= 1 << (bit % 8)
            yield proof[:pos] + [bytes(damaged)] + proof[pos + 1:]


PROBE_SIZES = [(m, n) for n in (1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 64, 100, 127, 130) for m in {0, 1, n // 2, n - 1}
               if 0 <= m < n]


@pytest.mark.parametrize("index,size", PROBE_SIZES)
def test_corrupted_inclusion_proofs_are_refused(log, index, size):
    inputs = leaf_inputs(SIZE_MAX)
    leaf = merkle.leaf_hash_from_digest(inputs[index])
    root = merkle.root_hash(log, size)
    proof = merkle.inclusion_proof(log, index, size)
    assert merkle.verify_inclusion(leaf, index, size, proof, root)
    refusals = [
        (leaf, index + 1, size, proof, root),
        (leaf, index - 1, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size, proof + [root], root),
        (leaf, index, size, proof[:-1], root),
        (leaf, index, size, proof[1:], root),
        (merkle.leaf_hash_from_digest(sha(b"other")), index, size, proof, root),
        (inputs[index], index, size, proof, root),  # the unprefixed digest is not the leaf
        (leaf, index, size, proof, merkle.root_hash(log, size - 1)),
    ]
    refusals += [(leaf, index, size, bad, root) for bad in flipped_bit_variants(proof)]
    for args in refusals:
        if args[1:4] == (index, size, proof) and args[0] == leaf and args[4] == root:
            continue  # e.g. proof[:-1] of an empty proof is the same proof
        assert not merkle.verify_inclusion(*args), args[1:3]


CONSISTENCY_PROBES = [(m, n) for n in (2, 3, 7, 8, 9, 16, 17, 64, 100, 130) for m in {1, 2, n // 2, n - 1} if 0 < m < n]


@pytest.mark.parametrize("first,second", CONSISTENCY_PROBES)
def test_corrupted_consistency_proofs_are_refused(log, first, second):
    r1, r2 = merkle.root_hash(log, first), merkle.root_hash(log, second)
    proof = merkle.consistency_proof(log, first, second)
    assert merkle.verify_consistency(first, second, r1, r2, proof)
    refusals = [
        (first + 1, second, r1, r2, proof),
        (first - 1, second, r1, r2, proof),
        (first, second * 2, r1, r2, proof),
        (first, second, r1, r2, proof + [r1]),
        (first, second, r1, r2, proof[:-1]),
        (first, second, r1, r2, proof[1:]),
        (first, second, r2, r1, proof),
        (first, second, merkle.root_hash(log, first + 1), r2, proof),
        (first, second, r1, merkle.root_hash(log, second - 1), proof),
    ]
    refusals += [(first, second, r1, r2, bad) for bad in flipped_bit_variants(proof)]
    for args in refusals:
        assert not merkle.verify_consistency(*args), args[:2]


def test_proofs_for_sizes_the_log_does_not_hold_are_errors(log):
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(log, 5, 5)
    with pytest.raises(merkle.ProofError):
        merkle.root_hash(log, SIZE_MAX + 1)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(log, 9, 8)


def test_append_touches_only_log_many_nodes():
    store = merkle.MemoryNodeStore()
    for i in range(1024):
        before = len(store.nodes)
        store.append(merkle.leaf_hash(str(i).encode()))
        assert len(store.nodes) - before <= 11
    assert len(merkle.frontier_keys(1023)) == 10
    assert merkle.frontier_keys(6) == [(2, 0), (1, 2)]


def test_compact_range_root_equals_stored_root_at_every_size(log):
    compact = merkle.CompactRange()
    assert compact.root() == merkle.EMPTY_ROOT
    for i, data in enumerate(leaf_inputs(SIZE_MAX)):
        compact.append(merkle.leaf_hash_from_digest(data))
        assert compact.root() == merkle.root_hash(log, i + 1)
