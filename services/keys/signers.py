"""One interface per key role, whether the key is a file or lives in a PKCS#11 token.

Tree-head key (Ed25519): `sign(message) -> bytes`, `public_key_bytes` (raw 32 bytes) and `public_key()`
(cryptography's Ed25519PublicKey), so the tree-head signer, saved-state seals and any other signer of the log's
statements (checkpoints) take a file key and a token key alike.
Anchor key (secp256k1): `network`, `public_key` (33-byte compressed), `script_pubkey`, `address`, and either a
key file's WIF (services/bitcoin/anchor_tx.AnchorKey) or `sign_digest(digest) -> low-S DER` (TokenAnchorKey).
A key is named by a file path or by an RFC 7512 `pkcs11:` URI (services/keys/uri.py).
"""

import pathlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.tree_heads import raw_public_key
from services.keys.uri import Pkcs11Uri, is_pkcs11_uri, parse_pkcs11_uri


class FileEd25519Signer:
    """The tree-head key held in this process's memory (read from a PEM file, mode 0600)."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_key_bytes = raw_public_key(private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def close(self) -> None:
        pass


def anchor_address(public_key: bytes, network: str) -> str:
    """The P2WPKH address of a compressed secp256k1 public key on `network`."""
    from services.bitcoin.anchor_tx import NETWORKS, KeyNetworkWrong, bech32_encode, p2wpkh_script_pubkey
    if network not in NETWORKS:
        raise KeyNetworkWrong(f"unknown network {network!r}; expected one of {sorted(NETWORKS)}")
    return bech32_encode(NETWORKS[network][1], 0, list(p2wpkh_script_pubkey(public_key)[2:]))


def as_signer(key):
    """A tree-head signer from cryptography's Ed25519PrivateKey too (tests and benchmarks load PEM files)."""
    return FileEd25519Signer(key) if isinstance(key, Ed25519PrivateKey) else key


class TokenAnchorKey:
    """The anchor wallet's P2WPKH key when it lives in a token; build_anchor_tx signs through `sign_digest`."""

    def __init__(self, signer, network: str):
        from services.bitcoin.anchor_tx import p2wpkh_script_pubkey
        self._signer = signer
        self.network = network
        self.public_key = signer.public_key
        self.script_pubkey = p2wpkh_script_pubkey(self.public_key)
        self.address = anchor_address(self.public_key, network)

    def __repr__(self) -> str:
        return f"TokenAnchorKey({self.network}, {self.address}, {self._signer.uri})"

    def sign_digest(self, digest: bytes) -> bytes:
        return self._signer.sign_digest(digest)


def token_uri(spec: str, pin_file: str | None = None, module_path: str | None = None) -> Pkcs11Uri:
    return parse_pkcs11_uri(spec).with_defaults(pin_file, module_path)


def open_tree_head_key(spec: str | pathlib.Path, *, create: bool = False, pin_file: str | None = None,
                       module_path: str | None = None):
    """The tree-head signer named by `spec`: a `pkcs11:` URI, or a PEM file (created, 0600, when `create`)."""
    if is_pkcs11_uri(str(spec)):
        from services.keys.pkcs11_keys import TokenEd25519Signer
        return TokenEd25519Signer(token_uri(str(spec), pin_file, module_path))
    from services.store.signing import load_or_create_signing_key
    return FileEd25519Signer(load_or_create_signing_key(spec))


def open_token_anchor_key(spec: str, network: str, pin_file: str | None = None, module_path: str | None = None):
    from services.keys.pkcs11_keys import TokenSecp256k1Signer
    return TokenAnchorKey(TokenSecp256k1Signer(token_uri(spec, pin_file, module_path)), network)
