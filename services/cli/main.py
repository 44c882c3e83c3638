"""The `reserve-ledger` command."""

import argparse
import logging
import pathlib
import sys
from decimal import Decimal

from tqdm import tqdm

from ledger.rules import Policy
from services.cli.anchor import add_anchor_commands
from services.cli.errors import OneLineArgumentParser, run_command


def _storage_args(parser: argparse.ArgumentParser):
    """--data-dir | --database; returns the group so that a command may add another exclusive source."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data-dir", default="./reserve-data", help="SQLite data directory (default ./reserve-data)")
    group.add_argument("--database", metavar="URL", help="PostgreSQL URL, e.g. postgresql://postgres@127.0.0.1/test")
    return group


def _open_ledger(args):
    from ledger.application import ReserveLedger
    from services.store.config import storage_env
    return ReserveLedger(storage_env(None if args.database else args.data_dir, args.database))


def cmd_serve(args) -> int:
    from ledger.anchor_policy import AnchorPolicy
    from services.api.server import LedgerServer, ServerConfig
    server = LedgerServer(ServerConfig(
        listen=args.listen, data_dir=None if args.database else args.data_dir, database_url=args.database,
        certs_dir=args.certs, insecure_loopback=args.insecure_loopback,
        purchase_approval_threshold_sats=args.purchase_approval_threshold_sats,
        signing_key_path=args.signing_key, tree_head_interval_s=args.tree_head_interval_s,
        chain=args.chain, anchor_key_path=args.anchor_key, anchor_network=args.network,
        anchor_policy=AnchorPolicy(interval_s=args.anchor_interval_s, fee_rate_max_sat_per_vb=args.fee_rate_max,
                                   fee_max_sats=args.fee_max_sats,
                                   block_poll_interval_s=args.block_poll_interval_s))).start()
    print(f"reserve-ledger serving on port {server.port}", flush=True)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def cmd_certs(args) -> int:
    from services.api.certs import DEFAULT_IDENTITIES, init_certs
    identities = [tuple(i.split(":", 1)) for i in args.identity] if args.identity else DEFAULT_IDENTITIES
    out = init_certs(args.dir, identities)
    print(f"wrote ca.pem, server.pem/.key and {', '.join(n for n, _ in identities)} certificates to {out}")
    return 0


def cmd_demo(args) -> int:
    from services.cli.demo import run_demo
    return run_demo(args.data_dir)


def cmd_rebuild(args) -> int:
    ledger = _open_ledger(args)
    size = ledger.store.log_size()
    with tqdm(total=size, unit="event", desc="replaying", disable=not sys.stderr.isatty()) as bar:
        last = [0]

        def progress(position: int) -> None:
            bar.update(position - last[0])
            last[0] = position
        rebuilt = ledger.rebuild(progress)
        bar.update(size - last[0])
    live = ledger.live_state_bytes()
    same = rebuilt.to_bytes() == live
    print(f"replayed {size} events; rebuilt projection {'equals' if same else 'DIFFERS FROM'} the live view")
    ledger.replace_projection(rebuilt)
    ledger.close()
    return 0 if same else 1


def _signing_key_path(args) -> pathlib.Path | None:
    """--signing-key, or the data dir's key file; None when neither exists."""
    from services.store.signing import SIGNING_KEY_FILE_NAME
    path = pathlib.Path(args.signing_key) if args.signing_key else (
        None if args.database else pathlib.Path(args.data_dir) / SIGNING_KEY_FILE_NAME)
    return path if path is not None and path.exists() else None


def _public_key_for_verify(args) -> bytes | None:
    from cryptography.hazmat.primitives import serialization
    if args.public_key:
        return bytes.fromhex(args.public_key)
    path = _signing_key_path(args)
    if path is None:
        return None
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def cmd_verify(args) -> int:
    from services.audit.verify import verify_ledger
    public_key = _public_key_for_verify(args)
    ledger = _open_ledger(args)
    size = ledger.store.log_size()
    with tqdm(total=size, unit="event", desc="verifying", disable=not sys.stderr.isatty()) as bar:
        report = verify_ledger(ledger, public_key, lambda position: bar.update(position - bar.n))
    ledger.close()
    for problem in report.problems:
        print(f"FAIL {problem.description}")
    if public_key is None:
        print("note: no public key given (--public-key HEX or --signing-key FILE): signatures were not checked")
    if report.problems:
        print(f"{len(report.problems)} problem(s); first bad position: {report.first_bad_position}")
        return 1
    print(f"OK: {report.events} events, {report.tree_heads} signed tree heads, projections equal a replay")
    return 0


def cmd_balances(args) -> int:
    from ledger import state as views
    from services.cli.tables import balances_table, holdings_table
    ledger = _open_ledger(args)
    if args.as_of_position is not None:
        state = ledger.state_as_of(args.as_of_position)
    else:
        with ledger.reading() as live:
            state = live.copy()
    print(f"as of position {state.position}")
    print(balances_table(views.balances(state)))
    print(holdings_table(views.holdings(state)))
    ledger.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="reserve-ledger", description="Event-sourced ledger for Bitcoin reserves")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any failure")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    serve = commands.add_parser("serve", help="run the gRPC service")
    _storage_args(serve)
    serve.add_argument("--listen", default="127.0.0.1:50051")
    serve.add_argument("--certs", help="directory with ca.pem, server.pem, server.key")
    serve.add_argument("--insecure-loopback", action="store_true", help="plaintext, loopback development only")
    serve.add_argument("--purchase-approval-threshold-sats", type=int, default=Policy().purchase_approval_threshold_sats)
    serve.add_argument("--signing-key", metavar="FILE",
                       help="Ed25519 PEM key for tree heads (default DATA_DIR/tree-head-signing.key; "
                            "required with --database)")
    serve.add_argument("--tree-head-interval-s", type=float, default=60.0,
                       help="sign a tree head this often when the log has grown (default 60)")
    serve.add_argument("--chain", metavar="SPEC", help="anchor tree heads in Bitcoin through this backend: "
                       "regtest:DIR | core:URL | esplora:URL (default: no anchoring)")
    serve.add_argument("--anchor-key", metavar="FILE", help="WIF key of the fee-only anchor wallet "
                       "(regtest default DATA_DIR/anchor-wallet.wif, created on first start)")
    serve.add_argument("--network", choices=("mainnet", "testnet", "signet", "regtest"), default="regtest")
    serve.add_argument("--anchor-interval-s", type=float, default=600.0, help="anchor step period (default 600)")
    serve.add_argument("--block-poll-interval-s", type=float, default=10.0,
                       help="how often to ask the node for its tip; a new block refreshes the anchors' "
                            "confirmations and catches reorgs (default 10)")
    serve.add_argument("--fee-rate-max", type=Decimal, default=Decimal(50), metavar="SAT_PER_VB",
                       help="cap on the anchor fee rate (default 50 sat/vB)")
    serve.add_argument("--fee-max-sats", type=int, default=20_000, help="cap on one anchor's fee (default 20000)")
    serve.set_defaults(run=cmd_serve)
    certs = commands.add_parser("certs", help="development certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="create a CA, a server and client certificates")
    init.add_argument("dir")
    init.add_argument("--identity", action="append", metavar="NAME:ROLE",
                      help="client identity (repeatable); default alice:operator bob:approver carol:approver "
                           "dave:auditor erin:admin")
    init.set_defaults(run=cmd_certs)
    demo = commands.add_parser("demo", help="run the demonstration scenario")
    demo.add_argument("--data-dir", help="keep the demo's data here (default: a temporary directory)")
    demo.set_defaults(run=cmd_demo)
    verify = commands.add_parser("verify", help="re-check stored events, Merkle log, tree heads and projections")
    _storage_args(verify)
    verify.add_argument("--public-key", metavar="HEX", help="raw Ed25519 public key of the tree heads")
    verify.add_argument("--signing-key", metavar="FILE", help="take the public key from this key file")
    verify.set_defaults(run=cmd_verify)
    rebuild = commands.add_parser("rebuild", help="replay every event into fresh projections")
    _storage_args(rebuild)
    rebuild.set_defaults(run=cmd_rebuild)
    balances = commands.add_parser("balances", help="print balances and holdings")
    _storage_args(balances)
    balances.add_argument("--as-of-position", type=int)
    balances.set_defaults(run=cmd_balances)
    add_anchor_commands(commands)
    from services.bitcoin.regtest.node import add_regtest_node_command
    add_regtest_node_command(commands)
    from services.cli.audit import add_audit_commands
    add_audit_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run_command(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
