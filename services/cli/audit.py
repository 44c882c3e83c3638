"""`reserve-ledger export` (write an audit bundle) and `reserve-ledger audit` (check one, offline by default)."""

import pathlib
import sys

import grpc
from tqdm import tqdm

from ledger.anchoring import OutpointInvalid, parse_outpoint
from services import compose
from services.api.client import secure_channel
from services.audit import bundle, report
from services.audit.export import LedgerSource, write_bundle
from services.audit.export_grpc import AuditServiceSource, ServerAnswerInvalid
from services.audit.run import audit_directory, bundle_event_count, print_result
from services.bitcoin.backends import CHAIN_SPEC_HELP, check_spec, close_backend
from services.cli.options import add_storage_options, storage_from
from services.errors import CheckFailed, ConfigurationInvalid, NothingStoredHere
from services.witness.gatherer import check_witnesses as check_witness_list
from services.witness.gatherer import parse_witness


def add_audit_commands(commands) -> None:
    export = commands.add_parser("export", help="write an audit bundle (docs/FORMATS-audit.md) from local storage "
                                                "or from a running server over gRPC")
    source = add_storage_options(export)
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
    export.add_argument("--log-origin", metavar="ORIGIN", help="the origin serve uses, for the vkey in "
                        "checkpoints.json of a local export (default: the stored checkpoints' origin)")
    export.add_argument("--chain", metavar="SPEC", help="also export the block headers from the first anchor's "
                                                        f"block to the tip: {CHAIN_SPEC_HELP}")
    export.set_defaults(run=cmd_export)
    audit = commands.add_parser("audit", help="check an audit bundle offline: events, Merkle log, tree heads, "
                                              "anchors, headers, replay (exit 1 naming every failure)")
    audit.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    audit.add_argument("--chain", metavar="SPEC", help="also check anchors against this node's best chain and "
                                                       f"reconcile custody balances on chain: {CHAIN_SPEC_HELP}")
    audit.add_argument("--anchor-genesis", metavar="TXID:VOUT",
                       help="the anchor genesis an earlier report printed: the bundle must name it, and with --chain "
                            "the anchors on chain are followed from it (a history re-anchored from another coin fails)")
    audit.add_argument("--witness", action="append", metavar="NAME=VKEY",
                       help="a witness whose cosignatures count (its cosignature vkey; repeatable)")
    audit.add_argument("--witness-quorum", type=int, default=None, metavar="K",
                       help="cosignatures from the listed witnesses the last head and every confirmed anchor's head "
                            "must carry (default: every --witness)")
    audit.add_argument("--log-key", metavar="HEX",
                       help="the log's first tree-head public key (64 hex), pinned: the bundle's must be it, and "
                            "each SigningKeyRotated event is followed from it")
    audit.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report and FILE.json")
    audit.add_argument("--control-proofs", metavar="DIR",
                       help="DIR/challenge.json and DIR/signatures/: every funded script must prove control with a "
                            "BIP-322 signature (checked by libbitcoinkernel); see `reserve-ledger reserves challenge`")
    audit.set_defaults(run=cmd_audit)


def _progress_bar(total: int | None, desc: str) -> tqdm:
    return tqdm(total=total, unit="event", desc=desc, disable=not sys.stderr.isatty(), file=sys.stderr)


def _check_export_args(args) -> None:
    if args.chain:
        check_spec(args.chain)
    if args.server:
        if not args.certs or not args.identity:
            raise ConfigurationInvalid("--server needs --certs DIR and --identity NAME")
        if args.public_key or args.signing_key:
            raise ConfigurationInvalid("with --server the public key comes from the server; "
                                       "drop --public-key/--signing-key")
    elif args.certs or args.identity:
        raise ConfigurationInvalid("--certs and --identity go with --server HOST:PORT")
    out = pathlib.Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigurationInvalid(f"--out {out} is not empty (or not a directory); choose a new or empty directory")


def cmd_export(args) -> int:
    _check_export_args(args)
    if args.server:
        return _export_from_server(args)
    storage = storage_from(args)
    public_key = compose.public_key_of(storage, args.public_key, args.signing_key)
    if public_key is None:
        raise ConfigurationInvalid("no public key for the tree heads: give --public-key HEX or --signing-key FILE")
    ledger = compose.open_ledger(storage)
    try:
        return _export(LedgerSource(ledger, public_key, args.log_origin), args)
    finally:
        ledger.close()


def _export_from_server(args) -> int:
    """The bundle of a running server, read through its AuditService with an auditor's (or admin's) certificate."""
    try:
        channel = secure_channel(args.server, args.certs, args.identity)
    except OSError as error:
        raise NothingStoredHere(f"no client certificate for {args.identity!r}: {error.strerror}: "
                                f"{error.filename}") from None
    try:
        with channel:
            return _export(AuditServiceSource(channel), args)
    except grpc.RpcError as error:
        hint = (f" (export needs an auditor or admin identity; {args.identity!r} is neither)"
                if error.code() == grpc.StatusCode.PERMISSION_DENIED else "")
        raise ConfigurationInvalid(f"{args.server} answered {error.code().name}: {error.details()}{hint}; "
                                   "no bundle written") from None
    except ServerAnswerInvalid as error:
        raise CheckFailed(f"{args.server} answered what no correct server sends: {error}; no bundle written") from None


def _export(source, args) -> int:
    backend = compose.open_chain(args.chain) if args.chain else None
    try:
        with _progress_bar(source.snapshot_size(), "exporting") as bar:
            manifest = write_bundle(source, args.out, backend, lambda n: bar.update(n - bar.n))
    finally:
        if backend is not None:
            close_backend(backend)
    counts = manifest["counts"]
    print(f"wrote {args.out}: {counts['events']} events, {counts['tree_heads']} tree heads, {counts['anchors']} "
          f"anchors, {counts['headers']} headers, {counts['custody_accounts']} custody accounts")
    return 0


def _log_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigurationInvalid("--log-key must be 64 hex digits (a raw Ed25519 public key)")
    return key


def cmd_audit(args) -> int:
    if args.chain:
        check_spec(args.chain)
    pinned = None
    if args.anchor_genesis is not None:
        try:
            pinned = parse_outpoint(args.anchor_genesis)
        except OutpointInvalid as error:
            raise ConfigurationInvalid(f"--anchor-genesis: {error}") from None
    witnesses = tuple(parse_witness(value, with_url=False) for value in args.witness or ())
    quorum = len(witnesses) if args.witness_quorum is None else args.witness_quorum
    check_witness_list(list(witnesses), quorum)
    directory = pathlib.Path(args.bundle)
    if not directory.is_dir():
        raise NothingStoredHere(f"{directory}: no such bundle directory (write one with `reserve-ledger export`)")
    proofs = pathlib.Path(args.control_proofs) if args.control_proofs else None
    if proofs is not None and not (proofs / "challenge.json").is_file():
        raise NothingStoredHere(f"--control-proofs {proofs}: no challenge.json there (the directory holds "
                                "challenge.json and signatures/)")
    backend = compose.open_chain(args.chain) if args.chain else None
    try:
        with _progress_bar(bundle_event_count(directory), "auditing") as bar:
            facts = audit_directory(directory, backend, args.chain, lambda n: bar.update(n - bar.n), pinned,
                                    witnesses, quorum, proofs, _log_key(args.log_key))
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
