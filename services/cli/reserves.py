"""`reserve-ledger reserves challenge | prove-control | sign-challenge`: BIP-322 proofs of key control.

challenge       the auditor: a fresh nonce, the bundle's latest signed tree head, the node's tip, and every
                funded script of every custody account (what custodians must sign for)
prove-control   the auditor: every signature run through Bitcoin Core's interpreter (libbitcoinkernel); per
                account, the sats whose control is proven (exit 1 unless all of them are)
sign-challenge  DEVELOPMENT ONLY: answers a challenge with the demo's and tests' own keys
"""

import json
import pathlib

from services import compose
from services.audit import bundle
from services.bitcoin.backends import CHAIN_SPEC_HELP, check_spec, close_backend
from services.cli.tables import btc
from services.errors import CheckFailed, ConfigurationInvalid, NothingStoredHere
from services.reserves.control import ChallengeInvalid, read_challenge

NETWORKS = ("mainnet", "testnet", "signet", "regtest")


def add_reserves_commands(commands) -> None:
    reserves = commands.add_parser("reserves", help="proofs of key control (BIP-322): challenge, prove-control")
    flow = reserves.add_subparsers(dest="reserves_command", required=True, parser_class=type(reserves))
    challenge = flow.add_parser("challenge", help="write a control challenge for the custodians to sign")
    challenge.add_argument("--bundle", required=True, metavar="DIR", help="an audit bundle (its custody accounts "
                                                                          "and latest signed tree head)")
    challenge.add_argument("--chain", required=True, metavar="SPEC", help=f"the auditor's node: {CHAIN_SPEC_HELP}")
    challenge.add_argument("--network", choices=NETWORKS, default="regtest", help="addresses are shown for it")
    challenge.add_argument("--out", required=True, metavar="FILE", help="the challenge JSON to write (must not exist)")
    challenge.set_defaults(run=cmd_challenge)
    prove = flow.add_parser("prove-control", help="check the custodians' BIP-322 signatures against a challenge")
    prove.add_argument("--challenge", required=True, metavar="FILE")
    prove.add_argument("--signatures", required=True, metavar="DIR", help="one ACCOUNT.json per account "
                                                                          "(docs/FORMATS-audit.md §6)")
    prove.add_argument("--chain", metavar="SPEC", help="re-read the funded scripts on this node now (default: the "
                                                       "challenge's list at its height)")
    prove.add_argument("--report", metavar="FILE.json", help="write the control-proof report")
    prove.set_defaults(run=cmd_prove_control)
    sign = flow.add_parser("sign-challenge", help="DEVELOPMENT ONLY: sign a challenge with dev keys (*.wif, *.xprv)")
    sign.add_argument("--challenge", required=True, metavar="FILE")
    sign.add_argument("--keys", required=True, metavar="DIR", help="directory of *.wif and *.xprv files")
    sign.add_argument("--out", required=True, metavar="DIR", help="signatures directory to write")
    sign.set_defaults(run=cmd_sign_challenge)


def cmd_challenge(args) -> int:
    from services.reserves.challenge import build_challenge, write_challenge
    check_spec(args.chain)
    out = pathlib.Path(args.out)
    if out.exists():
        raise ConfigurationInvalid(f"--out {out} exists; choose a new file (a challenge is never overwritten)")
    directory = pathlib.Path(args.bundle)
    if not directory.is_dir():
        raise NothingStoredHere(f"{directory}: no such bundle directory (write one with `reserve-ledger export`)")
    backend = compose.open_chain(args.chain)
    try:
        challenge = build_challenge(directory, backend, args.network)
    except bundle.BundleInvalid as error:
        raise CheckFailed(f"bundle: {error}") from None
    finally:
        close_backend(backend)
    write_challenge(challenge, out)
    funded = sum(len(a["funded_scripts"]) for a in challenge["accounts"])
    print(f"wrote {out}: nonce {challenge['nonce'][:16]}…, tree size {challenge['tree_size']}, height "
          f"{challenge['height']}, {len(challenge['accounts'])} accounts, {funded} funded scripts to sign for")
    return 0


def _challenge(path: str) -> pathlib.Path:
    challenge = pathlib.Path(path)
    try:
        read_challenge(challenge)
    except ChallengeInvalid as error:
        raise ConfigurationInvalid(f"--challenge {error}") from None
    return challenge


def cmd_prove_control(args) -> int:
    from services.reserves.challenge import control_report
    challenge = _challenge(args.challenge)
    signatures = pathlib.Path(args.signatures)
    if not signatures.is_dir():
        raise NothingStoredHere(f"--signatures {signatures}: no such directory")
    if args.chain:
        check_spec(args.chain)
    backend = compose.open_chain(args.chain) if args.chain else None
    try:
        report = control_report(challenge, signatures, backend)
    finally:
        if backend is not None:
            close_backend(backend)
    print_control_report(report)
    if args.report:
        pathlib.Path(args.report).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"report: {args.report}")
    return 0 if report["complete"] else 1


def print_control_report(report: dict) -> None:
    for account in report["accounts"]:
        print(f"control {account['account_id']}: {btc(account['proven_sats'])} of {btc(account['funded_sats'])} BTC "
              f"proven ({len(account['scripts'])} funded scripts)")
        for script in account["scripts"]:
            if script["status"] != "proven":
                print(f"  {script['status']} {script['source'] or script['script_pubkey']}: {script['reason']}")
    print(f"control proven for {btc(report['proven_sats'])} of {btc(report['funded_sats'])} BTC at height "
          f"{report['coins_read_at_height']} (challenge nonce {report['nonce'][:16]}…, tree size "
          f"{report['tree_size']})")


def cmd_sign_challenge(args) -> int:
    from services.reserves.dev_signer import DevKeys, sign_challenge, write_signatures
    challenge = read_challenge(_challenge(args.challenge))
    keys_dir = pathlib.Path(args.keys)
    if not keys_dir.is_dir():
        raise NothingStoredHere(f"--keys {keys_dir}: no such directory")
    try:
        keys = DevKeys.load(keys_dir)
    except ValueError as error:
        raise ConfigurationInvalid(f"--keys {error}") from None
    paths = write_signatures(sign_challenge(challenge, keys), pathlib.Path(args.out))
    print(f"DEVELOPMENT ONLY: wrote {len(paths)} signature file(s) to {args.out}")
    return 0
