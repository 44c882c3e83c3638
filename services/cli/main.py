"""The `reserve-ledger` command: the ledger's own commands, and the parser that gathers every command.

Every command checks its arguments first, then opens what it needs through the composition root
(services/compose.py); every failure ends in one line and an exit code (services/cli/errors.py).
"""

import signal
import sys
from decimal import Decimal

from tqdm import tqdm

from ledger import errors as ledger_errors
from ledger import state as views
from ledger.anchor_policy import AnchorPolicy
from ledger.state import InvariantBroken
from services import compose
from services.api.certs import init_certs, parse_identities
from services.bitcoin.backends import CHAIN_SPEC_HELP
from services.bitcoin.regtest.command import add_regtest_node_command
from services.cli import anchor, audit, keys, reserves, witness
from services.cli.errors import OneLineArgumentParser, run_command
from services.cli.options import add_setting, add_storage_options, position, positive_number, storage_from
from services.cli.tables import balances_table, holdings_table
from services.errors import CheckFailed, ConfigurationInvalid

ANCHOR_DEFAULTS = AnchorPolicy()


def _server_config(args) -> compose.ServerConfig:
    return compose.ServerConfig(
        listen=args.listen, data_dir=None if args.database else args.data_dir, database_url=args.database,
        database_password_file=args.database_password_file,
        certs_dir=args.certs_dir, insecure_loopback=args.insecure_loopback, create_store=args.create_store,
        purchase_approval_threshold_sats=args.purchase_approval_threshold_sats,
        signing_key_path=args.signing_key, tree_head_keep_every_events=args.tree_head_keep_every_events,
        pkcs11_pin_file=args.pkcs11_pin_file, pkcs11_module=args.pkcs11_module,
        chain=args.chain, anchor_key_path=args.anchor_key, anchor_network=args.anchor_network,
        metrics_listen=None if args.metrics_listen == "off" else args.metrics_listen,
        monitor_interval_s=args.monitor_interval_s,
        call_threads=args.call_threads, streams_per_identity_max=args.streams_per_identity_max,
        streams_total_max=args.streams_total_max,
        log_origin=args.log_origin, witnesses=tuple(args.witness or ()), witness_quorum=args.witness_quorum,
        anchor_policy=AnchorPolicy(interval_s=args.anchor_interval_s, fee_rate_max_sat_per_vb=args.fee_rate_max,
                                   fee_max_sats=args.fee_max_sats, block_poll_interval_s=args.block_poll_interval_s))


def cmd_serve(args) -> int:
    if args.witness_quorum is None:
        args.witness_quorum = len(args.witness or ())
    server = compose.build_server(_server_config(args)).start()
    print(f"reserve-ledger serving on port {server.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def cmd_certs(args) -> int:
    identities = parse_identities(args.identity) if args.identity else None
    out = init_certs(args.dir, identities, force=args.force) if identities else init_certs(args.dir, force=args.force)
    print(f"wrote ca.pem, server.pem/.key and client certificates to {out}; keep ca.key off the server "
          "(the server needs only ca.pem, server.pem and server.key)")
    return 0


def cmd_demo(args) -> int:
    from services.cli.demo import run_demo  # the demo pulls in the whole stack; only `demo` needs it
    return run_demo(args.data_dir)


def cmd_rebuild(args) -> int:
    storage = storage_from(args)
    key_path = compose.existing_signing_key_path(storage, args.signing_key) if args.replace else None
    if args.replace and key_path is None:
        raise ConfigurationInvalid("rebuild --replace seals the replay with the tree-head key: pass --signing-key FILE")
    proofs = compose.sealing_proofs(key_path) if args.replace else compose.reader_proofs(storage, None, args.signing_key)
    ledger = compose.open_ledger(storage, proofs=proofs)
    try:
        size = ledger.store.log_size()
        with tqdm(total=size, unit="event", desc="replaying", disable=not sys.stderr.isatty()) as bar:
            comparison = ledger.compare_saved(lambda position: bar.update(position - bar.n))
            bar.update(size - bar.n)
        for row, position, _ in comparison.differing:
            print(f"the saved {row} at position {position} DIFFERS FROM the replay")
        print(f"replayed {size} events; " + (f"{len(comparison.differing)} saved state(s) differ" if comparison.differing
                                            else "every saved state equals the replay"))
        if comparison.differing and not args.replace:
            print("left as they are (evidence); `reserve-ledger rebuild --replace` replaces them and keeps the old "
                  "ones for inspection")
        for kept in ledger.replace_saved(comparison) if comparison.differing and args.replace else ():
            print(f"replaced by the replay; the old one is kept for inspection as projections row {kept!r}")
    except InvariantBroken as broken:
        raise CheckFailed(f"the replay refuses the log: {broken}; run `reserve-ledger verify` for details") from None
    finally:
        ledger.close()
    return 1 if comparison.differing else 0


def cmd_verify(args) -> int:
    from services.audit.verify import verify_ledger
    storage = storage_from(args)
    public_key = compose.public_key_of(storage, args.public_key, args.signing_key)
    ledger = compose.open_ledger(storage, proofs=compose.checking_proofs(public_key))
    try:
        size = ledger.store.log_size()
        with tqdm(total=size, unit="event", desc="verifying", disable=not sys.stderr.isatty()) as bar:
            report = verify_ledger(ledger, public_key, lambda position: bar.update(position - bar.n))
    finally:
        ledger.close()
    for problem in report.problems:
        print(f"FAIL {problem.description}")
    for note in report.notes:
        print(f"note: {note}")
    if public_key is None:
        print("note: no public key given (--public-key HEX or --signing-key FILE): signatures and the seals of saved "
              "states were not checked")
    if report.problems:
        where = report.first_bad_position
        print(f"{len(report.problems)} problem(s); " + (
            f"first bad position: {where}" if where is not None else
            "no event position is at fault (tree heads, keys or saved states: see the lines above)"))
        return 1
    print(f"OK: {report.events} events, {report.tree_heads} signed tree heads, projections equal a replay")
    return 0


def cmd_balances(args) -> int:
    storage = storage_from(args)
    ledger = compose.open_ledger(storage, proofs=compose.reader_proofs(storage))
    try:
        if args.as_of_position is None:
            with ledger.reading() as live:
                state = live.copy()
        else:
            try:
                state = ledger.state_as_of(args.as_of_position)
            except ledger_errors.PositionBeyondLog:
                raise ConfigurationInvalid(
                    f"--as-of-position {args.as_of_position} is beyond the log (size {ledger.store.log_size()}; "
                    "positions count from 0)") from None
    finally:
        ledger.close()
    if state.position < 0:
        print("the log is empty")
    else:
        print(f"as of position {state.position} (positions count from 0)")
    print(balances_table(views.balances(state)))
    print(holdings_table(views.holdings(state)))
    return 0


def _add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="run the gRPC service")
    add_storage_options(serve)
    config = compose.ServerConfig
    add_setting(serve, "--listen", config, "listen")
    add_setting(serve, "--certs", config, "certs_dir", metavar="DIR")
    add_setting(serve, "--insecure-loopback", config, "insecure_loopback", action="store_true")
    add_setting(serve, "--init", config, "create_store", action="store_true")
    add_setting(serve, "--purchase-approval-threshold-sats", config, "purchase_approval_threshold_sats",
                type=int, metavar="SATS")
    serve.add_argument("--signing-key", metavar="FILE|URI", help="Ed25519 key for tree heads: a PEM file (default "
                       "DATA_DIR/tree-head-signing.key, created on first start; required with --database) or a "
                       "pkcs11: URI naming a key in a token (`keys init --pkcs11`)")
    keys.add_token_options(serve)
    add_setting(serve, "--tree-head-keep-every-events", config, "tree_head_keep_every_events", type=int, metavar="N")
    add_setting(serve, "--metrics-listen", config, "metrics_listen", metavar="HOST:PORT")
    add_setting(serve, "--call-threads", config, "call_threads", type=int, metavar="N")
    add_setting(serve, "--streams-per-identity-max", config, "streams_per_identity_max", type=int, metavar="N")
    add_setting(serve, "--streams-total-max", config, "streams_total_max", type=int, metavar="N")
    serve.add_argument("--chain", metavar="SPEC", help=f"anchor tree heads in Bitcoin: {CHAIN_SPEC_HELP} "
                       "(default: no anchoring)")
    serve.add_argument("--anchor-key", metavar="FILE|URI", help="WIF key of the fee-only anchor wallet "
                       "(regtest default DATA_DIR/anchor-wallet.wif, created on first start), or a pkcs11: URI "
                       "naming a secp256k1 key in a token")
    add_setting(serve, "--network", config, "anchor_network", choices=compose.NETWORKS)
    serve.add_argument("--anchor-interval-s", type=positive_number(float), default=ANCHOR_DEFAULTS.interval_s,
                       help=f"anchor step period (default {ANCHOR_DEFAULTS.interval_s:g})")
    serve.add_argument("--block-poll-interval-s", type=positive_number(float),
                       default=ANCHOR_DEFAULTS.block_poll_interval_s,
                       help="how often to ask the node for its tip; a new block refreshes the anchors' "
                            f"confirmations and catches reorgs (default {ANCHOR_DEFAULTS.block_poll_interval_s:g})")
    add_setting(serve, "--monitor-interval-s", config, "monitor_interval_s", type=positive_number(float), metavar="S")
    serve.add_argument("--fee-rate-max", type=positive_number(Decimal), metavar="SAT_PER_VB",
                       default=ANCHOR_DEFAULTS.fee_rate_max_sat_per_vb,
                       help=f"cap on the anchor fee rate (default {ANCHOR_DEFAULTS.fee_rate_max_sat_per_vb} sat/vB)")
    serve.add_argument("--fee-max-sats", type=positive_number(int), default=ANCHOR_DEFAULTS.fee_max_sats,
                       metavar="SATS", help=f"cap on one anchor's fee (default {ANCHOR_DEFAULTS.fee_max_sats})")
    add_setting(serve, "--log-origin", config, "log_origin", metavar="ORIGIN")
    serve.add_argument("--witness", action="append", metavar="NAME=VKEY@URL",
                       help="a witness to send every new tree head to (C2SP tlog-witness; repeatable); its "
                            "cosignatures are stored and carried by GetCheckpoint and bundles")
    serve.add_argument("--witness-quorum", type=int, default=None, metavar="K",
                       help="cosignatures that make a head witnessed (default: every --witness)")
    serve.set_defaults(run=cmd_serve)


def _add_certs(commands) -> None:
    certs = commands.add_parser("certs", help="development certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, parser_class=OneLineArgumentParser)
    init = certs_sub.add_parser("init", help="create a CA, a server and client certificates")
    init.add_argument("dir", metavar="DIR", help="new directory (or one without a CA) for the certificates")
    init.add_argument("--identity", action="append", metavar="NAME:ROLE",
                      help="client identity (repeatable; roles: operator, approver, auditor, admin); default "
                           "alice:operator bob:approver carol:approver dave:auditor erin:admin and frank as both "
                           "operator and approver (two certificates, frank-operator and frank-approver)")
    init.add_argument("--force", action="store_true",
                      help="replace an existing CA (every certificate it issued stops working)")
    init.set_defaults(run=cmd_certs)


def _add_local_commands(commands) -> None:
    demo = commands.add_parser("demo", help="run the demonstration scenario")
    demo.add_argument("--data-dir", metavar="DIR", help="keep the demo's data here (a new or empty directory; "
                                                        "default: a temporary directory)")
    demo.set_defaults(run=cmd_demo)
    verify = commands.add_parser("verify", help="re-check stored events, Merkle log, tree heads and projections")
    add_storage_options(verify)
    verify.add_argument("--public-key", metavar="HEX", help="raw Ed25519 public key of the tree heads (64 hex)")
    verify.add_argument("--signing-key", metavar="FILE", help="take the public key from this key file")
    verify.set_defaults(run=cmd_verify)
    rebuild = commands.add_parser("rebuild", help="replay every event and compare the saved projection and "
                                  "checkpoints with it")
    add_storage_options(rebuild)
    rebuild.add_argument("--replace", action="store_true", help="replace each saved state that differs by the replay "
                         "(sealed); the old one is kept for inspection as a projections row named set-aside:...")
    rebuild.add_argument("--signing-key", metavar="FILE", help="tree-head key that seals the replay (default "
                         "DATA_DIR/tree-head-signing.key; required with --database and --replace)")
    rebuild.set_defaults(run=cmd_rebuild)
    balances = commands.add_parser("balances", help="print balances and holdings")
    add_storage_options(balances)
    balances.add_argument("--as-of-position", type=position, metavar="N",
                          help="as of the event at log position N (positions count from 0; default: the latest)")
    balances.set_defaults(run=cmd_balances)


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="reserve-ledger", description="Event-sourced ledger for Bitcoin reserves")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any failure")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    _add_serve(commands)
    _add_certs(commands)
    _add_local_commands(commands)
    anchor.add_anchor_commands(commands)
    add_regtest_node_command(commands)
    audit.add_audit_commands(commands)
    witness.add_witness_commands(commands)
    witness.add_checkpoint_command(commands)
    reserves.add_reserves_commands(commands)
    keys.add_keys_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run_command(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
