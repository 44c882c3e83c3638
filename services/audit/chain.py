"""`reserve-ledger audit --chain SPEC`: what only the auditor's own Bitcoin node can say.

  1. each confirmed anchor's block is the best-chain block at its height (with its confirmations);
  2. the anchors are found on chain, not in the bundle: from the anchor genesis (pinned by the auditor, else the
     bundle's) the node follows the chain of anchor transactions to the output unspent now; every one of them
     must be a live anchor of the bundle (a removed anchor, a cut-short log or a rewritten history each leave
     one out), and every anchor the bundle calls confirmed must be one of them. Without any genesis, only the
     last listed anchor's change is checked to be unspent;
  3. proof of reserves: each custody account's ledger balance against the confirmed coins paying its
     registered addresses and its descriptor's scripts (ranged ones expanded with the account's gap limit, on
     the receive and change branches) at a stated height; an account with a balance and nothing to scan is named.
The comparisons themselves are pure (ledger/audit.py); this module only asks the backend.
"""

import pathlib

from ledger import audit, merkle
from ledger.anchoring import AnchoringError, ChainBackend, Outpoint, parse_transaction
from ledger.log_rebuild import LogRebuild
from services.audit import bundle
from services.reserves.scan import scan_account

SNAPSHOT_ATTEMPTS_MAX = 3


def check_best_chain(anchor_rows: list[dict], anchors_json: list, backend: ChainBackend,
                     findings: audit.Findings, last_change_unspent: bool = True) -> dict:
    tip = backend.tip_height()
    for row in anchor_rows:
        if not row["block_hash"]:
            continue
        where = f"anchor {row['txid']}"
        try:
            best = backend.block_hash(row["block_height"]) if row["block_height"] <= tip else None
        except LookupError:
            best = None
        if best == row["block_hash"]:
            row["confirmations"] = tip - row["block_height"] + 1
        else:
            row["confirmations"] = 0
            findings.add("chain", where, f"block {row['block_hash']} is not the best-chain block at height "
                                         f"{row['block_height']} (the node has {best})")
    if last_change_unspent:
        _check_last_change_unspent(anchor_rows, anchors_json, backend, findings)
    return {"tip_height": tip, "tip_hash": backend.block_hash(tip)}


def check_anchor_chain(directory: pathlib.Path, facts: dict, backend: ChainBackend, genesis: Outpoint | None,
                       findings: audit.Findings) -> dict:
    """The chain of anchor transactions on chain from `genesis`, against the bundle's anchors (see above)."""
    if genesis is None:
        return {"genesis": None, "anchors": None,
                "note": "no anchor genesis (none in the bundle, none pinned): the anchors on chain were not looked "
                        "for; pin the genesis of an earlier report with --anchor-genesis TXID:VOUT"}
    try:
        raws = backend.anchor_chain(genesis, _change_scripts(directory))
    except LookupError as error:
        findings.add("chain", audit.GENESIS_WHERE, f"the node does not know the genesis {genesis} ({error}); a "
                                                   "Bitcoin Core node needs -txindex to look transactions up")
        return {"genesis": str(genesis), "anchors": None, "note": "not followed"}
    except AnchoringError as error:
        findings.add("chain", audit.GENESIS_WHERE, f"the chain of anchors from {genesis} cannot be followed: {error}")
        return {"genesis": str(genesis), "anchors": None, "note": "not followed"}
    listed = {row["txid"] for row in facts["anchors"]}
    left_out = [raw for raw in raws if parse_transaction(raw).txid not in listed]
    sizes = {size for size in audit.payload_sizes(left_out) if size <= facts["events"]}
    rows = audit.check_anchors_on_chain(raws, facts["anchors"], _roots_at(directory, sizes) if sizes else {},
                                        facts["events"], findings)
    return {"genesis": str(genesis), "anchors": rows, "note": ""}


def _change_scripts(directory: pathlib.Path) -> list[bytes]:
    """The scripts the bundle's anchors pay their change to: where the chain of anchors may have moved (wallet
    rotations). A backend that walks backward from unspent coins needs them; a hidden later move still breaks
    the walk (a finding)."""
    scripts, anchors = [], bundle.read_json(directory, bundle.ANCHORS, default=[])
    for anchor in anchors if isinstance(anchors, list) else []:
        try:
            scripts.append(parse_transaction(bytes.fromhex(anchor["raw_tx"])).outputs[anchor["change_vout"]]
                           .script_pubkey)
        except (AnchoringError, ValueError, TypeError, KeyError, IndexError):
            continue  # already a finding of the offline checks
    return list(dict.fromkeys(scripts))


def _roots_at(directory: pathlib.Path, sizes: set[int]) -> dict[int, bytes]:
    """The bundle's roots at these sizes: a second pass over events.bin, needed only for anchors it left out."""
    rebuild = LogRebuild(sizes)
    try:
        for event_bytes in bundle.iter_events(directory / bundle.EVENTS):
            rebuild.append(merkle.leaf_hash(event_bytes))
    except bundle.BundleInvalid:
        pass  # already a finding of the offline checks; the roots up to the break stand
    return rebuild.roots


def _check_last_change_unspent(anchor_rows: list[dict], anchors_json: list, backend: ChainBackend,
                               findings: audit.Findings) -> None:
    live = [r for r in anchor_rows if r["state"] not in audit.SUPERSEDED_STATES and r["block_hash"]]
    if not live:
        return
    last = live[-1]
    raw = next((a.get("raw_tx") for a in anchors_json if isinstance(a, dict) and a.get("txid") == last["txid"]), None)
    try:
        change = parse_transaction(bytes.fromhex(raw)).outputs[last["change_vout"]]
    except (ValueError, TypeError, IndexError):
        return  # already a finding of the offline checks
    coins = backend.utxos(change.script_pubkey)
    if not any(c.txid == last["txid"] and c.vout == last["change_vout"] for c in coins):
        findings.add("chain", f"anchor {last['txid']}", "its change output is spent on chain: a later anchor "
                                                        "exists that the bundle does not hold (or the fee wallet "
                                                        "was spent otherwise)")


def reconcile_reserves(accounts: list[dict], backend: ChainBackend, findings: audit.Findings) -> dict:
    """On-chain balances at one height for every custody account that has a balance or registered scripts (an
    account with a balance and nothing to scan is named, never left out): re-read when the tip moved (bounded)."""
    listed = [a for a in accounts if a["balance_sats"] or a["addresses"] or a["descriptor"]]
    for _ in range(SNAPSHOT_ATTEMPTS_MAX):
        height = backend.tip_height()
        scans = {a["account_id"]: scan_account(a, backend) for a in listed}
        if backend.tip_height() == height:
            break
    else:
        findings.add("reserves", "chain", f"the tip kept moving; balances read around height {height}")
    audit.check_shared_scripts({i: [s.script_pubkey for s in scan.scripts] for i, scan in scans.items()}, findings)
    rows = audit.reconcile(listed, {i: _onchain(scan) for i, scan in scans.items()}, height, findings)
    distinct_coins = {(c.txid, c.vout): c.value_sats for scan in scans.values() for coins in scan.coins.values()
                      for c in coins}
    return {"height": height, "block_hash": backend.block_hash(height), "accounts": rows,
            **audit.reserve_totals(rows, accounts), "scripts_scanned_total": sum(r["scripts_scanned"] for r in rows),
            "onchain_total_sats": sum(distinct_coins.values()),   # a coin at a shared script counts once
            "scans": scans}


def _onchain(scan) -> dict:
    """The pure side's view of one scan (ledger/audit.py reconcile)."""
    return {"sats": scan.sats if scan.reconcilable else None, "note": "; ".join(scan.notes),
            "scripts_scanned": len(scan.scripts), "funded_scripts": len(scan.funded_scripts())}
