"""The pure checks of ledger/audit.py: the Merkle frontier against the naive reference, compact targets and
proof of work on known headers, header chains, tree heads with consistency, reserve reconciliation, and the
controls evidence naming a self-approval."""

import hashlib
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import audit, merkle
from ledger.anchoring import display_hex, sha256d
from ledger.events import canonical_bytes
from ledger.tree_heads import raw_public_key, sign_tree_head
from tests.unit.test_merkle import SIZE_MAX, leaf_inputs, ref_mth

# Bitcoin mainnet genesis block header (block 0): `bitcoin-cli getblockheader <hash> false` on any node,
# or the first 80 bytes of Satoshi's genesis block; its hash is GENESIS_HASH.
GENESIS_HEADER = bytes.fromhex(
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f617fc81bc"
    "3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c")
GENESIS_HASH = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
REGTEST_BITS = 0x207FFFFF


# --- the frontier ----------------------------------------------------------------------------------------

def test_the_frontier_root_equals_the_reference_root_for_every_size():
    inputs = leaf_inputs(SIZE_MAX)
    frontier = merkle.CompactRange()
    assert frontier.root() == ref_mth([]) == merkle.EMPTY_ROOT
    for n in range(1, SIZE_MAX + 1):
        frontier.append(merkle.leaf_hash_from_digest(inputs[n - 1]))
        assert frontier.size == n
        assert frontier.root() == ref_mth(inputs[:n]), n


def test_the_frontier_keeps_exactly_the_subtrees_that_consistency_proofs_need():
    sizes = [1, 2, 3, 7, 8, 13, 64, 65, 100, SIZE_MAX]
    inputs = leaf_inputs(SIZE_MAX)
    reference = merkle.MemoryNodeStore()
    frontier = merkle.CompactRange(audit.consistency_keys(sizes))
    for data in inputs:
        reference.append(merkle.leaf_hash_from_digest(data))
        frontier.append(merkle.leaf_hash_from_digest(data))
    assert len(frontier.nodes) < 4 * len(sizes) * SIZE_MAX.bit_length()    # not the whole tree
    for first, second in zip(sizes, sizes[1:]):
        proof = merkle.consistency_proof(frontier, first, second)
        assert proof == merkle.consistency_proof(reference, first, second), (first, second)
        assert merkle.verify_consistency(first, second, ref_mth(inputs[:first]), ref_mth(inputs[:second]), proof)


# --- compact targets and proof of work -------------------------------------------------------------------

@pytest.mark.parametrize("bits, target", [
    (0x1D00FFFF, 0x00000000FFFF0000000000000000000000000000000000000000000000000000),   # mainnet genesis, pow limit
    (0x207FFFFF, 0x7FFFFF << 8 * (0x20 - 3)),                                           # regtest pow limit
    (0x1B0404CB, 0x00000000000404CB000000000000000000000000000000000000000000000000),   # block 100,000-era example
    (0x03123456, 0x123456),                          # Bitcoin Core's arith_uint256 SetCompact vectors
    (0x02123456, 0x1234),
    (0x01123456, 0x12),
    (0x01003456, 0),                                 # the mantissa shifted out entirely
    (0x05009234, 0x92340000),
    (0x2100FFFF, 0xFFFF << 8 * (0x21 - 3)),          # the largest exponent that still fits 256 bits
    (0x1D000000, 0),                                 # zero mantissa
    (0x04923456, 0),                                 # negative (sign bit 0x00800000)
    (0x01FEDCBA, 0),                                 # negative
    (0xFF123456, 0),                                 # overflow
    (0x21010000, 0),                                 # overflow: 0x010000 << 240 == 2**256
    (0x22000100, 0),                                 # overflow: 0x0100 << 248 == 2**256
])
def test_target_of_bits_decodes_known_compact_values(bits, target):
    assert audit.target_of_bits(bits) == target


def test_the_mainnet_genesis_header_has_valid_work():
    assert display_hex(sha256d(GENESIS_HEADER)) == GENESIS_HASH
    assert audit.header_has_valid_work(GENESIS_HEADER)


def test_a_header_with_another_nonce_or_length_lacks_valid_work():
    nonce = int.from_bytes(GENESIS_HEADER[76:80], "little")
    for other in (nonce + 1, nonce - 1, nonce ^ 0x80000000):
        assert not audit.header_has_valid_work(GENESIS_HEADER[:76] + other.to_bytes(4, "little")), other
    assert not audit.header_has_valid_work(GENESIS_HEADER[:79])
    assert not audit.header_has_valid_work(GENESIS_HEADER + b"\x00")


# --- header chains ---------------------------------------------------------------------------------------

def mine_header(previous: bytes, time_s: int, bits: int = REGTEST_BITS, valid: bool = True) -> bytes:
    """An 80-byte header on top of ``previous`` whose nonce gives valid work for ``bits`` (or, if not
    ``valid``, a nonce that does not)."""
    prefix = ((0x20000000).to_bytes(4, "little") + (sha256d(previous) if previous else bytes(32)) +
              hashlib.sha256(time_s.to_bytes(4, "little")).digest() + time_s.to_bytes(4, "little") +
              bits.to_bytes(4, "little"))
    for nonce in range(1_000):
        header = prefix + nonce.to_bytes(4, "little")
        if audit.header_has_valid_work(header) == valid:
            return header
    raise AssertionError("no nonce found in 1,000 tries")


def header_chain(count: int) -> list[bytes]:
    headers: list[bytes] = []
    for n in range(count):
        headers.append(mine_header(headers[-1] if headers else b"", 1_700_000_000 + n))
    return headers


def findings_of(run) -> tuple[list[tuple[str, str, str]], object]:
    findings = audit.Findings()
    result = run(findings)
    return [(f.check, f.where, f.message) for f in findings.kept], result


def test_linked_headers_with_valid_work_pass_and_give_their_hashes_by_height():
    headers = header_chain(4)
    found, hashes = findings_of(lambda f: audit.check_headers(100, [h.hex() for h in headers], f))
    assert found == []
    assert hashes == {100 + n: display_hex(sha256d(h)) for n, h in enumerate(headers)}


def test_a_header_that_does_not_link_to_the_one_before_it_is_named():
    headers = header_chain(2)
    headers.append(mine_header(headers[0], 1_800_000_000))   # valid work, but built on header 100, not 101
    headers.append(mine_header(headers[2], 1_800_000_001))   # and the next one links to it again
    found, _ = findings_of(lambda f: audit.check_headers(100, [h.hex() for h in headers], f))
    assert found == [("headers", "header 102", "does not link to the header before it")]


def test_a_header_without_valid_work_and_a_malformed_header_are_named():
    first = mine_header(b"", 1_700_000_000)
    weak = mine_header(first, 1_700_000_001, valid=False)
    headers = [first.hex(), weak.hex(), mine_header(weak, 1_700_000_002).hex(), "00" * 79]
    found, hashes = findings_of(lambda f: audit.check_headers(7, headers, f))
    assert found == [("headers", "header 8", "lacks valid proof of work for its bits"),
                     ("headers", "header 10", "not an 80-byte header")]
    assert sorted(hashes) == [7, 8, 9]


def test_an_anchor_block_missing_from_or_different_in_the_headers_is_named():
    headers = header_chain(3)
    hashes = {50 + n: display_hex(sha256d(h)) for n, h in enumerate(headers)}
    rows = [{"txid": "aa" * 32, "block_hash": hashes[51], "block_height": 51},
            {"txid": "bb" * 32, "block_hash": hashes[51], "block_height": 52},
            {"txid": "cc" * 32, "block_hash": "dd" * 32, "block_height": 60},
            {"txid": "ee" * 32, "block_hash": None, "block_height": None}]
    found, _ = findings_of(lambda f: audit.check_anchor_blocks_in_headers(rows, hashes, f))
    assert [(check, where) for check, where, _ in found] == [("headers", f"anchor {'bb' * 32}"),
                                                              ("headers", f"anchor {'cc' * 32}")]
    assert "outside headers.json" in found[1][2]


# --- tree heads over a log -------------------------------------------------------------------------------

def event(position: int, kind: str, actor: str, role: str, data: dict) -> bytes:
    return canonical_bytes({"actor": actor, "actor_role": role, "data": data, "format_version": 1,
                            "position": position, "request_digest": "00" * 32, "request_id": f"r-{position}",
                            "time_us": 1_800_000_000_000_000 + position, "type": kind})


def opened(position: int, account_id: str) -> bytes:
    return event(position, "AccountOpened", "alice", "operator", {
        "account_id": account_id, "addresses": [], "custodian": "BNY Mellon", "descriptor": "", "kind": "cold",
        "quorum_required": 2, "quorum_total": 3, "wallet_label": account_id})


def purchased(position: int, account_id: str, quantity_sats: int) -> bytes:
    return event(position, "ReservePurchased", "alice", "operator", {
        "account_id": account_id, "counterparty": "Coinbase Prime", "currency_code": "USD",
        "fiat_total": str(Decimal(60_000) * quantity_sats / 10**8),
        "price_per_btc": "60000.00", "purchase_id": f"pu-{position}", "quantity_sats": quantity_sats,
        "trade_date": "2026-11-02", "trade_reference": f"T-{position}"})


def proposed(position: int, actor: str, debit: str, credit: str, amount_sats: int) -> bytes:
    return event(position, "TransferProposed", actor, "operator", {
        "amount_sats": amount_sats, "corrects_position": -1, "credit_account_id": credit, "debit_account_id": debit,
        "expire_time_us": 1_800_000_000_000_000 + 30 * 86_400_000_000, "memo": "", "transfer_id": f"tr-{position}"})


def approved(position: int, actor: str, transfer_id: str, proposer: str) -> bytes:
    return event(position, "TransferApproved", actor, "approver", {"proposer": proposer, "transfer_id": transfer_id})


def sample_log(count: int) -> list[bytes]:
    return [opened(0, "cold-a")] + [purchased(n, "cold-a", 1_000 + n) for n in range(1, count)]


def audited(events: list[bytes], heads: list[dict] | None = None, public_key_hex: str = "00" * 32):
    """The findings of an audit of `events`; without `heads`, under one valid head signed over all of them."""
    if heads is None:
        key = Ed25519PrivateKey.generate()
        heads, public_key_hex = [head_entry(key, events, len(events))], raw_public_key(key.public_key()).hex()
    run = audit.Audit(heads, public_key_hex, [], len(events))
    for data in events:
        run.feed(data)
    facts = run.finish()
    return [(f.check, f.where, f.message) for f in run.findings.kept], facts, run


def head_entry(key: Ed25519PrivateKey, events: list[bytes], size: int) -> dict:
    root = merkle.root_from_leaves([merkle.leaf_hash(e) for e in events[:size]])
    head = sign_tree_head(key, size, root, 1_800_000_000_000_000 + size)
    return {"tree_size": size, "root_hash": root.hex(), "timestamp_us": head.timestamp_us,
            "signature": head.signature.hex(), "key_id": head.key_id}


def test_a_log_with_several_consistent_signed_tree_heads_passes():
    key = Ed25519PrivateKey.generate()
    events = sample_log(21)
    heads = [head_entry(key, events, size) for size in (1, 5, 8, 13, 21)]
    found, facts, run = audited(events, heads, raw_public_key(key.public_key()).hex())
    assert found == []
    assert facts["events"] == 21 and [h["tree_size"] for h in facts["tree_heads"]] == [1, 5, 8, 13, 21]
    assert run.views()["balances"] and run.views()["replay_stopped_at"] is None


def test_a_validly_signed_head_over_a_different_log_is_named_by_its_size():
    key = Ed25519PrivateKey.generate()
    events = sample_log(21)
    forged_history = events[:6] + [purchased(6, "cold-a", 999_999)] + events[7:]
    heads = [head_entry(key, events, 5), head_entry(key, forged_history, 13), head_entry(key, events, 21)]
    found, _, _ = audited(events, heads, raw_public_key(key.public_key()).hex())
    assert found == [
        ("tree_heads", "tree size 13", "the signed root does not match the events (an event at a position in "
                                       "[5, 13) differs)"),
        ("tree_heads", "tree size 13", "not consistent with the head of size 5"),
        ("tree_heads", "tree size 21", "not consistent with the head of size 13")]


# --- proof of reserves -----------------------------------------------------------------------------------

def account(account_id: str, balance_sats: int) -> dict:
    return {"account_id": account_id, "custodian": "BNY Mellon", "addresses": [f"bcrt1q{account_id}"],
            "descriptor": "", "balance_sats": balance_sats}


def test_reconcile_reports_match_difference_and_names_every_account_it_cannot_reconcile():
    """An account with a balance is never left out: one not scanned, or scanned with nothing to compare, is a row
    `not reconciled` and a failure; an empty account that cannot be reconciled is a row but no failure."""
    accounts = [account("same", 500), account("more", 1_000), account("less", 2_000), account("unknown", 300),
                account("unlisted", 700), account("empty", 0)]
    onchain = {"same": {"sats": 500}, "more": {"sats": 1_250}, "less": {"sats": 1_999},
               "unknown": {"sats": None, "note": "not reconciled: no addresses or descriptor"},
               "empty": {"sats": None, "note": "not reconciled: no addresses or descriptor"}}
    found, rows = findings_of(lambda f: audit.reconcile(accounts, onchain, 812, f))
    by_id = {row["account_id"]: row for row in rows}
    assert sorted(by_id) == ["empty", "less", "more", "same", "unknown", "unlisted"]
    assert (by_id["same"]["status"], by_id["same"]["difference_sats"]) == ("match", 0)
    assert (by_id["more"]["status"], by_id["more"]["difference_sats"]) == ("difference", 250)
    assert (by_id["less"]["status"], by_id["less"]["difference_sats"]) == ("difference", -1)
    assert (by_id["unknown"]["status"], by_id["unknown"]["difference_sats"]) == ("not reconciled", None)
    assert by_id["unknown"]["note"] == "not reconciled: no addresses or descriptor"
    assert all(row["height"] == 812 for row in rows)
    assert found == [
        ("reserves", "account more", "on chain at height 812: 1,250 sats; ledger: 1,000 sats; difference +250 sats"),
        ("reserves", "account less", "on chain at height 812: 1,999 sats; ledger: 2,000 sats; difference -1 sats"),
        ("reserves", "account unknown", "ledger balance 300 sats not reconciled: no addresses or descriptor"),
        ("reserves", "account unlisted", "ledger balance 700 sats not reconciled: not scanned")]


def test_reserve_totals_add_up_line_by_line_and_cover_the_custody_total():
    """Ledger total = reconciled + not reconciled, each the sum of its rows; a row set that leaves out an account
    with a balance is a bug the totals refuse."""
    accounts = [account("same", 500), account("unknown", 300)]
    onchain = {"same": {"sats": 500}, "unknown": {"sats": None, "note": "not reconciled: no addresses or descriptor"}}
    _, rows = findings_of(lambda f: audit.reconcile(accounts, onchain, 812, f))
    totals = audit.reserve_totals(rows, accounts)
    assert totals["ledger_total_sats"] == 800 == totals["reconciled_ledger_sats"] + totals["not_reconciled_ledger_sats"]
    assert (totals["accounts_reconciled"], totals["accounts_not_reconciled"]) == (1, 1)
    with pytest.raises(AssertionError):
        audit.reserve_totals(rows[:1], accounts)


# --- controls --------------------------------------------------------------------------------------------

def funded_log() -> list[bytes]:
    return [opened(0, "cold-a"), opened(1, "warm-b"), purchased(2, "cold-a", 10_000)]


def test_an_approval_by_someone_else_is_evidence_not_a_finding():
    events = funded_log() + [proposed(3, "alice", "cold-a", "warm-b", 4_000), approved(4, "bob", "tr-3", "alice")]
    found, _, run = audited(events)
    assert found == []
    controls = run.controls.to_dict()
    assert controls["approvals_total"] == 1
    assert controls["approvals"][0] == {
        "position": 4, "type": "TransferApproved", "pending_id": "tr-3", "proposer": "alice", "approver": "bob",
        "approver_role": "approver", "time_us": 1_800_000_000_000_004, "amount_sats": 4_000}
    assert controls["by_pair"] == [{"proposer": "alice", "approver": "bob", "count": 1}]


def test_a_self_approval_is_named_by_its_event():
    events = funded_log() + [proposed(3, "alice", "cold-a", "warm-b", 4_000), approved(4, "alice", "tr-3", "alice")]
    found, _, _ = audited(events)
    assert found[0] == ("controls", "event 4", "alice approved their own proposal tr-3")
    assert found[1][:2] == ("replay", "event 4") and "position 4: APPROVER_MUST_DIFFER_FROM_PROPOSER" in found[1][2]
    assert len(found) == 2


def test_an_approval_that_misnames_the_proposer_is_named_and_still_caught_as_a_self_approval():
    """Writing another proposer into the approval does not hide that the proposer approved it."""
    events = funded_log() + [proposed(3, "alice", "cold-a", "warm-b", 4_000), approved(4, "alice", "tr-3", "oscar")]
    found, _, _ = audited(events)
    assert found[:2] == [
        ("controls", "event 4", "the approval names proposer 'oscar'; the proposal was made by 'alice'"),
        ("controls", "event 4", "alice approved their own proposal tr-3")]
    assert found[2][:2] == ("replay", "event 4") and "APPROVER_MUST_DIFFER_FROM_PROPOSER" in found[2][2]


def test_a_script_registered_by_two_accounts_is_named_for_both():
    findings = audit.Findings()
    shared, own = b"\x00\x14" + b"\x01" * 20, b"\x00\x14" + b"\x02" * 20
    audit.check_shared_scripts({"vault-a": [shared], "vault-b": [own, shared], "vault-c": [own]}, findings)
    named = sorted((f.where, f.message.split(", which ")[1].split(" also")[0]) for f in findings.kept)
    assert named == [("account vault-a", "vault-b"), ("account vault-b", "vault-a"), ("account vault-b", "vault-c"),
                     ("account vault-c", "vault-b")]
    assert {f.check for f in findings.kept} == {"reserves"}
    alone = audit.Findings()
    audit.check_shared_scripts({"vault-a": [shared, shared], "vault-b": [own]}, alone)
    assert alone.total == 0


def test_events_after_the_last_signed_tree_head_are_named():
    """An unsigned tail would let fabricated events into the audited balances."""
    key = Ed25519PrivateKey.generate()
    events = funded_log()
    found, _, _ = audited(events, [head_entry(key, events, 2)], raw_public_key(key.public_key()).hex())
    assert found == [("tree_heads", "event 2", "events 2 to 2 are covered by no signed tree head")]
    found, _, _ = audited(events, [], raw_public_key(key.public_key()).hex())
    assert found == [("tree_heads", "event 0", "events 0 to 2 are covered by no signed tree head")]


def test_an_account_listed_twice_in_custody_json_is_named():
    replayed = [{"account_id": "vault-a", "custodian": "C", "addresses": ["a"], "descriptor": "", "balance_sats": 5,
                 "status": "open"}]
    findings = audit.Findings()
    audit.check_custody([dict(replayed[0]), {**replayed[0], "balance_sats": 999}], replayed, findings)
    assert [(f.where, f.message) for f in findings.kept][0] == ("account vault-a", "listed 2 times in custody.json")
    clean = audit.Findings()
    audit.check_custody([dict(replayed[0])], replayed, clean)
    assert clean.total == 0
