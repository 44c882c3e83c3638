"""`reserve-ledger anchor` (one anchor step, or the PSBT flow for an external signer) and `reserve-ledger proof`."""

import argparse
import contextlib
import json
import pathlib

from ledger.anchor_policy import AnchorPolicy
from ledger.anchoring import AnchoringError
from ledger.errors import EventNotAnchoredYet
from services import compose
from services.anchoring.event_proofs import event_proof
from services.anchoring.worker import AnchorWorker, NoFundingCoin
from services.bitcoin.anchor_tx import WatchOnlyAnchorKey
from services.bitcoin.backends import CHAIN_SPEC_HELP, check_spec, close_backend
from services.cli.options import add_storage_options, position, storage_from
from services.cli.tables import anchors_table
from services.errors import CheckFailed, ConfigurationInvalid, NotYetAvailable

REGTEST_NODE_HINT = "reserve-ledger regtest-node --dir CHAIN_DIR"


def _anchor_args(parser: argparse.ArgumentParser, chain_required: bool = True) -> None:
    parser.add_argument("--chain", required=chain_required, metavar="SPEC", help=CHAIN_SPEC_HELP)
    parser.add_argument("--network", choices=compose.NETWORKS, default="regtest",
                        help="network of the anchor key (default regtest)")
    parser.add_argument("--signing-key", metavar="FILE",
                        help="Ed25519 tree-head key (default DATA_DIR/tree-head-signing.key)")


@contextlib.contextmanager
def _opened(args):
    """The ledger and the chain backend for one command, both closed afterwards."""
    check_spec(args.chain)
    ledger = compose.open_ledger(storage_from(args))
    try:
        backend = compose.open_chain(args.chain)
    except BaseException:
        ledger.close()
        raise
    try:
        yield ledger, backend
    finally:
        close_backend(backend)
        ledger.close()


def _worker(args, ledger, backend, key=None) -> AnchorWorker:
    storage = storage_from(args)
    signer = compose.tree_head_signer(ledger, compose.signing_key_path(storage, args.signing_key),
                                      create=storage.database_url is None)
    key = key or compose.open_anchor_key(storage, getattr(args, "anchor_key", None), args.network)
    return AnchorWorker(ledger.store, signer, backend, key, AnchorPolicy(), compose.clock_us)


def cmd_anchor(args) -> int:
    if not args.chain:
        raise ConfigurationInvalid("anchor needs --chain SPEC")
    storage = storage_from(args)
    compose.signing_key_path(storage, args.signing_key)
    compose.anchor_key_path(storage, args.anchor_key, args.network)
    with _opened(args) as (ledger, backend):
        worker = _worker(args, ledger, backend)
        try:
            report = worker.step()
        except NoFundingCoin as error:
            raise CheckFailed(f"{error}: send a few thousand sats to it (fees only; never reserve coins)") from None
        if not report.leader:
            print("another replica is anchoring right now; nothing done")
        for txid in report.replaced:
            print(f"replaced stuck anchor {txid}")
        for txid in report.built:
            print(f"broadcast anchor {txid}")
        print(anchors_table(ledger.store.list_anchors()))
    return 0


def cmd_proof(args) -> int:
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigurationInvalid(f"--out {out} is a file; give a directory")
    with _opened(args) as (ledger, backend):
        size = ledger.store.log_size()
        if args.position >= size:
            raise ConfigurationInvalid(f"--position {args.position} is beyond the log (size {size}; positions "
                                       "count from 0)")
        try:
            proof = event_proof(ledger, backend, args.position)
        except EventNotAnchoredYet as error:
            raise NotYetAvailable(f"not anchored yet: {error}") from None
    for path in proof.write(out):
        print(f"wrote {path}")
    print("check it with the stock OpenTimestamps client against a node that has the block (on regtest, serve the "
          f"chain with `{REGTEST_NODE_HINT}` and use its RPC URL): ots --btc-regtest --bitcoin-node URL verify -f "
          f"{out / 'event.bin'} {out / 'event.bin.ots'}")
    return 0


def cmd_anchor_psbt(args) -> int:
    out = pathlib.Path(args.out)
    if out.exists():
        raise ConfigurationInvalid(f"--out {out} already exists; choose a new file")
    key = _watch_only(args)
    with _opened(args) as (ledger, backend):
        request = _worker(args, ledger, backend, key=key).prepare_psbt()
    if request is None:
        print("nothing to anchor: the newest tree head is already anchored or an anchor is in flight")
        return 0
    out.write_text(request["psbt"] + "\n")
    pathlib.Path(args.out + ".request.json").write_text(json.dumps(request, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out} (unsigned PSBT for tree size {request['tree_size']}) and {args.out}.request.json")
    print("sign it with the anchor key (e.g. Bitcoin Core: walletprocesspsbt), then run `reserve-ledger anchor "
          f"submit --signed FILE --request {args.out}.request.json`")
    return 0


def _read_submission(args) -> tuple[dict, str]:
    try:
        request = json.loads(pathlib.Path(args.request).read_text())
        signed = pathlib.Path(args.signed).read_text().strip()
    except OSError as error:
        raise ConfigurationInvalid(f"{error.filename}: {error.strerror}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigurationInvalid(f"--request/--signed: not the files `anchor psbt` and the signer wrote "
                                   f"({error})") from None
    if not isinstance(request, dict):
        raise ConfigurationInvalid(f"--request {args.request}: not an anchor request")
    return request, signed


def cmd_anchor_submit(args) -> int:
    request, signed = _read_submission(args)
    key = _watch_only(args)
    with _opened(args) as (ledger, backend):
        try:
            txid = _worker(args, ledger, backend, key=key).submit_signed_psbt(request, signed)
        except (AnchoringError, KeyError) as error:
            raise CheckFailed(f"the signed PSBT was refused: {error}; nothing recorded") from None
    print(f"recorded and broadcast anchor {txid}")
    return 0


def _watch_only(args) -> WatchOnlyAnchorKey:
    try:
        return WatchOnlyAnchorKey(bytes.fromhex(args.public_key), args.network)
    except ValueError as error:
        raise ConfigurationInvalid(f"--public-key: {error} (a 33-byte compressed key, 66 hex digits)") from None


def add_anchor_commands(commands) -> None:
    anchor = commands.add_parser("anchor", help="one anchor step now (or the PSBT flow: anchor psbt / submit)")
    add_storage_options(anchor)
    _anchor_args(anchor, chain_required=False)  # required, but argparse cannot say so before a sub-command
    anchor.add_argument("--anchor-key", metavar="FILE",
                        help="WIF key of the fee-only anchor wallet (regtest default DATA_DIR/anchor-wallet.wif)")
    anchor.set_defaults(run=cmd_anchor)
    flow = anchor.add_subparsers(dest="anchor_command", parser_class=type(anchor))
    psbt = flow.add_parser("psbt", help="write the next anchor as an unsigned PSBT for an external signer")
    submit = flow.add_parser("submit", help="record and broadcast an anchor signed by an external signer")
    for parser in (psbt, submit):
        add_storage_options(parser)
        _anchor_args(parser)
        parser.add_argument("--public-key", required=True, metavar="HEX",
                            help="33-byte compressed public key of the external anchor signer")
    psbt.add_argument("--out", required=True, metavar="FILE", help="where to write the unsigned PSBT (base64); "
                                                                   "FILE.request.json is written beside it")
    psbt.set_defaults(run=cmd_anchor_psbt)
    submit.add_argument("--signed", required=True, metavar="FILE", help="the signed PSBT (base64)")
    submit.add_argument("--request", required=True, metavar="FILE", help="the .request.json `anchor psbt` wrote")
    submit.set_defaults(run=cmd_anchor_submit)
    proof = commands.add_parser("proof", help="write event.bin, event.bin.ots and proof.json for one event")
    add_storage_options(proof)
    proof.add_argument("--chain", required=True, metavar="SPEC", help=CHAIN_SPEC_HELP)
    proof.add_argument("--position", required=True, type=position, metavar="N",
                       help="log position of the event (positions count from 0)")
    proof.add_argument("--out", required=True, metavar="DIR", help="directory for event.bin, event.bin.ots and "
                                                                   "proof.json (created if missing)")
    proof.set_defaults(run=cmd_proof)
