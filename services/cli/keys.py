"""`reserve-ledger keys`: keys generated inside a PKCS#11 token (and, later, rotation of the tree-head key)."""

import pathlib

from services import compose
from services.cli.errors import OneLineArgumentParser
from services.cli.options import add_storage_options, help_of, storage_from
from services.errors import ConfigurationInvalid
from services.keys.uri import is_pkcs11_uri


def add_token_options(parser) -> None:
    """--pin-file and --pkcs11-module, for pkcs11: URIs that carry no pin-source / module-path themselves."""
    parser.add_argument("--pin-file", dest="pkcs11_pin_file", metavar="FILE",
                        help=help_of(compose.ServerConfig, "pkcs11_pin_file"))
    parser.add_argument("--pkcs11-module", dest="pkcs11_module", metavar="PATH",
                        help=help_of(compose.ServerConfig, "pkcs11_module"))


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


def cmd_keys_rotate(args) -> int:
    from services.keys.rotation import rotate_tree_head_key
    storage = storage_from(args)
    access = compose.TokenAccess(args.pkcs11_pin_file, args.pkcs11_module)
    compose.check_store_exists(storage)
    old_spec = compose.existing_signing_key_path(storage, args.signing_key)
    if old_spec is None:
        raise ConfigurationInvalid("keys rotate needs the current key: pass --signing-key FILE|URI")
    new_spec = args.new_signing_key if is_pkcs11_uri(args.new_signing_key) else pathlib.Path(args.new_signing_key)
    old_key = compose.load_signing_key(old_spec, create=False, access=access)
    new_key = compose.load_signing_key(new_spec, create=True, access=access)
    ledger = compose.open_ledger(storage)  # no saved state is trusted or sealed here: the rotation re-seals them
    try:
        recorded = rotate_tree_head_key(ledger, old_key, new_key, compose.clock_us)
    finally:
        ledger.close()
    print(f"recorded SigningKeyRotated at position {recorded.position}"
          + (" (already recorded earlier)" if recorded.replayed else ""))
    print(f"heads up to tree size {recorded.position} verify with the old key {old_key.public_key_bytes.hex()}; "
          f"from tree size {recorded.position + 1} on with the new key {new_key.public_key_bytes.hex()}")
    print(f"start the service with --signing-key {args.new_signing_key}; auditors keep pinning the log's first key "
          "(audit --log-key) and follow the rotation from it")
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
    rotate = keys_sub.add_parser("rotate", help="hand the tree-head key over to a new key: a SigningKeyRotated event "
                                                "signed by both (run with the service stopped)")
    add_storage_options(rotate)
    rotate.add_argument("--signing-key", metavar="FILE|URI", help="the current tree-head key (default "
                        "DATA_DIR/tree-head-signing.key; required with --database)")
    rotate.add_argument("--new-signing-key", required=True, metavar="FILE|URI",
                        help="the new key: a PEM file (created, mode 0600, when missing) or a pkcs11: URI of a key "
                             "made with `keys init`")
    add_token_options(rotate)
    rotate.set_defaults(run=cmd_keys_rotate)
