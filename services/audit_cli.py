"""`reserve-ledger export` (write an audit bundle) and `reserve-ledger audit` (check one, offline by default)."""

import argparse
import pathlib
import sys

from tqdm import tqdm

FINDINGS_PRINTED_MAX = 50


def add_audit_commands(commands) -> None:
    from services.bitcoin.backends import CHAIN_SPEC_HELP
    from services.cli import _storage_args
    export = commands.add_parser("export", help="write an audit bundle (docs/FORMATS.md, 'Audit bundle')")
    _storage_args(export)
    export.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for the bundle")
    export.add_argument("--public-key", metavar="HEX", help="raw Ed25519 public key of the tree heads")
    export.add_argument("--signing-key", metavar="FILE",
                        help="take the public key from this key file (default DATA_DIR/tree-head-signing.key)")
    export.add_argument("--chain", metavar="SPEC", help="also export the block headers from the first anchor's "
                                                        f"block to the tip: {CHAIN_SPEC_HELP}")
    export.set_defaults(run=cmd_export)
    audit = commands.add_parser("audit", help="check an audit bundle offline: events, Merkle log, tree heads, "
                                              "anchors, headers, replay (exit 1 naming every failure)")
    audit.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    audit.add_argument("--chain", metavar="SPEC", help="also check anchors against this node's best chain and "
                                                       f"reconcile custody balances on chain: {CHAIN_SPEC_HELP}")
    audit.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report and FILE.json")
    audit.set_defaults(run=cmd_audit)


def _progress_bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, unit="event", desc=desc, disable=not sys.stderr.isatty(), file=sys.stderr)


def cmd_export(args) -> int:
    from services.bitcoin.backends import close_backend, open_backend
    from services.cli import _open_ledger, _public_key_for_verify
    from services.export import BundleDirectoryNotEmpty, export_bundle
    public_key = _public_key_for_verify(args)
    if public_key is None:
        print("reserve-ledger export: error: no public key (give --public-key HEX or --signing-key FILE)",
              file=sys.stderr)
        return 2
    ledger = _open_ledger(args)
    backend = open_backend(args.chain) if args.chain else None
    try:
        with _progress_bar(ledger.store.log_size(), "exporting") as bar:
            manifest = export_bundle(ledger, args.out, public_key, backend, lambda n: bar.update(n - bar.n))
    except BundleDirectoryNotEmpty as error:
        print(f"reserve-ledger export: error: {error}", file=sys.stderr)
        return 2
    finally:
        ledger.close()
        if backend is not None:
            close_backend(backend)
    counts = manifest["counts"]
    print(f"wrote {args.out}: {counts['events']} events, {counts['tree_heads']} tree heads, {counts['anchors']} "
          f"anchors, {counts['headers']} headers, {counts['custody_accounts']} custody accounts")
    return 0


def cmd_audit(args) -> int:
    from services import bundle, report
    try:
        facts = _run(args)
    except bundle.BundleInvalid as error:
        print(f"FAIL bundle: {error}")
        return 1
    result = report.audit_result(facts)
    for finding in result["failures"][:FINDINGS_PRINTED_MAX]:
        print(f"FAIL {finding['check']} {finding['where']}: {finding['message']}")
    if result["failures_total"] > FINDINGS_PRINTED_MAX:
        print(f"... and {result['failures_total'] - FINDINGS_PRINTED_MAX} more (see the report)")
    _print_summary(result)
    if args.report:
        html_path, json_path = report.write_report(result, pathlib.Path(args.report))
        print(f"report: {html_path} and {json_path}")
    return 0 if result["verdict"] == "PASS" else 1


def _run(args) -> dict:
    from services import bundle
    directory = pathlib.Path(args.bundle)
    total = bundle.read_small_files(directory)["manifest"].get("counts", {}).get("events")
    with _progress_bar(total if isinstance(total, int) else None, "auditing") as bar:
        facts = bundle.audit_bundle(directory, lambda n: bar.update(n - bar.n))
    if args.chain:
        facts.update(_chain_checks(args.chain, directory, facts))
    return facts


def _chain_checks(spec: str, directory: pathlib.Path, facts: dict) -> dict:
    from services import audit_chain, bundle
    from services.bitcoin.backends import close_backend, open_backend
    backend = open_backend(spec)
    try:
        anchors_json = bundle.read_json(directory, bundle.ANCHORS)
        chain = audit_chain.check_best_chain(facts["anchors"], anchors_json, backend, facts["findings"])
        reserves = None
        if facts["replay_stopped_at"] is None:
            reserves = audit_chain.reconcile_reserves(facts["accounts"], backend, facts["findings"])
    finally:
        close_backend(backend)
    return {"chain": {"spec": spec, **chain}, "reserves": reserves}


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
    summary = (f"{result['events']} events, {len(result['tree_heads'])} signed tree heads, "
               f"{len(result['anchors'])} anchors, replay to position {result['as_of_position']}")
    if result["verdict"] == "PASS":
        print(f"OK: {summary}")
    else:
        print(f"FAIL: {result['failures_total']} failure(s); {summary}")
