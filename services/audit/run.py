"""One audit of a bundle directory: the offline checks, then (with the auditor's node) the chain's; and its printout."""

import pathlib
from typing import Callable

from ledger import audit
from ledger.anchoring import Outpoint
from services.audit import bundle
from services.audit import chain as audit_chain
from services.audit.witnesses import check_witnesses
from services.reserves.challenge import CHALLENGE_FILE, SIGNATURES_DIR, funded_rows
from services.reserves.control import ChallengeInvalid, prove_control, read_challenge, read_signatures

FINDINGS_PRINTED_MAX = 50


def audit_directory(directory: pathlib.Path, backend=None, chain_label: str | None = None,
                    progress: Callable[[int], None] = lambda n: None, anchor_genesis: Outpoint | None = None,
                    witnesses: tuple = (), witness_quorum: int = 0,
                    control_proofs: pathlib.Path | None = None, log_key: bytes | None = None) -> dict:
    """The facts of one bundle: the offline checks, then, with a backend (the auditor's node), the chain's.
    `anchor_genesis` is the auditor's pin (from an earlier report): the bundle must name it, and the chain of
    anchors is followed from it rather than from the bundle's. `log_key` is the log's first tree-head key the
    auditor pins: the bundle's must be it (its key rotations are then followed from it)."""
    facts = bundle.audit_bundle(directory, progress)
    facts["public_key_hex"] = bundle.read_small_files(directory)["public_key_hex"]
    facts["witnessing"] = check_witnesses(directory, facts, list(witnesses), witness_quorum)
    if log_key is not None:
        audit.check_pinned_log_key(facts["log_key"], log_key, facts["findings"])
    facts["anchor_genesis_pinned"] = None if anchor_genesis is None else str(anchor_genesis)
    if anchor_genesis is not None:
        audit.check_pinned_genesis(facts["anchor_genesis"], anchor_genesis, facts["findings"])
    if backend is not None:
        facts.update(_chain_checks(backend, chain_label, directory, facts, anchor_genesis))
    if control_proofs is not None:
        facts["control_proofs"] = check_control_proofs(control_proofs, facts)
    return facts


def check_control_proofs(directory: pathlib.Path, facts: dict) -> dict | None:
    """DIR/challenge.json and DIR/signatures/ (docs/FORMATS-audit.md §6): the challenge must refer to one of the
    bundle's signed tree heads; every funded script (the audit's own scan with --chain, else the challenge's list)
    needs a valid BIP-322 signature, run through libbitcoinkernel. Each one without is a `key_control` failure."""
    findings = facts["findings"]
    try:
        challenge = read_challenge(directory / CHALLENGE_FILE)
    except ChallengeInvalid as error:
        findings.add("key_control", f"file {CHALLENGE_FILE}", str(error))
        return None
    heads = {row["tree_size"]: row["root_hash"] for row in facts["tree_heads"]}
    if heads.get(challenge["tree_size"]) != challenge["root_hash"]:
        findings.add("key_control", "challenge", f"refers to tree size {challenge['tree_size']} with root "
                                                 f"{str(challenge['root_hash'])[:16]}…, not a signed head of this "
                                                 "bundle")
    scans = facts.get("reserve_scans")
    network = challenge.get("network", "regtest")
    funded = None if scans is None else {i: funded_rows(scan, network) for i, scan in scans.items()}
    report = prove_control(challenge, read_signatures(directory / SIGNATURES_DIR), funded)
    report["coins_read_at_height"] = facts["reserves"]["height"] if scans is not None else challenge["height"]
    for account in report["accounts"]:
        for script in account["scripts"]:
            if script["status"] != "proven":
                findings.add("key_control", f"account {account['account_id']}",
                             f"{script['sats']:,} sats at {script['source'] or script['script_pubkey']}: control not "
                             f"proven ({script['status']}: {script['reason']})")
    return report


def bundle_event_count(directory: pathlib.Path) -> int | None:
    """The manifest's event count, for a progress bar (None when the manifest does not say)."""
    total = bundle.read_small_files(directory)["manifest"].get("counts", {}).get("events")
    return total if isinstance(total, int) else None


def _chain_checks(backend, chain_label: str | None, directory: pathlib.Path, facts: dict,
                  pinned: Outpoint | None) -> dict:
    anchors_json = bundle.read_json(directory, bundle.ANCHORS)
    genesis = pinned or bundle.anchor_genesis_of(bundle.read_json(directory, bundle.ANCHOR_GENESIS))[0]
    chain = audit_chain.check_best_chain(facts["anchors"], anchors_json, backend, facts["findings"],
                                         last_change_unspent=genesis is None)
    chain["anchor_chain"] = audit_chain.check_anchor_chain(directory, facts, backend, genesis, facts["findings"])
    reserves, scans = None, None
    if facts["replay_stopped_at"] is None:
        reserves = audit_chain.reconcile_reserves(facts["accounts"], backend, facts["findings"])
        scans = reserves.pop("scans")   # the scripts and coins found, for the control proofs; not in the report
    return {"chain": {"spec": chain_label, **chain}, "reserves": reserves, "reserve_scans": scans}


def print_result(result: dict) -> None:
    """One `FAIL <check> <where>: <what>` line per failure (the first FINDINGS_PRINTED_MAX), then the summary."""
    for finding in result["failures"][:FINDINGS_PRINTED_MAX]:
        print(f"FAIL {finding['check']} {finding['where']}: {finding['message']}")
    if result["failures_total"] > FINDINGS_PRINTED_MAX:
        print(f"... and {result['failures_total'] - FINDINGS_PRINTED_MAX} more (see the report)")
    _print_summary(result)


def _print_summary(result: dict) -> None:
    reserves = result.get("reserves")
    if reserves:
        for row in reserves["accounts"]:
            difference = "" if not row["difference_sats"] else f" {row['difference_sats']:+,d} sats"
            print(f"reserves {row['account_id']}: ledger {row['ledger_sats']:,} sats, on chain "
                  f"{'-' if row['onchain_sats'] is None else format(row['onchain_sats'], ',')} sats at height "
                  f"{reserves['height']} ({row['scripts_scanned']} scripts scanned): {row['status']}{difference}"
                  f"{' (' + row['note'] + ')' if row['note'] else ''}")
        print(f"reserves total: ledger {reserves['ledger_total_sats']:,} sats = reconciled "
              f"{reserves['reconciled_ledger_sats']:,} + not reconciled {reserves['not_reconciled_ledger_sats']:,}; "
              f"on chain {reserves['onchain_total_sats']:,} sats; {len(reserves['accounts'])} accounts, "
              f"{reserves['scripts_scanned_total']:,} scripts scanned")
    control = result.get("control_proofs")
    if control:
        print(f"control proven for {control['proven_sats']:,} of {control['funded_sats']:,} sats (BIP-322, checked by "
              f"libbitcoinkernel) at height {control['coins_read_at_height']}")
    for anchor in result["anchors"]:
        if anchor.get("confirmations") is not None:
            print(f"anchor {anchor['txid']}: tree size {anchor['tree_size']}, block {anchor['block_height']}, "
                  f"{anchor['confirmations']} confirmations on the best chain")
    alerts = result.get("reserve_alerts")
    if reserves and alerts and alerts["total"]:  # with the proof of reserves (offline, the report lists them)
        counts = alerts["by_status"]
        print(f"reserve alerts (live monitor): {alerts['total']} recorded, {counts['open']} open, {counts['closed']} "
              f"closed, {counts['reorged-out']} reorged out" + "".join(
                  f"; open {a['discrepancy_id']} {a['account_id']} {a['movement_sats']:+,d} sats at height "
                  f"{a['block_height']}" for a in alerts["open"][:FINDINGS_PRINTED_MAX]))
    followed = (result.get("chain") or {}).get("anchor_chain") or {}
    if followed.get("anchors") is not None:
        print(f"anchors on chain from the genesis {followed['genesis']}: {len(followed['anchors'])}")
    elif followed.get("note"):
        print(f"anchors on chain: {followed['note']}")
    witnessing = result.get("witnessing") or {}
    if witnessing.get("witnesses"):
        cosigned = {c["tree_size"]: len(c["cosigners"]) for c in witnessing["checkpoints"]}
        for row in witnessing["required"]:
            print(f"witnesses {row['why']} (size {row['tree_size']}): {cosigned.get(row['tree_size'], 0)} valid "
                  f"cosignature(s), quorum {witnessing['quorum']}")
    summary = (f"{result['events']} events, {len(result['tree_heads'])} signed tree heads, "
               f"{len(result['anchors'])} anchors, replay to position {result['as_of_position']}")
    if result.get("anchor_genesis"):
        summary += f"; anchor genesis {result['anchor_genesis']} (pin it in later audits with --anchor-genesis)"
    if result.get("log_key"):
        summary += (f"; first tree-head key {result['log_key']} with {len(result.get('key_rotations') or [])} "
                    "rotation(s) (pin it with --log-key)")
    if result["verdict"] == "PASS":
        print(f"OK: {summary}")
    else:
        print(f"FAIL: {result['failures_total']} failure(s); {summary}")
