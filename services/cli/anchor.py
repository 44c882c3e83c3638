"""`reserve-ledger anchor` (one anchor step, or the PSBT flow for an external signer) and `reserve-ledger proof`."""

import argparse
import json
import pathlib
import sys

from services.bitcoin.backends import CHAIN_SPEC_HELP

NETWORKS = ("mainnet", "testnet", "signet", "regtest")


def _anchor_args(parser: argparse.ArgumentParser, chain_required: bool = True) -> None:
    parser.add_argument("--chain", required=chain_required, metavar="SPEC", help=CHAIN_SPEC_HELP)
    parser.add_argument("--network", choices=NETWORKS, default="regtest", help="network of the anchor key")
    parser.add_argument("--signing-key", metavar="FILE",
                        help="Ed25519 tree-head key (default DATA_DIR/tree-head-signing.key)")


def _config(args):
    from services.api.server import ServerConfig
    return ServerConfig(data_dir=None if args.database else args.data_dir, database_url=args.database,
                        signing_key_path=args.signing_key, chain=args.chain,
                        anchor_key_path=getattr(args, "anchor_key", None), anchor_network=args.network)


def _worker(args, ledger, backend, key=None):
    from ledger.anchor_policy import AnchorPolicy
    from services.anchoring.worker import AnchorWorker
    from services.api.server import clock_us, open_anchor_key, signing_key_path_of
    from services.store.signing import TreeHeadSigner, load_or_create_signing_key
    config = _config(args)
    signer = TreeHeadSigner(ledger.store, load_or_create_signing_key(signing_key_path_of(config)), clock_us)
    return AnchorWorker(ledger.store, signer, backend, key or open_anchor_key(config), AnchorPolicy(), clock_us)


def cmd_anchor(args) -> int:
    from services.bitcoin.backends import close_backend, open_backend
    from services.cli.main import _open_ledger
    from services.cli.tables import anchors_table
    from services.anchoring.worker import NoFundingCoin
    if not args.chain:
        print("reserve-ledger anchor: error: --chain SPEC is required", file=sys.stderr)
        return 2
    ledger, backend = _open_ledger(args), open_backend(args.chain)
    try:
        worker = _worker(args, ledger, backend)
        try:
            report = worker.step()
        except NoFundingCoin as error:
            print(f"{error}: send a few thousand sats to it (fees only; never reserve coins)", file=sys.stderr)
            return 1
        if not report.leader:
            print("another replica is anchoring right now; nothing done")
        for txid in report.replaced:
            print(f"replaced stuck anchor {txid}")
        for txid in report.built:
            print(f"broadcast anchor {txid}")
        print(anchors_table(ledger.store.list_anchors()))
    finally:
        close_backend(backend)
        ledger.close()
    return 0


def cmd_proof(args) -> int:
    from services.bitcoin.backends import close_backend, open_backend
    from services.cli.main import _open_ledger
    from services.anchoring.event_proofs import EventNotAnchoredYet, event_proof
    ledger, backend = _open_ledger(args), open_backend(args.chain)
    try:
        if not 0 <= args.position < ledger.store.log_size():
            print(f"position {args.position} is beyond the log (size {ledger.store.log_size()})", file=sys.stderr)
            return 2
        proof = event_proof(ledger, backend, args.position)
    except EventNotAnchoredYet as error:
        print(f"not anchored yet: {error}", file=sys.stderr)
        return 3
    finally:
        close_backend(backend)
        ledger.close()
    for path in proof.write(args.out):
        print(f"wrote {path}")
    print(f"check it with: ots verify -f {pathlib.Path(args.out) / 'event.bin'} {pathlib.Path(args.out) / 'event.bin.ots'}")
    return 0


def cmd_anchor_psbt(args) -> int:
    from services.bitcoin.backends import close_backend, open_backend
    from services.cli.main import _open_ledger
    ledger, backend = _open_ledger(args), open_backend(args.chain)
    try:
        request = _worker(args, ledger, backend, key=_watch_only(args)).prepare_psbt()
    finally:
        close_backend(backend)
        ledger.close()
    if request is None:
        print("nothing to anchor: the newest tree head is already anchored or an anchor is in flight")
        return 0
    pathlib.Path(args.out).write_text(request["psbt"] + "\n")
    pathlib.Path(args.out + ".request.json").write_text(json.dumps(request, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out} (unsigned PSBT for tree size {request['tree_size']}) and {args.out}.request.json")
    print("sign it with the anchor key (e.g. Bitcoin Core: walletprocesspsbt), then run `reserve-ledger anchor "
          f"submit --signed FILE --request {args.out}.request.json`")
    return 0


def cmd_anchor_submit(args) -> int:
    from services.bitcoin.backends import close_backend, open_backend
    from services.cli.main import _open_ledger
    request = json.loads(pathlib.Path(args.request).read_text())
    signed = pathlib.Path(args.signed).read_text().strip()
    ledger, backend = _open_ledger(args), open_backend(args.chain)
    try:
        txid = _worker(args, ledger, backend, key=_watch_only(args)).submit_signed_psbt(request, signed)
    finally:
        close_backend(backend)
        ledger.close()
    print(f"recorded and broadcast anchor {txid}")
    return 0


def _watch_only(args):
    from services.bitcoin.anchor_tx import WatchOnlyAnchorKey
    return WatchOnlyAnchorKey(bytes.fromhex(args.public_key), args.network)


def add_anchor_commands(commands) -> None:
    from services.cli.main import _storage_args
    anchor = commands.add_parser("anchor", help="one anchor step now (or the PSBT flow: anchor psbt / submit)")
    _storage_args(anchor)
    _anchor_args(anchor, chain_required=False)  # required, but argparse cannot say so before a sub-command
    anchor.add_argument("--anchor-key", metavar="FILE",
                        help="WIF key of the fee-only anchor wallet (regtest default DATA_DIR/anchor-wallet.wif)")
    anchor.set_defaults(run=cmd_anchor)
    flow = anchor.add_subparsers(dest="anchor_command")
    psbt = flow.add_parser("psbt", help="write the next anchor as an unsigned PSBT for an external signer")
    submit = flow.add_parser("submit", help="record and broadcast an anchor signed by an external signer")
    for parser in (psbt, submit):
        _storage_args(parser)
        _anchor_args(parser)
        parser.add_argument("--public-key", required=True, metavar="HEX",
                            help="33-byte compressed public key of the external anchor signer")
    psbt.add_argument("--out", required=True, metavar="FILE")
    psbt.set_defaults(run=cmd_anchor_psbt)
    submit.add_argument("--signed", required=True, metavar="FILE", help="the signed PSBT (base64)")
    submit.add_argument("--request", required=True, metavar="FILE", help="the .request.json `anchor psbt` wrote")
    submit.set_defaults(run=cmd_anchor_submit)
    proof = commands.add_parser("proof", help="write event.bin, event.bin.ots and proof.json for one event")
    _storage_args(proof)
    proof.add_argument("--chain", required=True, metavar="SPEC", help=CHAIN_SPEC_HELP)
    proof.add_argument("--position", required=True, type=int)
    proof.add_argument("--out", required=True, metavar="DIR")
    proof.set_defaults(run=cmd_proof)
