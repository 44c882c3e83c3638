"""The witnesses' part of an audit: checkpoints.json in the bundle (docs/FORMATS-audit.md), checked offline.

Every checkpoint note must carry the log's valid signature (the bundle's public key, named by the note's
origin) and commit to the root of the bundle's signed head of the same size. With `audit --witness NAME=VKEY
--witness-quorum K`, the last head and every confirmed anchor's head must carry K valid cosignatures from the
listed witnesses: a history rewritten with the log's key lacks them, because each witness refuses to cosign
anything that is not an append-only extension of what it cosigned before.
"""

import datetime
import pathlib

from ledger.anchor_policy import CONFIRMED_STATES
from ledger.audit import Findings
from services.witness import note
from services.witness.gatherer import WitnessEndpoint

CHECKPOINTS = "checkpoints.json"


def bundle_checkpoints(directory: pathlib.Path) -> dict:
    from services.audit.bundle import read_json
    value = read_json(directory, CHECKPOINTS, default={"vkey": None, "checkpoints": []}) \
        if (directory / CHECKPOINTS).exists() else {"vkey": None, "checkpoints": []}
    return value if isinstance(value, dict) else {"vkey": None, "checkpoints": []}


def check_witnesses(directory: pathlib.Path, facts: dict, witnesses: list[WitnessEndpoint], quorum: int) -> dict:
    """Adds findings (check "witnesses") and returns what the report shows: who cosigned which size, when."""
    findings: Findings = facts["findings"]
    public_key_raw = _public_key(facts)
    roots = {h["tree_size"]: h["root_hash"] for h in facts["tree_heads"]}
    roots.update(_anchor_roots(directory, facts, roots))
    entries = bundle_checkpoints(directory)
    rows, by_size = [], {}
    for entry in entries.get("checkpoints") or []:
        size, cosigners = _check_entry(entry, public_key_raw, roots, witnesses, findings)
        if size is not None:
            by_size[size] = cosigners
            rows.append({"tree_size": size, "cosigners": cosigners})
    required = _required_sizes(facts)
    if witnesses:
        for size, why in required:
            found = by_size.get(size, [])
            if len(found) < quorum:
                findings.add("witnesses", f"tree size {size}", f"{why} carries {len(found)} valid cosignature(s) "
                             f"from the listed witnesses; the quorum is {quorum}")
    return {"vkey": entries.get("vkey"), "quorum": quorum if witnesses else None,
            "witnesses": [w.vkey.text() for w in witnesses], "checkpoints": rows,
            "required": [{"tree_size": s, "why": why} for s, why in required]}


def _anchor_roots(directory: pathlib.Path, facts: dict, head_roots: dict) -> dict:
    """The roots anchors commit to (the anchors check compares each with the rebuilt log): an anchored head
    may have been pruned from tree_heads.json once superseded, its checkpoint still names it."""
    from services.audit.bundle import read_json
    anchors = read_json(directory, "anchors.json")
    failed = {f.where for f in facts["findings"].kept if f.check == "anchors"}
    return {a["tree_size"]: a["root_hash"] for a in anchors if isinstance(a, dict)
            and isinstance(a.get("tree_size"), int) and f"anchor {a.get('txid')}" not in failed
            and a["tree_size"] not in head_roots and isinstance(a.get("root_hash"), str)}


def _public_key(facts: dict) -> bytes | None:
    try:
        raw = bytes.fromhex(facts.get("public_key_hex", "").strip())
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def _required_sizes(facts: dict) -> list[tuple[int, str]]:
    heads = sorted(h["tree_size"] for h in facts["tree_heads"])
    required = {heads[-1]: "the last signed tree head"} if heads else {}
    for anchor in facts["anchors"]:
        if anchor.get("state") in CONFIRMED_STATES and isinstance(anchor.get("tree_size"), int):
            required.setdefault(anchor["tree_size"], f"the head anchored by {anchor['txid']}")
    return sorted(required.items())


def _check_entry(entry, public_key_raw: bytes | None, roots: dict, witnesses: list[WitnessEndpoint],
                 findings: Findings) -> tuple[int | None, list[dict]]:
    where = f"checkpoint {entry.get('tree_size') if isinstance(entry, dict) else '?'}"
    try:
        signed = note.parse_note(str(entry["note"]).encode())
        made = note.parse_checkpoint(signed.text)
        if public_key_raw is None:
            raise note.NoteInvalid("the bundle's public key is unreadable")
        note.open_note(str(entry["note"]).encode(), note.verifier_key(made.origin, note.ALG_ED25519, public_key_raw))
    except (note.NoteInvalid, KeyError, TypeError) as invalid:
        findings.add("witnesses", where, f"not a checkpoint signed with the log's key: {invalid}")
        return None, []
    if roots.get(made.tree_size) != made.root_hash.hex():
        head_failed = any(f.check == "tree_heads" and f.where == f"tree size {made.tree_size}" for f in findings.kept)
        if not head_failed:  # a head that failed its own check is named there; its checkpoint just does not count
            findings.add("witnesses", where, f"its root is not the root of the bundle's signed head of size "
                                             f"{made.tree_size}")
        return None, []
    return made.tree_size, _cosigners(signed, witnesses)


def _cosigners(signed: note.Note, witnesses: list[WitnessEndpoint]) -> list[dict]:
    found = []
    for witness in witnesses:
        times = [t for t in (note.cosignature_time_s(signed.text, s, witness.vkey)
                             for s in note.matching(signed, witness.vkey)) if t is not None]
        if times:
            found.append({"witness": witness.name, "timestamp_s": max(times),
                          "time": datetime.datetime.fromtimestamp(max(times), datetime.UTC).isoformat()})
    return found
