"""`reserve-ledger keys`: keys generated inside a PKCS#11 token (and, later, rotation of the tree-head key)."""

from services import compose
from services.cli.errors import OneLineArgumentParser
from services.errors import ConfigurationInvalid
from services.keys.uri import is_pkcs11_uri


def add_token_options(parser) -> None:
    """--pin-file and --pkcs11-module, for pkcs11: URIs that carry no pin-source / module-path themselves."""
    config = compose.ServerConfig
    fields = {f.name: f for f in compose.dataclasses.fields(config)}
    parser.add_argument("--pin-file", dest="pkcs11_pin_file", metavar="FILE",
                        help=fields["pkcs11_pin_file"].metadata["help"])
    parser.add_argument("--pkcs11-module", dest="pkcs11_module", metavar="PATH",
                        help=fields["pkcs11_module"].metadata["help"])


def cmd_keys_init(args) -> int:
    from services.keys.pkcs11_keys import generate_key
    from services.keys.signers import anchor_address, token_uri
    if not is_pkcs11_uri(args.pkcs11):
        raise ConfigurationInvalid(f"--pkcs11 {args.pkcs11!r}: expected a pkcs11:token=LABEL;object=LABEL URI")
    uri = token_uri(args.pkcs11, args.pkcs11_pin_file, args.pkcs11_module)
    public_key = generate_key(uri, args.kind)
    print(f"generated a {args.kind} key inside the token ({uri}); it cannot be exported")
    print(f"public key: {public_key.hex()}")
    if args.kind == "anchor":
        print(f"anchor address ({args.network}): {anchor_address(public_key, args.network)}")
    print(f"use it with --{'signing-key' if args.kind == 'tree-head' else 'anchor-key'} '{uri}' and --pin-file")
    return 0


def add_keys_commands(commands) -> None:
    keys = commands.add_parser("keys", help="signing keys kept in a PKCS#11 token")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, parser_class=OneLineArgumentParser)
    init = keys_sub.add_parser("init", help="generate a key pair inside a PKCS#11 token (never extractable)")
    init.add_argument("--pkcs11", required=True, metavar="URI",
                      help="pkcs11:token=LABEL;object=LABEL[?pin-source=file:PATH&module-path=LIB] (RFC 7512)")
    init.add_argument("--kind", choices=("tree-head", "anchor"), default="tree-head",
                      help="tree-head: Ed25519 for tree heads and seals; anchor: secp256k1 for the anchor wallet "
                           "(default tree-head)")
    init.add_argument("--network", choices=compose.NETWORKS, default="regtest",
                      help="network of the anchor address printed (default regtest)")
    add_token_options(init)
    init.set_defaults(run=cmd_keys_init)
