"""Offline audit of an exported bundle: pure checks over bytes, dicts and iterables.

No file IO, no clock, no network, no storage code: services/audit/bundle.py reads the files and feeds them here.
The caller creates an :class:`Audit` from the bundle's small files, feeds every event's bytes in log order
to :meth:`Audit.feed`, then calls :meth:`Audit.finish`. Every finding names its place: ``event N``,
``tree size N``, ``anchor TXID``, ``anchor genesis``, ``header HEIGHT``, ``file NAME`` or ``account ID``.
docs/FORMATS.md ("Audit bundle") lists the checks in the order an auditor re-implements them.
"""

import dataclasses
from collections import Counter
from typing import Iterable

from ledger import merkle, monitor
from ledger import pending as pending_kinds
from ledger.anchor_policy import CONFIRMED_STATES
from ledger.anchoring import (
    HEADER_SIZE_BYTES, AnchoringError, Outpoint, display_hex, find_anchor_output, internal_from_display,
    parse_transaction, sha256d, spent_outpoints, verify_txout_proof,
)
from ledger.events import CanonicalEvent, parse_canonical_bytes
from ledger.log_rebuild import LogRebuild
from ledger.state import ReserveState, balances, cost_basis, holdings
from ledger.tree_heads import TreeHead

BUNDLE_FORMAT = "reserve-ledger/bundle/v1"
REPORT_FORMAT = "reserve-ledger/audit-report/v1"
# A canonical event is at most a few KiB (100 addresses of 100 chars, a 4 KiB descriptor); refuse anything huge.
EVENT_SIZE_MAX_BYTES = 1 << 20
FINDINGS_KEPT_MAX = 1000
APPROVALS_LISTED_MAX = 500
HOLDINGS_SAMPLES_MAX = 400
HEADERS_MAX = 250_000
TREE_HEADS_MAX = 1_000_000
ANCHORS_MAX = 100_000
SUPERSEDED_STATES = ("replaced", "abandoned")


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str    # manifest, events, tree_heads, anchors, headers, replay, controls, custody, chain, reserves
    where: str    # "event 12", "tree size 16", "anchor <txid>", "header 205", "file events.bin", "account ID"
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Findings:
    """Every failure counted; the first FINDINGS_KEPT_MAX kept with their text."""

    def __init__(self) -> None:
        self.kept: list[Finding] = []
        self.total = 0
        self.by_check: Counter = Counter()

    def add(self, check: str, where: str, message: str) -> None:
        self.total += 1
        self.by_check[check] += 1
        if len(self.kept) < FINDINGS_KEPT_MAX:
            self.kept.append(Finding(check, where, message))


# --- manifest ------------------------------------------------------------------------------------------

def check_manifest(manifest: dict, digests: dict[str, str], counts: dict[str, int], findings: Findings) -> None:
    """The format id, every listed file's SHA-256 against ``digests`` (name -> hex), and the counts."""
    if manifest.get("format") != BUNDLE_FORMAT:
        findings.add("manifest", "file manifest.json", f"format {manifest.get('format')!r} is not {BUNDLE_FORMAT}")
    listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    for name in sorted(set(listed) | set(digests)):
        expected = listed.get(name, {}).get("sha256") if isinstance(listed.get(name), dict) else None
        if name not in digests:
            findings.add("manifest", f"file {name}", "listed in the manifest but missing from the bundle")
        elif expected is None:
            findings.add("manifest", f"file {name}", "present in the bundle but not listed in the manifest")
        elif expected != digests[name]:
            findings.add("manifest", f"file {name}", f"SHA-256 is {digests[name]}, the manifest says {expected}")
    stated = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    for name, seen in sorted(counts.items()):
        if stated.get(name) != seen:
            findings.add("manifest", f"file manifest.json", f"counts.{name} is {stated.get(name)!r}, the bundle "
                                                             f"holds {seen}")


# --- the subtrees consistency proofs need -----------------------------------------------------------

class _KeyProbe:
    """A NodeReader that answers zeros and remembers which subtrees were asked for."""

    def __init__(self) -> None:
        self.keys: set[merkle.NodeKey] = set()

    def get_nodes(self, keys) -> dict[merkle.NodeKey, bytes]:
        self.keys.update(keys)
        return {key: bytes(merkle.HASH_SIZE_BYTES) for key in keys}


def consistency_keys(sizes: Iterable[int]) -> set[merkle.NodeKey]:
    """The subtrees needed to prove consistency between each pair of successive sizes."""
    probe = _KeyProbe()
    ordered = sorted(set(s for s in sizes if s > 0))
    for first, second in zip(ordered, ordered[1:]):
        merkle.consistency_proof(probe, first, second)
    return probe.keys


# --- tree heads ----------------------------------------------------------------------------------------

def tree_head_of(entry: dict) -> TreeHead:
    """A TreeHead from its bundle JSON; raises ValueError, KeyError or TypeError when malformed."""
    head = TreeHead(int(entry["tree_size"]), bytes.fromhex(entry["root_hash"]), int(entry["timestamp_us"]),
                    bytes.fromhex(entry["signature"]), str(entry["key_id"]))
    if len(head.root_hash) != merkle.HASH_SIZE_BYTES or head.tree_size < 0:
        raise ValueError("root hash must be 32 bytes and the size not negative")
    return head


def _decoded_heads(entries: list, findings: Findings) -> list[TreeHead]:
    heads: list[TreeHead] = []
    for number, entry in enumerate(entries[:TREE_HEADS_MAX]):
        try:
            heads.append(tree_head_of(entry))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            findings.add("tree_heads", f"tree head #{number}", f"malformed entry ({error})")
    if len(entries) > TREE_HEADS_MAX:
        findings.add("tree_heads", "file tree_heads.json", f"more than {TREE_HEADS_MAX} tree heads")
    sizes = [head.tree_size for head in heads]
    if sizes != sorted(set(sizes)):
        findings.add("tree_heads", "file tree_heads.json", "tree heads are not in strictly increasing size order")
    return sorted({head.tree_size: head for head in heads}.values(), key=lambda head: head.tree_size)


# --- the audit of one bundle ---------------------------------------------------------------------------

class Audit:
    """Feed it every event in log order, then ``finish``; it never raises for what it finds."""

    def __init__(self, tree_heads: list, public_key_hex: str, anchors: list, events_expected: int,
                 anchor_genesis: Outpoint | None = None) -> None:
        self.findings = Findings()
        self.anchor_genesis = anchor_genesis
        self.public_key = self._public_key(public_key_hex)
        self.heads = _decoded_heads(tree_heads, self.findings)
        self.anchors = list(anchors[:ANCHORS_MAX])
        sizes = {head.tree_size for head in self.heads} | {
            a.get("tree_size") for a in self.anchors if isinstance(a, dict) and isinstance(a.get("tree_size"), int)}
        self.rebuild = LogRebuild(sizes, consistency_keys(head.tree_size for head in self.heads))
        self.frontier = self.rebuild.frontier
        self.replayed_position = -1
        self.replay_stop: str | None = None
        self._offset = 0
        self._time_us = 0
        self._sample_every = max(1, events_expected // HOLDINGS_SAMPLES_MAX)
        self.samples: list[dict] = []
        self.controls = Controls()

    def _public_key(self, public_key_hex: str) -> bytes | None:
        try:
            key = bytes.fromhex(public_key_hex.strip())
        except (ValueError, AttributeError):
            key = b""
        if len(key) != 32:
            self.findings.add("tree_heads", "file public_key.hex", "not a 32-byte Ed25519 public key in hex")
            return None
        return key

    # --- events -----------------------------------------------------------------------------------

    @property
    def state(self) -> ReserveState | None:
        """The replayed state; None once the replay stopped at an event the fold refused."""
        return self.rebuild.state

    def feed(self, event_bytes: bytes) -> None:
        index = self.rebuild.size
        self.rebuild.append(merkle.leaf_hash(event_bytes))
        event = self._parsed(index, event_bytes)
        if event is not None:
            self._replay(index, event)

    def _parsed(self, index: int, event_bytes: bytes) -> dict | None:
        where = f"event {index}"
        if len(event_bytes) > EVENT_SIZE_MAX_BYTES:
            self.findings.add("events", where, f"{len(event_bytes)} bytes is more than any event can be")
            return None
        try:
            event = parse_canonical_bytes(event_bytes)
            position, time_us = event["position"], event["time_us"]
            if not isinstance(position, int) or not isinstance(time_us, int):
                raise ValueError("position and time_us must be integers")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            self.findings.add("events", where, f"not a canonical event ({error})")
            return None
        offset = position - index
        if offset != self._offset and offset != 0:
            self.findings.add("events", where, f"expected position {index}, the event says {position} "
                                               "(an event is missing, duplicated or moved here)")
        self._offset = offset
        if time_us < self._time_us:
            self.findings.add("events", where, f"time {time_us} us is earlier than the previous event's")
        self._time_us = max(self._time_us, time_us)
        return event

    def _replay(self, index: int, event: CanonicalEvent) -> None:
        if self.state is None:
            return
        error = self.rebuild.replay(event, lambda event, state: self.controls.observe(event, state, self.findings))
        if error is not None:
            self.findings.add("replay", f"event {index}", f"the replay refuses this event ({type(error).__name__}: "
                                                          f"{error}); the replay stops here")
            self.replay_stop = f"event {index}"
            return
        self.replayed_position = event["position"]
        if index % self._sample_every == 0:
            self.samples.append(_holdings_sample(self.state))

    # --- after the last event --------------------------------------------------------------------

    def finish(self) -> dict:
        """Tree heads, consistency and anchors against the rebuilt log; returns the facts for the report."""
        if self.state is not None and self.state.position >= 0 and (
                not self.samples or self.samples[-1]["position"] != self.state.position):
            self.samples.append(_holdings_sample(self.state))
        self._check_heads()
        self._check_consistency()
        anchor_rows = check_anchors(self.anchors, self.rebuild.roots, self.frontier.size, self.findings,
                                    self.anchor_genesis)
        return {"events": self.frontier.size, "root_hash": self.frontier.root().hex(),
                "tree_heads": [_head_row(head) for head in self.heads], "anchors": anchor_rows,
                "log_key": None if self.public_key is None else self.public_key.hex(),
                "key_rotations": [{"position": r.position, "public_key": r.public_key.hex()}
                                  for r in self.rebuild.keys.rotations]}

    def _check_heads(self) -> None:
        if self.public_key is not None:
            for position, why in self.rebuild.keys.problems(self.public_key):
                self.findings.add("tree_heads", f"event {position}", why)
        signed_size = max((head.tree_size for head in self.heads), default=0)
        if self.frontier.size > signed_size:
            self.findings.add("tree_heads", f"event {signed_size}", f"events {signed_size} to {self.frontier.size - 1}"
                                                                   " are covered by no signed tree head")
        previous_time_us = 0
        for check in self.rebuild.head_checks(self.heads, self.public_key):
            head, where = check.head, f"tree size {check.head.tree_size}"
            if check.root_matches is None:
                self.findings.add("tree_heads", where, f"the head covers more events than the bundle holds "
                                                       f"({self.frontier.size}): events were removed")
            elif not check.root_matches:
                self.findings.add("tree_heads", where, f"the signed root does not match the events (an event at a "
                                                       f"position in [{check.previous_size}, {head.tree_size}) "
                                                       "differs)")
            if check.signature_valid is False:
                self.findings.add("tree_heads", where, "the signature does not verify under the key in force at its "
                                                       "size (the bundle's first key and the rotations after it)")
            if head.timestamp_us < previous_time_us:
                self.findings.add("tree_heads", where, "signed earlier than the smaller head before it")
            previous_time_us = head.timestamp_us

    def _check_consistency(self) -> None:
        heads = [head for head in self.heads if 0 < head.tree_size <= self.frontier.size]
        for first, second in zip(heads, heads[1:]):
            try:
                proof = merkle.consistency_proof(self.frontier, first.tree_size, second.tree_size)
            except merkle.ProofError as error:
                self.findings.add("tree_heads", f"tree size {second.tree_size}", f"no consistency proof ({error})")
                continue
            if not merkle.verify_consistency(first.tree_size, second.tree_size, first.root_hash, second.root_hash,
                                             proof):
                self.findings.add("tree_heads", f"tree size {second.tree_size}",
                                  f"not consistent with the head of size {first.tree_size}")

    def views(self) -> dict:
        """Balances, holdings and cost basis of the replay (as of the last event it accepted)."""
        state = self.state
        if state is None:
            return {"as_of_position": self.replayed_position, "balances": [], "holdings": {}, "cost_basis": {},
                    "accounts": [], "replay_stopped_at": self.replay_stop}
        return {"as_of_position": state.position, "as_of_time_us": state.time_us, "balances": balances(state),
                "holdings": holdings(state), "cost_basis": _json_cost_basis(cost_basis(state, APPROVALS_LISTED_MAX)),
                "accounts": custody_accounts(state), "reserve_alerts": reserve_alerts(state),
                "replay_stopped_at": None}


def _head_row(head: TreeHead) -> dict:
    return {"tree_size": head.tree_size, "root_hash": head.root_hash.hex(), "timestamp_us": head.timestamp_us,
            "key_id": head.key_id}


def _holdings_sample(state: ReserveState) -> dict:
    view = holdings(state)
    return {"position": state.position, "time_us": state.time_us, "total_sats": view["total_sats"],
            "by_custodian": {row["custodian"]: row["balance_sats"] for row in view["custodians"]}}


def _json_cost_basis(view: dict) -> dict:
    return {"currencies": view["currencies"], "lots_total": view["lots_total"], "lots": view["lots"]}


def reserve_alerts(state: ReserveState) -> dict:
    """What the live reserves monitor recorded (ReserveDiscrepancyObserved), by status, with the alerts still open."""
    counts = {status: 0 for status in (monitor.OPEN, monitor.CLOSED, monitor.REORGED_OUT)}
    for discrepancy in state.discrepancies.values():
        counts[discrepancy.status] += 1
    open_rows = [{"discrepancy_id": d.discrepancy_id, "account_id": d.account_id, "block_height": d.block_height,
                  "block_hash": d.block_hash, "txids": list(d.txids), "movement_sats": d.movement_sats,
                  "onchain_sats": d.onchain_sats, "ledger_sats": d.ledger_sats, "finding": d.finding,
                  "position": d.position} for d in monitor.open_discrepancies(state)][:APPROVALS_LISTED_MAX]
    return {"total": len(state.discrepancies), "by_status": counts, "open": open_rows}


def custody_accounts(state: ReserveState) -> list[dict]:
    """The non-nominal accounts as the bundle's custody.json lists them (also what the exporter writes)."""
    return [{"account_id": a.account_id, "kind": a.kind, "status": a.status, "custodian": a.custodian,
             "wallet_label": a.wallet_label, "quorum": list(a.quorum), "addresses": list(a.addresses),
             "descriptor": a.descriptor, "gap_limit": a.gap_limit, "balance_sats": a.balance_sats}
            for a in sorted(state.accounts.values(), key=lambda a: a.account_id) if not a.is_nominal]


def check_custody(listed: list, replayed: list[dict], findings: Findings) -> None:
    """custody.json must say exactly what the replay of the events says."""
    by_id = {a.get("account_id"): a for a in listed if isinstance(a, dict)}
    listed_ids = Counter(a.get("account_id") for a in listed if isinstance(a, dict))
    for account_id in sorted((i for i, n in listed_ids.items() if n > 1), key=str):
        findings.add("custody", f"account {account_id}", f"listed {listed_ids[account_id]} times in custody.json")
    for account in replayed:
        entry = by_id.pop(account["account_id"], None)
        if entry is None:
            findings.add("custody", f"account {account['account_id']}", "missing from custody.json")
            continue
        for field in ("custodian", "addresses", "descriptor", "gap_limit", "balance_sats", "status"):
            default = 0 if field == "gap_limit" else None   # gap_limit: bundles written before it say nothing
            if entry.get(field, default) != account.get(field, default):
                findings.add("custody", f"account {account['account_id']}",
                             f"custody.json says {field} = {entry.get(field)!r}, the events say {account[field]!r}")
    for account_id in sorted(by_id, key=str):
        findings.add("custody", f"account {account_id}", "listed in custody.json but never opened by an event")


# --- controls evidence ---------------------------------------------------------------------------------

class Controls:
    """Every approval with its proposer and approver; a self-approval or a misattributed proposer is a finding."""

    def __init__(self) -> None:
        self.approvals: list[dict] = []
        self.approvals_total = 0
        self.by_pair: Counter = Counter()
        self.counts: Counter = Counter()

    def observe(self, event: dict, state: ReserveState, findings: Findings) -> None:
        kind = event["type"]
        self.counts[kind] += 1
        if not kind.endswith("Approved"):
            return
        data = event["data"]
        pending_id = next((data[f] for f in pending_kinds.ID_FIELDS if f in data), "")
        pending = state.pending.get(pending_id)
        proposer = pending.proposer if pending else data.get("proposer", "")
        where = f"event {event['position']}"
        if data.get("proposer") != proposer:
            findings.add("controls", where, f"the approval names proposer {data.get('proposer')!r}; the proposal "
                                            f"was made by {proposer!r}")
        if event["actor"] == proposer:
            findings.add("controls", where, f"{event['actor']} approved their own proposal {pending_id}")
        self.approvals_total += 1
        self.by_pair[(proposer, event["actor"])] += 1
        if len(self.approvals) < APPROVALS_LISTED_MAX:
            self.approvals.append({"position": event["position"], "type": kind, "pending_id": pending_id,
                                   "proposer": proposer, "approver": event["actor"],
                                   "approver_role": event["actor_role"], "time_us": event["time_us"],
                                   "amount_sats": pending.amount_sats if pending else None})

    def to_dict(self) -> dict:
        return {"approvals": self.approvals, "approvals_total": self.approvals_total,
                "by_pair": [{"proposer": p, "approver": a, "count": n} for (p, a), n in sorted(self.by_pair.items())],
                "event_counts": dict(sorted(self.counts.items()))}


# --- anchors -------------------------------------------------------------------------------------------

GENESIS_WHERE = "anchor genesis"


def check_anchors(anchors: list, roots: dict[int, bytes], events: int, findings: Findings,
                  genesis: Outpoint | None = None) -> list[dict]:
    """Each anchor's payload, transaction and merkleblock; then the chain of anchors and where it starts (the
    anchor wallet's genesis coin). Returns report rows."""
    rows, parsed = [], {}
    for number, anchor in enumerate(anchors):
        txid = str(anchor.get("txid", f"#{number}")) if isinstance(anchor, dict) else f"#{number}"
        try:
            row, tx = _check_anchor(anchor, roots, events, findings)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            findings.add("anchors", f"anchor {txid}", f"malformed entry ({type(error).__name__}: {error})")
            continue
        rows.append(row)
        parsed[row["txid"]] = tx
    _check_anchor_chain([r for r in rows if r["state"] not in SUPERSEDED_STATES], parsed, findings)
    _check_genesis(rows, parsed, genesis, findings)
    return rows


def _check_genesis(rows: list[dict], parsed: dict, genesis: Outpoint | None, findings: Findings) -> None:
    """Every anchor spends either another listed anchor's change or the genesis, and a genesis means anchors."""
    if not rows:
        return  # a genesis without anchors: the first may have been made after the snapshot; --chain decides
    if genesis is None:
        findings.add("anchors", GENESIS_WHERE, "the anchors' genesis coin is not named, but anchors are listed")
        return
    changes = {Outpoint(r["txid"], r["change_vout"]) for r in rows}
    for row in rows:
        tx = parsed.get(row["txid"])
        spent = set(spent_outpoints(tx)) if tx is not None else set()
        if tx is not None and not spent & changes and genesis not in spent:
            findings.add("anchors", f"anchor {row['txid']}", f"spends neither the anchor genesis {genesis} nor a "
                                                             "listed anchor's change: anchors before it are missing")


def _check_anchor(anchor: dict, roots: dict[int, bytes], events: int, findings: Findings):
    txid, tree_size = anchor["txid"], int(anchor["tree_size"])
    where = f"anchor {txid}"
    row = {"txid": txid, "tree_size": tree_size, "state": anchor.get("state"), "block_hash": anchor.get("block_hash"),
           "block_height": anchor.get("block_height"), "change_vout": anchor.get("change_vout"),
           "block_time_s": None, "proven_in_block": False}
    try:
        tx = parse_transaction(bytes.fromhex(anchor["raw_tx"]))
        found = find_anchor_output(tx)
    except AnchoringError as error:
        findings.add("anchors", where, f"the transaction cannot be read ({error})")
        return row, None
    if tx.txid != txid:
        findings.add("anchors", where, f"the raw transaction's txid is {tx.txid}")
    if found is None:
        findings.add("anchors", where, "the transaction carries no Reserve Ledger payload")
    else:
        _check_payload(found[1], tree_size, anchor, roots, events, where, findings)
    if anchor.get("block_hash"):
        row["proven_in_block"] = _check_inclusion(anchor, tx, where, findings)
        header = bytes.fromhex(anchor.get("block_header") or "")
        if len(header) == HEADER_SIZE_BYTES:
            row["block_time_s"] = int.from_bytes(header[68:72], "little")
    elif anchor.get("state") in CONFIRMED_STATES:
        findings.add("anchors", where, f"state {anchor.get('state')} but no block is named")
    return row, tx


def _check_payload(payload, tree_size: int, anchor: dict, roots: dict[int, bytes], events: int, where: str,
                   findings: Findings) -> None:
    if payload.tree_size != tree_size:
        findings.add("anchors", where, f"the payload commits to tree size {payload.tree_size}, not {tree_size}")
    if payload.tree_size > events:
        findings.add("anchors", where, f"the payload commits to {payload.tree_size} events; the bundle holds {events}"
                                       " (events were removed)")
    elif roots.get(payload.tree_size) not in (None, payload.root):
        findings.add("anchors", where, f"the payload's root is not the root of the first {payload.tree_size} events")
    elif payload.tree_size not in roots:
        findings.add("anchors", where, f"no rebuilt root for tree size {payload.tree_size}")
    if anchor.get("root_hash") not in (None, payload.root.hex()):
        findings.add("anchors", where, "the listed root differs from the payload's")


def _check_inclusion(anchor: dict, tx, where: str, findings: Findings) -> bool:
    proof_hex, header_hex = anchor.get("txout_proof"), anchor.get("block_header")
    if not proof_hex or not header_hex:
        findings.add("anchors", where, "confirmed but the bundle holds no merkleblock and header for its block")
        return False
    header = bytes.fromhex(header_hex)
    try:
        proof = verify_txout_proof(bytes.fromhex(proof_hex))
    except AnchoringError as error:
        findings.add("anchors", where, f"the merkleblock proves nothing ({type(error).__name__}: {error})")
        return False
    ok = True
    if proof.header != header:
        findings.add("anchors", where, "the merkleblock's header is not the listed block header")
        ok = False
    if proof.block_hash != anchor["block_hash"]:
        findings.add("anchors", where, f"the merkleblock is for block {proof.block_hash}, not {anchor['block_hash']}")
        ok = False
    if tx is not None and tx.txid_internal not in [txid for txid, _ in proof.matched]:
        findings.add("anchors", where, "the merkleblock does not contain this transaction")
        ok = False
    if not header_has_valid_work(header):
        findings.add("anchors", where, "the block header lacks valid proof of work for its bits")
        ok = False
    return ok


def _check_anchor_chain(rows: list[dict], parsed: dict, findings: Findings) -> None:
    """Each live anchor after the first spends the previous one's change, and commits to a larger log."""
    for previous, current in zip(rows, rows[1:]):
        where = f"anchor {current['txid']}"
        tx, prev_tx = parsed.get(current["txid"]), parsed.get(previous["txid"])
        if tx is None or prev_tx is None:
            continue
        change_vout = previous["change_vout"]
        found = find_anchor_output(prev_tx)
        if not isinstance(change_vout, int) or not 0 <= change_vout < len(prev_tx.outputs) or (
                found is not None and found[0] == change_vout):
            findings.add("anchors", f"anchor {previous['txid']}", f"change output {change_vout!r} is not a coin")
            continue
        spent = {(i.prev_txid_internal, i.vout) for i in tx.inputs}
        if (internal_from_display(previous["txid"]), change_vout) not in spent:
            findings.add("anchors", where, f"does not spend the change {previous['txid']}:{change_vout} of the "
                                           "anchor before it: the chain of anchors is broken")
        if current["tree_size"] <= previous["tree_size"]:
            findings.add("anchors", where, f"commits to tree size {current['tree_size']}, not more than the "
                                           f"{previous['tree_size']} before it")


# --- the chain of anchors found on chain (audit --chain) ------------------------------------------------

def check_pinned_log_key(named: str | None, pinned: bytes, findings: Findings) -> None:
    """The bundle's first tree-head key is the one the auditor pinned (--log-key); rotations are followed from it."""
    if named != pinned.hex():
        findings.add("tree_heads", "file public_key.hex", f"the bundle's first tree-head key is {named or 'missing'}, "
                                                          f"not the pinned {pinned.hex()}")


def check_pinned_genesis(named: str | None, pinned: Outpoint, findings: Findings) -> None:
    """The bundle names the genesis the auditor pinned from an earlier report; another one means the chain of
    anchors was started again from another coin (a rewritten history re-anchored)."""
    if named != str(pinned):
        findings.add("anchors", GENESIS_WHERE, f"the bundle names {named or 'no genesis'}, not the pinned {pinned}: "
                                               "its anchors start from another coin")


def payload_sizes(chain_raws: list[bytes]) -> set[int]:
    """The tree sizes the transactions' payloads commit to (those that carry one)."""
    sizes = set()
    for raw in chain_raws:
        try:
            found = find_anchor_output(parse_transaction(raw))
        except AnchoringError:
            continue
        if found is not None:
            sizes.add(found[1].tree_size)
    return sizes


def check_anchors_on_chain(chain_raws: list[bytes], rows: list[dict], roots: dict[int, bytes], events: int,
                           findings: Findings) -> list[dict]:
    """The bundle against the chain of anchor transactions the auditor's node found from the genesis: every one
    is a listed, live anchor (else it was left out, and what it commits to says why), and every anchor the
    bundle calls confirmed is one of them. ``roots`` holds the rebuilt root at each committed size the bundle
    has events for. Returns one row per transaction on chain."""
    listed = {row["txid"]: row for row in rows}
    found_rows = []
    for raw in chain_raws:
        tx = parse_transaction(raw)   # the backend parsed it to follow the chain
        where = f"anchor {tx.txid}"
        try:
            found = find_anchor_output(tx)
        except AnchoringError as error:
            found, problem = None, f" ({error})"
        else:
            problem = ""
        if found is None:
            findings.add("chain", where, "on the chain of anchors from the genesis but no anchor: it spends the "
                                         f"anchor wallet without a readable payload{problem}")
            continue
        payload, row = found[1], listed.get(tx.txid)
        found_rows.append({"txid": tx.txid, "tree_size": payload.tree_size, "in_bundle": row is not None})
        if row is None:
            findings.add("chain", where, "anchor on chain missing from the bundle: it commits to tree size "
                                         f"{payload.tree_size}{_against_bundle(payload, roots, events)}")
        elif row["state"] in SUPERSEDED_STATES:
            findings.add("chain", where, f"on chain, but the bundle says it was {row['state']}")
    on_chain = {row["txid"] for row in found_rows}
    for row in rows:
        if row["state"] in CONFIRMED_STATES and row["txid"] not in on_chain:
            findings.add("chain", f"anchor {row['txid']}", "the bundle says it is confirmed, but it is not on the "
                                                           "chain of anchor transactions from the genesis")
    return found_rows


def _against_bundle(payload, roots: dict[int, bytes], events: int) -> str:
    if payload.tree_size > events:
        return f", beyond the bundle's {events} events (the log was cut short)"
    if roots.get(payload.tree_size) != payload.root:
        return ", and its root is not the bundle's root at that size (history was rewritten)"
    return "; its root is the bundle's root at that size"


# --- block headers -------------------------------------------------------------------------------------

def target_of_bits(bits: int) -> int:
    """The compact-encoded target (Bitcoin's nBits); 0 for a negative or overflowing encoding."""
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if bits & 0x00800000 or mantissa == 0:
        return 0
    target = mantissa >> 8 * (3 - exponent) if exponent <= 3 else mantissa << 8 * (exponent - 3)
    return target if target < 1 << 256 else 0


def header_has_valid_work(header: bytes) -> bool:
    if len(header) != HEADER_SIZE_BYTES:
        return False
    target = target_of_bits(int.from_bytes(header[72:76], "little"))
    return target > 0 and int.from_bytes(sha256d(header), "little") <= target


def check_headers(start_height: int, headers_hex: list, findings: Findings) -> dict[int, str]:
    """headers.json: each links to the one before by its prev-hash and has valid work. Returns height -> hash."""
    hashes: dict[int, str] = {}
    if len(headers_hex) > HEADERS_MAX:
        findings.add("headers", "file headers.json", f"more than {HEADERS_MAX} headers")
        return hashes
    previous: bytes | None = None
    for offset, header_hex in enumerate(headers_hex):
        height = start_height + offset
        try:
            header = bytes.fromhex(header_hex)
        except (ValueError, TypeError):
            header = b""
        if len(header) != HEADER_SIZE_BYTES:
            findings.add("headers", f"header {height}", "not an 80-byte header")
            previous = None
            continue
        if previous is not None and header[4:36] != sha256d(previous):
            findings.add("headers", f"header {height}", "does not link to the header before it")
        if not header_has_valid_work(header):
            findings.add("headers", f"header {height}", "lacks valid proof of work for its bits")
        hashes[height] = display_hex(sha256d(header))
        previous = header
    return hashes


def check_anchor_blocks_in_headers(anchor_rows: list[dict], hashes: dict[int, str], findings: Findings) -> None:
    for row in anchor_rows:
        if not row["block_hash"]:
            continue
        listed = hashes.get(row["block_height"])
        if listed is None:
            findings.add("headers", f"anchor {row['txid']}", f"height {row['block_height']} is outside headers.json")
        elif listed != row["block_hash"]:
            findings.add("headers", f"anchor {row['txid']}", f"headers.json has block {listed} at height "
                                                             f"{row['block_height']}, not {row['block_hash']}")


# --- proof of reserves ---------------------------------------------------------------------------------

def check_shared_scripts(scripts_by_account: dict[str, list[bytes]], findings: Findings) -> None:
    """An output script registered by two custody accounts would let the same coins back both balances."""
    owners: dict[bytes, list[str]] = {}
    for account_id, scripts in scripts_by_account.items():
        for script in dict.fromkeys(scripts):
            owners.setdefault(script, []).append(account_id)
    for script, account_ids in owners.items():
        for account_id in account_ids if len(account_ids) > 1 else ():
            others = ", ".join(other for other in account_ids if other != account_id)
            findings.add("reserves", f"account {account_id}",
                         f"registers output script {script.hex()}, which {others} also registers: the same coins "
                         "would count for both balances")


def reconcile(accounts: list[dict], onchain: dict[str, dict], height: int, findings: Findings) -> list[dict]:
    """Compare each custody account's ledger balance with what its scripts hold on chain; one row per account.

    ``onchain[account_id]`` is ``{"sats": int | None, "note": str, "scripts_scanned": int, "funded_scripts": int}``;
    ``sats`` None means the account could not be reconciled (the note says why): a failure when it has a balance.
    """
    rows = []
    for account in accounts:
        entry = onchain.get(account["account_id"]) or {"sats": None, "note": "not reconciled: not scanned"}
        row = {"account_id": account["account_id"], "custodian": account["custodian"],
               "addresses": account["addresses"], "descriptor": account["descriptor"],
               "gap_limit": account.get("gap_limit", 0), "ledger_sats": account["balance_sats"],
               "onchain_sats": entry["sats"], "height": height, "note": entry.get("note", ""),
               "scripts_scanned": entry.get("scripts_scanned", 0), "funded_scripts": entry.get("funded_scripts", 0)}
        where = f"account {account['account_id']}"
        if entry["sats"] is None:
            row.update(status="not reconciled", difference_sats=None)
            if account["balance_sats"]:
                findings.add("reserves", where, f"ledger balance {account['balance_sats']:,} sats "
                                                f"{row['note'] or 'not reconciled: nothing to scan'}")
        else:
            difference = entry["sats"] - account["balance_sats"]
            row.update(status="match" if difference == 0 else "difference", difference_sats=difference)
            if difference:
                findings.add("reserves", where, f"on chain at height {height}: {entry['sats']:,} sats; ledger: "
                                                f"{account['balance_sats']:,} sats; difference {difference:+,d} sats")
        rows.append(row)
    return rows


def reserve_totals(rows: list[dict], accounts: list[dict]) -> dict:
    """The report's totals, each the sum of its column, so they add up line by line; and the custody total of
    the ledger, which the rows must cover (an account with a balance left out would break this)."""
    ledger_total = sum(row["ledger_sats"] for row in rows)
    custody_total = sum(account["balance_sats"] for account in accounts)
    assert ledger_total == custody_total, (ledger_total, custody_total)   # every non-zero account has a row
    reconciled = [row for row in rows if row["onchain_sats"] is not None]
    return {"ledger_total_sats": ledger_total,
            "reconciled_ledger_sats": sum(row["ledger_sats"] for row in reconciled),
            "reconciled_onchain_sats": sum(row["onchain_sats"] for row in reconciled),
            "not_reconciled_ledger_sats": sum(row["ledger_sats"] for row in rows if row["onchain_sats"] is None),
            "accounts_reconciled": len(reconciled), "accounts_not_reconciled": len(rows) - len(reconciled)}
