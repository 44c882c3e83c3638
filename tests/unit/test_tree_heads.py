"""Signed tree heads: a valid head verifies; any change to any signed field, or another key, is refused."""

import dataclasses
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.tree_heads import raw_public_key, sign_tree_head, signed_message, verify_tree_head

ROOT = hashlib.sha256(b"root").digest()


def test_signed_message_layout_is_the_documented_70_bytes():
    message = signed_message(0x0102, ROOT, 0x0A0B)
    assert len(message) == 70
    assert message[:22] == b"reserve-ledger/sth/v1\n"
    assert message[22:30] == (0x0102).to_bytes(8, "big") and message[30:38] == (0x0A0B).to_bytes(8, "big")
    assert message[38:] == ROOT


def test_a_head_verifies_with_its_key_and_nothing_else():
    key = Ed25519PrivateKey.generate()
    public = raw_public_key(key.public_key())
    head = sign_tree_head(key, 1000, ROOT, 1_790_000_000_000_000)
    assert verify_tree_head(public, head)
    assert head.key_id == hashlib.sha256(public).hexdigest()
    other = raw_public_key(Ed25519PrivateKey.generate().public_key())
    assert not verify_tree_head(other, head)
    assert not verify_tree_head(other, dataclasses.replace(head, key_id=hashlib.sha256(other).hexdigest()))
    changed = [
        dataclasses.replace(head, tree_size=1001),
        dataclasses.replace(head, timestamp_us=head.timestamp_us + 1),
        dataclasses.replace(head, root_hash=hashlib.sha256(b"other").digest()),
        dataclasses.replace(head, key_id="00" * 32),
        dataclasses.replace(head, signature=head.signature[:-1]),
    ]
    for bit in range(0, 512, 37):
        damaged = bytearray(head.signature)
        damaged[bit // 8] ^= 1 << (bit % 8)
        changed.append(dataclasses.replace(head, signature=bytes(damaged)))
    for bad in changed:
        assert not verify_tree_head(public, bad), bad
    assert not verify_tree_head(b"\x01" * 31, head)  # malformed key: refused, not raised


def kept_heads(commit_sizes, keep_every_events: int) -> list[int]:
    """The head sizes stored after these commits, pruning as the writer does (services/store/recorders.py)."""
    from ledger.tree_heads import superseded_head_kept
    stored, size = [], 0
    for events in commit_sizes:
        size += events
        if stored:
            retained = stored[-2] if len(stored) > 1 else None
            if not superseded_head_kept(stored[-1], retained, keep_every_events):
                stored.pop()
        stored.append(size)
    return stored


def test_a_million_event_log_keeps_about_one_head_per_thousand_events():
    """Group commits of 1 to 256 events: the first head, one per 1,000 events and the latest stay."""
    import random
    rng = random.Random(5)
    sizes = []
    while sum(sizes) < 1_000_000:
        sizes.append(rng.randint(1, 256))
    heads = kept_heads(sizes, 1000)
    assert heads[0] == sizes[0] and heads[-1] == sum(sizes)
    assert 990 <= len(heads) <= 1002
    assert all(b // 1000 > a // 1000 for a, b in zip(heads[:-2], heads[1:-1]))  # one per multiple crossed


def test_single_event_commits_keep_the_first_and_every_nth_head():
    assert kept_heads([1] * 12, 3) == [1, 3, 6, 9, 12]
