"""`reserve-ledger anchor` (one anchor step, or the PSBT flow for an external signer) and `reserve-ledger proof`."""

import argparse
import contextlib
import datetime
import json
import pathlib

from ledger.anchor_policy import AnchorPolicy
from ledger.anchoring import AnchoringError
from ledger.errors import EventNotAnchoredYet
from ledger.limits import ANCHOR_REQUEST_SIZE_MAX_BYTES, ANCHORS_SHOWN_MAX
from services import compose
from services.anchoring.event_proofs import event_proof
from services.anchoring.worker import (
    AnchorRefusedByNode, AnchorTurnTaken, AnchorWorker, NoFundingCoin, NothingToAnchor,
)
from services.bitcoin.anchor_tx import (
    PSBT_SIZE_MAX_BYTES, AnchorKey, AnchorKeyError, KeyOrigin, KeyOriginInvalid, WatchOnlyAnchorKey,
    parse_key_origin,
)
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
        with _refusals("nothing anchored"):
            report = worker.step()
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


@contextlib.contextmanager
def _refusals(what: str):
    """Every refusal of the PSBT flow and the rotation as one line with its exit code (services/errors.py)."""
    try:
        yield
    except (AnchoringError, AnchorRefusedByNode) as error:
        raise CheckFailed(f"{what}: {error}") from None
    except NoFundingCoin as error:
        raise CheckFailed(f"{what}: {error}: send a few thousand sats to it (fees only; never reserve coins)") from None
    except (NothingToAnchor, AnchorTurnTaken) as error:
        raise NotYetAvailable(f"{what}: {error}") from None
    except AnchorKeyError as error:
        raise ConfigurationInvalid(f"{what}: {error}") from None


def _key_origin(text: str | None, option: str) -> KeyOrigin | None:
    try:
        return None if text is None else parse_key_origin(text)
    except KeyOriginInvalid as error:
        raise ConfigurationInvalid(f"{option}: {error}") from None


def cmd_anchor_psbt(args) -> int:
    out = pathlib.Path(args.out)
    request_path = pathlib.Path(args.out + ".request.json")
    for path in (out, request_path):
        if path.exists():
            raise ConfigurationInvalid(f"{path} already exists; choose a new --out FILE")
    key = _watch_only(args.public_key, args.network, "--public-key")
    rotate_to = None if args.rotate_to is None else _watch_only(args.rotate_to, args.network, "--rotate-to")
    origin = _key_origin(args.key_origin, "--key-origin")
    rotate_origin = _key_origin(args.rotate_to_key_origin, "--rotate-to-key-origin")
    with _opened(args) as (ledger, backend), _refusals("no PSBT written"):
        request, why_not = _worker(args, ledger, backend, key=key).prepare_psbt(
            origin, None if rotate_to is None else rotate_to.public_key, rotate_origin)
    if request is None:
        print(why_not)
        return 0
    out.write_text(request["psbt"] + "\n")
    request_path.write_text(json.dumps(request, indent=2, sort_keys=True) + "\n")
    bump = f", replacing the stuck anchor {request['replaces']}" if request["replaces"] else ""
    print(f"wrote {out} (unsigned PSBT for tree size {request['tree_size']}{bump}) and {request_path}; it is now "
          "the one outstanding request (any earlier one is no longer accepted)")
    print("sign it with the anchor key (e.g. Bitcoin Core: walletprocesspsbt), then run `reserve-ledger anchor "
          f"submit --signed FILE --request {request_path}`")
    return 0


def _read_submission(args) -> tuple[dict, bytes]:
    try:
        with open(args.request, "rb") as file:
            request_bytes = file.read(ANCHOR_REQUEST_SIZE_MAX_BYTES + 1)
        with open(args.signed, "rb") as file:
            signed = file.read(PSBT_SIZE_MAX_BYTES * 2)
    except OSError as error:
        raise ConfigurationInvalid(f"{error.filename}: {error.strerror}") from None
    try:
        if len(request_bytes) > ANCHOR_REQUEST_SIZE_MAX_BYTES:
            raise ValueError(f"larger than {ANCHOR_REQUEST_SIZE_MAX_BYTES} bytes")
        request = json.loads(request_bytes.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigurationInvalid(f"--request {args.request}: not the request file `anchor psbt` wrote "
                                   f"({error})") from None
    if not isinstance(request, dict) or not isinstance(request.get("public_key"), str):
        raise ConfigurationInvalid(f"--request {args.request}: not an anchor request")
    return request, signed


def cmd_anchor_submit(args) -> int:
    request, signed = _read_submission(args)
    key = _watch_only(args.public_key or request["public_key"], args.network, "--public-key")
    with _opened(args) as (ledger, backend), _refusals("the signed PSBT was refused"):
        txid = _worker(args, ledger, backend, key=key).submit_signed_psbt(request, signed)
    print(f"the node accepted it: recorded and broadcast anchor {txid}")
    return 0


def cmd_anchor_status(args) -> int:
    """Read-only: the outstanding PSBT request, the anchor genesis and the last anchors with their states."""
    ledger = compose.open_ledger(storage_from(args))
    try:
        store = ledger.store
        recorded, genesis, anchors = store.load_anchor_request(), store.load_anchor_genesis(), store.list_anchors()
    finally:
        ledger.close()
    print(f"anchor genesis: {genesis or 'none yet (no anchor was made)'}")
    if recorded is None:
        print("outstanding PSBT request: none")
    else:
        request = json.loads(recorded[0])
        bump = f", replaces {request['replaces']}" if request.get("replaces") else ""
        print(f"outstanding PSBT request: tree size {request['tree_size']}, txid {request['txid']}, spends "
              f"{request['prev_txid']}:{request['prev_vout']}, signer {request['public_key']}{bump}, issued at "
              f"{_utc(recorded[1])}")
    shown = anchors[-ANCHORS_SHOWN_MAX:]
    print(f"anchors: {len(anchors)}" + (f" (the last {len(shown)} shown)" if len(shown) < len(anchors) else ""))
    if shown:
        print(anchors_table(shown))
    return 0


def _utc(time_us: int) -> str:
    return datetime.datetime.fromtimestamp(time_us / 1e6, datetime.timezone.utc).isoformat(timespec="seconds")


def cmd_anchor_rotate(args) -> int:
    storage = storage_from(args)
    compose.anchor_key_path(storage, args.anchor_key, args.network)
    if args.to_anchor_key:
        try:
            new_public_key = AnchorKey.load(args.to_anchor_key, args.network).public_key
        except OSError as error:
            raise ConfigurationInvalid(f"--to-anchor-key {args.to_anchor_key}: {error.strerror}") from None
        except ValueError as error:
            raise ConfigurationInvalid(f"--to-anchor-key {args.to_anchor_key}: {error}") from None
    else:
        new_public_key = _watch_only(args.to_public_key, args.network, "--to-public-key").public_key
    with _opened(args) as (ledger, backend), _refusals("the anchor wallet was not rotated"):
        anchor = _worker(args, ledger, backend).rotate(new_public_key)
    print(f"broadcast anchor {anchor.txid} (tree size {anchor.tree_size}): its change pays the new anchor key "
          f"{new_public_key.hex()}; the chain of anchors continues there")
    print("from now on anchor with the new key: " + (f"--anchor-key {args.to_anchor_key}" if args.to_anchor_key
                                                       else f"`anchor psbt --public-key {new_public_key.hex()}`"))
    return 0


def _watch_only(public_key_hex: str, network: str, option: str) -> WatchOnlyAnchorKey:
    try:
        return WatchOnlyAnchorKey(bytes.fromhex(public_key_hex), network)
    except ValueError as error:
        raise ConfigurationInvalid(f"{option}: {error} (a 33-byte compressed key, 66 hex digits)") from None


def add_anchor_commands(commands) -> None:
    anchor = commands.add_parser("anchor", help="one anchor step now (or the PSBT flow: anchor psbt / submit)")
    add_storage_options(anchor)
    _anchor_args(anchor, chain_required=False)  # required, but argparse cannot say so before a sub-command
    anchor.add_argument("--anchor-key", metavar="FILE",
                        help="WIF key of the fee-only anchor wallet (regtest default DATA_DIR/anchor-wallet.wif)")
    anchor.set_defaults(run=cmd_anchor)
    flow = anchor.add_subparsers(dest="anchor_command", parser_class=type(anchor))
    psbt = flow.add_parser("psbt", help="write the next anchor (or a fee bump of a stuck one) as an unsigned PSBT "
                                        "for an external signer; it becomes the one outstanding request")
    submit = flow.add_parser("submit", help="record and broadcast an anchor signed by an external signer")
    for parser in (psbt, submit):
        add_storage_options(parser)
        _anchor_args(parser)
    psbt.add_argument("--public-key", required=True, metavar="HEX",
                      help="33-byte compressed public key of the external anchor signer")
    psbt.add_argument("--out", required=True, metavar="FILE", help="where to write the unsigned PSBT (base64); "
                                                                   "FILE.request.json is written beside it")
    psbt.add_argument("--key-origin", metavar="FINGERPRINT/PATH",
                      help="BIP-32 origin of the signer's key (e.g. d34db33f/84h/1h/0h/0/0), so an HD signer "
                           "finds it")
    psbt.add_argument("--rotate-to", metavar="HEX", help="move the chain of anchors to this new key: the change "
                                                         "pays it, and the next anchors are signed by it")
    psbt.add_argument("--rotate-to-key-origin", metavar="FINGERPRINT/PATH", help="BIP-32 origin of --rotate-to")
    psbt.set_defaults(run=cmd_anchor_psbt)
    submit.add_argument("--public-key", metavar="HEX", help="the external signer's key (default: the request's)")
    submit.add_argument("--signed", required=True, metavar="FILE", help="the signed PSBT (binary or base64)")
    submit.add_argument("--request", required=True, metavar="FILE", help="the .request.json `anchor psbt` wrote")
    submit.set_defaults(run=cmd_anchor_submit)
    status = flow.add_parser("status", help="show the outstanding PSBT request and the last anchors (read-only)")
    add_storage_options(status)
    status.set_defaults(run=cmd_anchor_status)
    rotate = flow.add_parser("rotate", help="move the chain of anchors to a new wallet key: the current key signs "
                                            "an anchor whose change pays the new key")
    add_storage_options(rotate)
    _anchor_args(rotate)
    rotate.add_argument("--anchor-key", metavar="FILE", help="WIF key of the current anchor wallet (regtest "
                                                             "default DATA_DIR/anchor-wallet.wif)")
    target = rotate.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-public-key", metavar="HEX", help="the new key held by an external signer (then "
                                                               "anchor with `anchor psbt`)")
    target.add_argument("--to-anchor-key", metavar="FILE", help="a new WIF key file (mode 0600) to anchor with")
    rotate.set_defaults(run=cmd_anchor_rotate)
    proof = commands.add_parser("proof", help="write event.bin, event.bin.ots and proof.json for one event")
    add_storage_options(proof)
    proof.add_argument("--chain", required=True, metavar="SPEC", help=CHAIN_SPEC_HELP)
    proof.add_argument("--position", required=True, type=position, metavar="N",
                       help="log position of the event (positions count from 0)")
    proof.add_argument("--out", required=True, metavar="DIR", help="directory for event.bin, event.bin.ots and "
                                                                   "proof.json (created if missing)")
    proof.set_defaults(run=cmd_proof)
