"""The audit report: one self-contained HTML file (inline SVG charts, no network) and its JSON twin.

The JSON holds every fact the HTML shows; the HTML is for a board member: the verdict first, then
holdings over time, per custodian, cost basis, anchors, reserves on chain, controls, and every failure.
Rendering is deterministic (no clock, fixed SVG ids), so the same audit writes the same files.
"""

import html
import io
import json
import pathlib
from datetime import datetime, timezone

from ledger.audit import REPORT_FORMAT
from ledger.limits import GAP_LIMIT_DEFAULT, SATS_PER_BTC

CHECKS = (
    ("manifest", "Manifest: format, SHA-256 of every file, counts"),
    ("events", "Every event re-parsed in canonical form; positions dense from 0; time never decreases"),
    ("tree_heads", "Every signed tree head: root = rebuilt root, Ed25519 signature, consistency with the previous"),
    ("anchors", "Every anchor: payload commits to the rebuilt root; transaction in its block (merkleblock); "
                "header proof of work; each anchor spends the previous one's change"),
    ("headers", "Block headers link by previous hash with valid proof of work; anchor blocks are among them"),
    ("replay", "Replay of every event into balances, holdings and cost basis"),
    ("controls", "Every approval made by someone other than its proposer"),
    ("custody", "custody.json equals the custody accounts of the replay"),
    ("chain", "Anchor blocks on the auditor's best chain; every anchor on chain from the genesis is in the bundle"),
    ("reserves", "Ledger balance of each custody account = confirmed coins at its addresses and derived descriptor "
                 "scripts; an account with a balance and nothing to scan fails"),
    ("witnesses", "Checkpoints signed with the log's key commit to the signed heads; with --witness, the last head "
                  "and every confirmed anchor's head carry the quorum of witness cosignatures"),
    ("key_control", "Every funded script answered the auditor's challenge with a BIP-322 signature that Bitcoin "
                    "Core's interpreter (libbitcoinkernel) accepts"),
)
FAILURES_SHOWN_MAX = 1000
LONG_CELL_CHARS = 40
DESCRIPTOR_SHOWN_MAX = 60


def audit_result(facts: dict) -> dict:
    """The JSON twin: plain data, verdict first."""
    findings = facts["findings"]
    ran = {"manifest", "events", "tree_heads", "anchors", "replay", "controls", "custody"}
    ran |= {"headers"} if facts.get("headers") else set()
    ran |= {"chain", "reserves"} if facts.get("chain") else set()
    ran |= {"witnesses"} if (facts.get("witnessing") or {}).get("checkpoints") or (
        facts.get("witnessing") or {}).get("witnesses") else set()
    ran |= {"key_control"} if "control_proofs" in facts else set()
    checks = [{"check": name, "description": text, "failures": findings.by_check.get(name, 0),
               "status": "skipped" if name not in ran else ("fail" if findings.by_check.get(name) else "pass")}
              for name, text in CHECKS]
    return {"format": REPORT_FORMAT, "verdict": "PASS" if findings.total == 0 else "FAIL",
            "failures_total": findings.total, "checks": checks, "failures": [f.to_dict() for f in findings.kept],
            "events": facts["events"], "root_hash": facts["root_hash"], "counts": facts["counts"],
            "as_of_position": facts["as_of_position"], "as_of_time_us": facts.get("as_of_time_us"),
            "replay_stopped_at": facts["replay_stopped_at"], "tree_heads": facts["tree_heads"],
            "anchors": facts["anchors"], "anchor_genesis": facts.get("anchor_genesis"),
            "anchor_genesis_pinned": facts.get("anchor_genesis_pinned"),
            "log_key": facts.get("log_key"), "key_rotations": facts.get("key_rotations", []),
            "headers": facts.get("headers"), "chain": facts.get("chain"),
            "reserves": facts.get("reserves"), "balances": facts["balances"], "holdings": facts["holdings"],
            "cost_basis": facts["cost_basis"], "custody_accounts": facts["accounts"],
            "holdings_over_time": facts["holdings_over_time"], "controls": facts["controls"],
            "reserve_alerts": facts.get("reserve_alerts"),
            "witnessing": facts.get("witnessing"),
            "control_proofs": facts.get("control_proofs")}


def write_report(result: dict, html_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    json_path = html_path.with_suffix(".json")
    json_path.write_text(json.dumps(result, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    html_path.write_text(render_html(result))
    return html_path, json_path


# --- formatting ------------------------------------------------------------------------------------------

def btc(sats: int | None) -> str:
    """Exact BTC from satoshis (no floats for money)."""
    if sats is None:
        return "—"
    sign = "-" if sats < 0 else ""
    whole, fraction = divmod(abs(sats), SATS_PER_BTC)
    return f"{sign}{whole:,}.{fraction:08d}"


def utc(time_us: int | None) -> str:
    if time_us is None:
        return "—"
    return datetime.fromtimestamp(time_us / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class='{_cell_class(i in numeric, c)}'>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell_class(numeric: bool, value) -> str:
    """'num' right-aligns; 'long' lets a txid, hash or address wrap instead of widening the page."""
    text = "" if value is None else str(value)
    return "num" if numeric else ("long" if len(text) > LONG_CELL_CHARS and " " not in text else "")


# --- charts (matplotlib, Agg, inline SVG) ------------------------------------------------------------------

def _svg(figure) -> str:
    import matplotlib.pyplot as plt
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(width_in: float = 9.0, height_in: float = 3.6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "reserve-ledger-report"
    plt.rcParams["svg.fonttype"] = "path"
    return plt.subplots(figsize=(width_in, height_in))


def chart_holdings_over_time(samples: list[dict]) -> str:
    if not samples:
        return "<p>No holdings to chart.</p>"
    figure, axes = _figure()
    custodians = sorted({c for s in samples for c in s["by_custodian"]})
    x = [s["position"] for s in samples]
    series = [[s["by_custodian"].get(c, 0) / SATS_PER_BTC for s in samples] for c in custodians]
    if custodians:
        axes.stackplot(x, series, labels=custodians, alpha=0.8, step="post")
    axes.step(x, [s["total_sats"] / SATS_PER_BTC for s in samples], where="post", color="black", label="total")
    axes.set_xlabel(f"log position (events; {utc(samples[0]['time_us'])} to {utc(samples[-1]['time_us'])})")
    axes.set_ylabel("BTC")
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(alpha=0.3)
    return _svg(figure)


def chart_custodians(holdings: dict) -> str:
    rows = holdings.get("custodians", []) if holdings else []
    if not rows:
        return "<p>No custody holdings.</p>"
    figure, axes = _figure(height_in=0.5 + 0.5 * len(rows))
    axes.barh([r["custodian"] for r in rows], [r["balance_sats"] / SATS_PER_BTC for r in rows], color="#2b6cb0")
    axes.set_xlabel("BTC")
    axes.invert_yaxis()
    axes.grid(axis="x", alpha=0.3)
    return _svg(figure)


def chart_anchors(anchors: list[dict]) -> str:
    confirmed = [a for a in anchors if a.get("block_height") is not None]
    if not confirmed:
        return "<p>No anchor is confirmed in a block.</p>"
    figure, axes = _figure(height_in=3.0)
    heights = [a["block_height"] for a in confirmed]
    axes.step(heights, [a["tree_size"] for a in confirmed], where="post", color="#555")
    colours = ["#2f855a" if a.get("proven_in_block") else "#c53030" for a in confirmed]
    axes.scatter(heights, [a["tree_size"] for a in confirmed], c=colours, zorder=3)
    for a in confirmed:
        label = f"{a['txid'][:8]}…" + (f" ({a['confirmations']} conf.)" if a.get("confirmations") is not None else "")
        axes.annotate(label, (a["block_height"], a["tree_size"]), textcoords="offset points", xytext=(6, 6),
                      fontsize=8)
    axes.set_xlabel("block height")
    axes.set_ylabel("events anchored (tree size)")
    axes.grid(alpha=0.3)
    return _svg(figure)


def chart_reserves(reserves: dict | None) -> str:
    rows = [r for r in (reserves or {}).get("accounts", []) if r["onchain_sats"] is not None]
    if not rows:
        return ""
    figure, axes = _figure(height_in=3.0)
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [r["ledger_sats"] / SATS_PER_BTC for r in rows], 0.4, label="ledger")
    axes.bar([p + 0.2 for p in positions], [r["onchain_sats"] / SATS_PER_BTC for r in rows], 0.4, label="on chain")
    axes.set_xticks(list(positions), [r["account_id"] for r in rows], fontsize=8)
    axes.set_ylabel("BTC")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


# --- the page --------------------------------------------------------------------------------------------

STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#1a202c;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #cbd5e0;padding-bottom:.2em;margin-top:1.6em}
.verdict{font-size:2em;font-weight:bold;padding:.6em 1em;border-radius:8px;color:#fff}
.PASS{background:#2f855a}.FAIL{background:#c53030}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #cbd5e0;padding:.25em .6em;
text-align:left;vertical-align:top}td.long{overflow-wrap:anywhere;min-width:14em}th{background:#edf2f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#2f855a;font-weight:bold}.fail{color:#c53030;font-weight:bold}.skipped{color:#718096}
.note{color:#4a5568;font-size:.9em}code{font-size:.85em;word-break:break-all}svg{max-width:100%;height:auto}
"""


def render_html(result: dict) -> str:
    sections = [_verdict(result), _checks(result), _holdings(result), _cost(result), _anchors(result),
                _witnesses(result), _reserves(result), _key_control(result), _reserve_alerts(result), _controls(result), _failures(result)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\"><title>Reserve audit: " + result["verdict"] + "</title><style>" + STYLE +
            "</style></head><body>" + "".join(sections) + "</body></html>\n")


def _verdict(result: dict) -> str:
    words = ("every check holds" if result["verdict"] == "PASS"
             else f"{result['failures_total']} failure(s) found; each is listed under Failures")
    scope = (f"{result['events']:,} events (root <code>{_e(result['root_hash'])}</code>), "
             f"{len(result['tree_heads'])} signed tree heads, {len(result['anchors'])} anchors. "
             f"Balances as of log position {result['as_of_position']} ({utc(result.get('as_of_time_us'))}).")
    if result.get("log_key"):
        rotations = result.get("key_rotations") or []
        scope += (f" Tree heads checked from the log's first key <code>{_e(result['log_key'])}</code> (pin it with "
                  f"--log-key) through {len(rotations)} key rotation(s)"
                  + "".join(f"; at position {r['position']} to <code>{_e(r['public_key'])}</code>" for r in rotations)
                  + ".")
    chain = result.get("chain")
    chain_text = (f" Checked against the auditor's node <code>{_e(chain['spec'])}</code> at height "
                  f"{chain['tip_height']}." if chain else " Offline audit: no Bitcoin node was consulted "
                  "(run with --chain for best-chain and reserve checks).")
    return (f"<h1>Reserve ledger audit</h1><div class='verdict {result['verdict']}' id='verdict'>"
            f"Verdict: {result['verdict']} — {_e(words)}</div><p>{scope}{chain_text}</p>")


def _checks(result: dict) -> str:
    rows = "".join(f"<tr><td>{_e(c['check'])}</td><td>{_e(c['description'])}</td>"
                   f"<td class='{c['status']}'>{c['status'].upper()}</td><td class='num'>{c['failures']}</td></tr>"
                   for c in result["checks"])
    return ("<h2>Checks</h2><table><thead><tr><th>check</th><th>what</th><th>result</th><th>failures</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _holdings(result: dict) -> str:
    holdings = result["holdings"] or {}
    if result["replay_stopped_at"]:
        return f"<h2>Holdings</h2><p class='fail'>The replay stopped at {_e(result['replay_stopped_at'])}.</p>"
    rows = [[c["custodian"], c["wallet_count"], btc(c["balance_sats"]), btc(c["held_sats"])]
            for c in holdings.get("custodians", [])] + [["TOTAL", "", btc(holdings.get("total_sats")), ""]]
    accounts = [[a["account_id"], a["custodian"], a["kind"], a["status"], f"{a['quorum'][0]}-of-{a['quorum'][1]}",
                 btc(a["balance_sats"]), ", ".join(a["addresses"]) or a["descriptor"] or "—"]
                for a in result["custody_accounts"]]
    return ("<h2>Holdings over time</h2>" + chart_holdings_over_time(result["holdings_over_time"]) +
            "<h2>Holdings per custodian</h2>" + chart_custodians(holdings) +
            _table(["custodian", "wallets", "holdings BTC", "held BTC"], rows, {1, 2, 3}) +
            "<h3>Custody accounts</h3>" +
            _table(["account", "custodian", "kind", "status", "quorum", "balance BTC", "registered addresses"],
                   accounts, {5}))


def _cost(result: dict) -> str:
    currencies = (result["cost_basis"] or {}).get("currencies", [])
    rows = [[c["currency_code"], btc(c["quantity_sats"]), c["fiat_total"], c["average_price_per_btc"],
             btc(c["remaining_sats"]), c["remaining_cost_fifo"]] for c in currencies]
    return "<h2>Cost basis</h2>" + _table(["currency", "bought BTC", "fiat paid", "average price/BTC",
                                           "held BTC (FIFO)", "FIFO cost"], rows, {1, 2, 3, 4, 5})


def _anchors(result: dict) -> str:
    rows = [[a["txid"], a["tree_size"], a["state"], a["block_height"], a["block_hash"] or "—",
             "—" if a.get("confirmations") is None else a["confirmations"],
             "yes" if a["proven_in_block"] else "no"] for a in result["anchors"]]
    note = "" if result.get("chain") else ("<p class='note'>Confirmations need --chain; the blocks' headers and "
                                           "merkle proofs were checked offline.</p>")
    return ("<h2>Bitcoin anchors</h2>" + _genesis(result) + chart_anchors(result["anchors"]) + note +
            _table(["txid", "tree size", "state", "block height", "block hash", "confirmations",
                    "proven in block"], rows, {1, 3, 5}))


def _genesis(result: dict) -> str:
    """The anchor wallet's genesis, to pin in the next audit, and what was found on chain from it."""
    genesis, pinned = result.get("anchor_genesis"), result.get("anchor_genesis_pinned")
    text = (f"Anchor genesis (the coin the first anchor spent): <code>{_e(genesis)}</code>. Pin it in later audits: "
            f"<code>reserve-ledger audit BUNDLE --chain SPEC --anchor-genesis {_e(genesis)}</code>."
            if genesis else "The bundle names no anchor genesis (no anchor was made before the snapshot).")
    if pinned:
        text += f" This audit pinned <code>{_e(pinned)}</code>."
    followed = ((result.get("chain") or {}).get("anchor_chain") or {})
    if followed.get("anchors") is not None:
        left_out = sum(1 for a in followed["anchors"] if not a["in_bundle"])
        text += (f" On the auditor's node, {len(followed['anchors'])} anchor transaction(s) descend from "
                 f"<code>{_e(followed['genesis'])}</code>; {left_out} of them missing from the bundle.")
    elif followed.get("note"):
        text += f" {_e(followed['note'])}."
    return f"<p>{text}</p>"


def _witnesses(result: dict) -> str:
    """Who witnessed which tree head, and when (checkpoints.json, docs/FORMATS.md §8)."""
    witnessing = result.get("witnessing") or {}
    listed = witnessing.get("witnesses") or []
    intro = (f"Witnesses required: {witnessing['quorum']} of {len(listed)} (" + ", ".join(
        f"<code>{_e(v)}</code>" for v in listed) + ")." if listed else
             "No witness was required (run with --witness NAME=VKEY to require cosignatures).")
    intro += f" The log's checkpoint key: <code>{_e(witnessing.get('vkey') or '—')}</code>."
    rows = [[c["tree_size"], ", ".join(f"{w['witness']} at {w['time']}" for w in c["cosigners"]) or
             ("—" if listed else "not checked")] for c in witnessing.get("checkpoints", [])]
    return ("<h2>Witnesses</h2><p id='witnesses'>" + intro + "</p>" +
            _table(["tree size", "cosigned by (valid cosignatures from the listed witnesses)"], rows, {0}))


def _reserves(result: dict) -> str:
    reserves = result.get("reserves")
    if not reserves:
        return ("<h2>Proof of reserves</h2><p class='note'>Not run: it needs the auditor's node (--chain). "
                "A proof of reserves covers existence at one block height, not liabilities or control of keys.</p>")
    rows = [[r["account_id"], r["custodian"], _registered(r), r["scripts_scanned"], btc(r["ledger_sats"]),
             btc(r["onchain_sats"]), "—" if r["difference_sats"] is None else btc(r["difference_sats"]),
             r["status"] + (f" ({r['note']})" if r["note"] else "")] for r in reserves["accounts"]]
    rows.append(["total", "", f"{len(reserves['accounts'])} accounts", reserves["scripts_scanned_total"],
                 btc(reserves["ledger_total_sats"]), btc(reserves["onchain_total_sats"]), "", ""])
    return (f"<h2>Proof of reserves at block height {reserves['height']}</h2>"
            f"<p>Block <code>{_e(reserves['block_hash'])}</code>. Ledger total {btc(reserves['ledger_total_sats'])} BTC"
            f" = reconciled {btc(reserves['reconciled_ledger_sats'])} + not reconciled "
            f"{btc(reserves['not_reconciled_ledger_sats'])}; on chain {btc(reserves['onchain_total_sats'])} BTC; "
            f"{reserves['scripts_scanned_total']:,} scripts scanned. Existence at one height only: on its own it does "
            "not show control of the keys (see the control proofs) or the liabilities against the reserve.</p>" +
            chart_reserves(reserves) +
            _table(["account", "custodian", "addresses / descriptor", "scripts scanned", "ledger BTC", "on chain BTC",
                    "difference BTC", "result"], rows, {3, 4, 5, 6}))


def _registered(row: dict) -> str:
    descriptor = row["descriptor"]
    if len(descriptor) > DESCRIPTOR_SHOWN_MAX:
        descriptor = descriptor[:DESCRIPTOR_SHOWN_MAX // 2] + "…" + descriptor[-DESCRIPTOR_SHOWN_MAX // 2:]
    gap = f" (gap limit {row['gap_limit'] or GAP_LIMIT_DEFAULT})" if "*" in row["descriptor"] else ""
    return ", ".join([*row["addresses"], *([descriptor + gap] if descriptor else [])]) or "—"


def _key_control(result: dict) -> str:
    proofs = result.get("control_proofs")
    if not proofs:
        return ("<h2>Control of keys</h2><p class='note'>Not run: give the custodians' answers to a challenge with "
                "--control-proofs DIR (reserve-ledger reserves challenge).</p>")
    rows = [[a["account_id"], len(a["scripts"]), btc(a["funded_sats"]), btc(a["proven_sats"]),
             "; ".join(f"{s['source'] or s['script_pubkey']}: {s['status']}" for s in a["scripts"]
                       if s["status"] != "proven") or "all proven"] for a in proofs["accounts"]]
    return (f"<h2>Control of keys (BIP-322)</h2><p>Control proven for {btc(proofs['proven_sats'])} of "
            f"{btc(proofs['funded_sats'])} BTC at height {proofs['coins_read_at_height']}: each funded script signed "
            f"the auditor's challenge (nonce <code>{_e(proofs['nonce'])}</code>, tree size {proofs['tree_size']}), "
            "and Bitcoin Core's interpreter (libbitcoinkernel, all consensus flags) accepted every signature "
            "counted.</p>" +
            _table(["account", "funded scripts", "funded BTC", "proven BTC", "result"], rows, {1, 2, 3}))


def _reserve_alerts(result: dict) -> str:
    """The live monitor's alerts as the log records them (ReserveDiscrepancyObserved and their resolutions)."""
    alerts = result.get("reserve_alerts")
    if alerts is None:
        return ""
    counts = alerts["by_status"]
    rows = [[a["discrepancy_id"], a["account_id"], a["block_height"], ", ".join(a["txids"]), btc(a["movement_sats"]),
             btc(a["onchain_sats"]), btc(a["ledger_sats"]), a["finding"]] for a in alerts["open"]]
    return (f"<h2>Reserve alerts (live monitor)</h2><p>{alerts['total']} alerts recorded in the log: "
            f"{counts['open']} open, {counts['closed']} closed by an approved correction, {counts['reorged-out']} "
            "whose block left the best chain.</p>" +
            (_table(["alert", "account", "block height", "txids", "movement BTC", "on chain BTC", "ledger BTC",
                     "finding"], rows, {2, 4, 5, 6}) if rows else ""))


def _controls(result: dict) -> str:
    controls = result["controls"]
    pairs = [[p["proposer"], p["approver"], p["count"]] for p in controls["by_pair"]]
    rows = [[a["position"], a["type"], a["pending_id"], a["proposer"], a["approver"], a["approver_role"],
             btc(a["amount_sats"]), utc(a["time_us"])] for a in controls["approvals"]]
    counts = ", ".join(f"{k}: {v}" for k, v in controls["event_counts"].items())
    shown = "" if len(rows) == controls["approvals_total"] else f" (first {len(rows)} listed)"
    return (f"<h2>Controls evidence</h2><p>{controls['approvals_total']} approvals{shown}; each names its proposer and "
            f"its approver (their certificate identities). Events by type: {_e(counts)}.</p>" +
            _table(["proposer", "approver", "approvals"], pairs, {2}) +
            _table(["position", "event", "proposal", "proposer", "approver", "approver role", "amount BTC", "time"],
                   rows, {0, 6}))


def _failures(result: dict) -> str:
    if not result["failures"]:
        return "<h2>Failures</h2><p class='pass'>None.</p>"
    rows = [[f["check"], f["where"], f["message"]] for f in result["failures"][:FAILURES_SHOWN_MAX]]
    more = result["failures_total"] - len(rows)
    return ("<h2>Failures</h2>" + _table(["check", "where", "what"], rows) +
            (f"<p>… and {more} more (counted, not listed).</p>" if more > 0 else ""))
