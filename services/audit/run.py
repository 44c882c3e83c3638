"""One audit of a bundle directory: the offline checks, then (with the auditor's node) the chain's; and its printout."""

import pathlib
from typing import Callable

from ledger import audit
from ledger.anchoring import Outpoint
from services.audit import bundle
from services.audit import chain as audit_chain

FINDINGS_PRINTED_MAX = 50


def audit_directory(directory: pathlib.Path, backend=None, chain_label: str | None = None,
                    progress: Callable[[int], None] = lambda n: None, anchor_genesis: Outpoint | None = None,
                    log_key: bytes | None = None) -> dict:
    """The facts of one bundle: the offline checks, then, with a backend (the auditor's node), the chain's.
    `anchor_genesis` is the auditor's pin (from an earlier report): the bundle must name it, and the chain of
    anchors is followed from it rather than from the bundle's. `log_key` is the log's first tree-head key the
    auditor pins: the bundle's must be it (its key rotations are then followed from it)."""
    facts = bundle.audit_bundle(directory, progress)
    if log_key is not None:
        audit.check_pinned_log_key(facts["log_key"], log_key, facts["findings"])
    facts["anchor_genesis_pinned"] = None if anchor_genesis is None else str(anchor_genesis)
    if anchor_genesis is not None:
        audit.check_pinned_genesis(facts["anchor_genesis"], anchor_genesis, facts["findings"])
    if backend is not None:
        facts.update(_chain_checks(backend, chain_label, directory, facts, anchor_genesis))
    return facts


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
    reserves = None
    if facts["replay_stopped_at"] is None:
        reserves = audit_chain.reconcile_reserves(facts["accounts"], backend, facts["findings"])
    return {"chain": {"spec": chain_label, **chain}, "reserves": reserves}


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
                  f"{reserves['height']}: {row['status']}{difference}{' (' + row['note'] + ')' if row['note'] else ''}")
    for anchor in result["anchors"]:
        if anchor.get("confirmations") is not None:
            print(f"anchor {anchor['txid']}: tree size {anchor['tree_size']}, block {anchor['block_height']}, "
                  f"{anchor['confirmations']} confirmations on the best chain")
    followed = (result.get("chain") or {}).get("anchor_chain") or {}
    if followed.get("anchors") is not None:
        print(f"anchors on chain from the genesis {followed['genesis']}: {len(followed['anchors'])}")
    elif followed.get("note"):
        print(f"anchors on chain: {followed['note']}")
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
