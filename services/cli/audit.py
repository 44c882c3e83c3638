"""`reserve-ledger export` (write an audit bundle) and `reserve-ledger audit` (check one, offline by default)."""

import argparse
import pathlib
import sys

from tqdm import tqdm

FINDINGS_PRINTED_MAX = 50


def add_audit_commands(commands) -> None:
    from services.bitcoin.backends import CHAIN_SPEC_HELP
    from services.cli.main import _storage_args
    export = commands.add_parser("export", help="write an audit bundle (docs/FORMATS-audit.md) from local storage "
                                                "or from a running server over gRPC")
    source = _storage_args(export)
    source.add_argument("--server", metavar="HOST:PORT", help="export from this running server's AuditService "
                                                              "(mTLS; needs --certs and --identity)")
    export.add_argument("--certs", metavar="DIR", help="with --server: directory with ca.pem and NAME.pem/NAME.key")
    export.add_argument("--identity", metavar="NAME", help="with --server: whose client certificate to present "
                                                           "(an auditor or admin)")
    export.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for the bundle")
    export.add_argument("--public-key", metavar="HEX", help="raw Ed25519 public key of the tree heads")
    export.add_argument("--signing-key", metavar="FILE",
                        help="take the public key from this key file (default DATA_DIR/tree-head-signing.key; "
                             "with --server the server's GetPublicKey answers)")
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


def _export_error(message: str) -> int:
    print(f"reserve-ledger export: error: {message}", file=sys.stderr)
    return 2


def cmd_export(args) -> int:
    if args.server:
        return _export_from_server(args)
    if args.certs or args.identity:
        return _export_error("--certs and --identity go with --server HOST:PORT")
    from services.cli.main import _open_ledger, _public_key_for_verify
    from services.audit.export import LedgerSource
    public_key = _public_key_for_verify(args)
    if public_key is None:
        return _export_error("no public key (give --public-key HEX or --signing-key FILE)")
    ledger = _open_ledger(args)
    try:
        return _export(LedgerSource(ledger, public_key, _signer_if_key_at_hand(args, ledger)), args)
    finally:
        ledger.close()


def _signer_if_key_at_hand(args, ledger):
    """A tree-head signer when the private key is here (--signing-key, or the data dir's key), else None."""
    import time
    from services.cli.main import _signing_key_path
    from services.store.signing import TreeHeadSigner, load_or_create_signing_key
    path = None if args.public_key else _signing_key_path(args)
    if path is None:
        return None
    return TreeHeadSigner(ledger.store, load_or_create_signing_key(path), lambda: time.time_ns() // 1000)


def _export_from_server(args) -> int:
    """The bundle of a running server, read through its AuditService with an auditor's (or admin's) certificate."""
    import grpc
    from services.api.client import secure_channel
    from services.audit.export_grpc import AuditServiceSource, ServerAnswerInvalid
    if not args.certs or not args.identity:
        return _export_error("--server needs --certs DIR and --identity NAME")
    if args.public_key or args.signing_key:
        return _export_error("with --server the public key comes from the server; drop --public-key/--signing-key")
    try:
        channel = secure_channel(args.server, args.certs, args.identity)
    except OSError as error:
        return _export_error(f"no client certificate for {args.identity!r}: {error.strerror}: {error.filename}")
    try:
        with channel:
            return _export(AuditServiceSource(channel), args)
    except grpc.RpcError as error:
        hint = (f" (export needs an auditor or admin identity; {args.identity!r} is neither)"
                if error.code() == grpc.StatusCode.PERMISSION_DENIED else "")
        return _export_error(f"{args.server} answered {error.code().name}: {error.details()}{hint}; no bundle written")
    except ServerAnswerInvalid as error:
        print(f"reserve-ledger export: error: {args.server} answered what no correct server sends: {error}; "
              "no bundle written", file=sys.stderr)
        return 1


def _export(source, args) -> int:
    from services.bitcoin.backends import close_backend, open_backend
    from services.audit.export import BundleDirectoryNotEmpty, write_bundle
    backend = open_backend(args.chain) if args.chain else None
    try:
        with _progress_bar(source.snapshot_size(), "exporting") as bar:
            manifest = write_bundle(source, args.out, backend, lambda n: bar.update(n - bar.n))
    except BundleDirectoryNotEmpty as error:
        return _export_error(str(error))
    finally:
        if backend is not None:
            close_backend(backend)
    counts = manifest["counts"]
    print(f"wrote {args.out}: {counts['events']} events, {counts['tree_heads']} tree heads, {counts['anchors']} "
          f"anchors, {counts['headers']} headers, {counts['custody_accounts']} custody accounts")
    return 0


def cmd_audit(args) -> int:
    from services.audit import bundle
    from services.audit import report
    from services.bitcoin.backends import close_backend, open_backend
    backend = open_backend(args.chain) if args.chain else None
    try:
        facts = audit_directory(pathlib.Path(args.bundle), backend, args.chain)
    except bundle.BundleInvalid as error:
        print(f"FAIL bundle: {error}")
        return 1
    finally:
        if backend is not None:
            close_backend(backend)
    result = report.audit_result(facts)
    print_result(result)
    if args.report:
        html_path, json_path = report.write_report(result, pathlib.Path(args.report))
        print(f"report: {html_path} and {json_path}")
    return 0 if result["verdict"] == "PASS" else 1


def audit_directory(directory: pathlib.Path, backend=None, chain_label: str | None = None) -> dict:
    """The facts of one bundle: the offline checks, then, with a backend (the auditor's node), the chain's."""
    from services.audit import bundle
    total = bundle.read_small_files(directory)["manifest"].get("counts", {}).get("events")
    with _progress_bar(total if isinstance(total, int) else None, "auditing") as bar:
        facts = bundle.audit_bundle(directory, lambda n: bar.update(n - bar.n))
    if backend is not None:
        facts.update(_chain_checks(backend, chain_label, directory, facts))
    return facts


def _chain_checks(backend, chain_label: str | None, directory: pathlib.Path, facts: dict) -> dict:
    from services.audit import chain as audit_chain
    from services.audit import bundle
    anchors_json = bundle.read_json(directory, bundle.ANCHORS)
    chain = audit_chain.check_best_chain(facts["anchors"], anchors_json, backend, facts["findings"])
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
    summary = (f"{result['events']} events, {len(result['tree_heads'])} signed tree heads, "
               f"{len(result['anchors'])} anchors, replay to position {result['as_of_position']}")
    if result["verdict"] == "PASS":
        print(f"OK: {summary}")
    else:
        print(f"FAIL: {result['failures_total']} failure(s); {summary}")
