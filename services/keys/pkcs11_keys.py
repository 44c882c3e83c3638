"""Keys that never leave a PKCS#11 token (an HSM, or SoftHSM2 in tests), used through python-pkcs11.

`reserve-ledger keys init --pkcs11 URI` generates the key pair inside the token: the private key is
CKA_SENSITIVE and not CKA_EXTRACTABLE, so the token refuses to reveal or wrap it; the service only ever asks
the token to sign. Two kinds:
  tree-head  Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN, signed with CKM_EDDSA): tree heads, saved-state seals
  anchor     secp256k1 ECDSA (CKM_EC_KEY_PAIR_GEN, CKM_ECDSA over the BIP-143 digest): the anchor wallet;
             the token's raw r||s is normalised to low S (BIP 62/146) and encoded as minimal DER (BIP 66).
A session is opened per key and kept; signing through it is serialised (a PKCS#11 session is not for
concurrent operations).
"""

import os
import threading

import pkcs11
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from services.errors import AlreadyExists, ConfigurationInvalid, NothingStoredHere
from services.keys.files import read_secret_line
from services.keys.uri import Pkcs11Uri

DEFAULT_MODULE_PATH = "/usr/lib/softhsm/libsofthsm2.so"
ED25519_OID = "1.3.101.112"
SECP256K1_OID = "1.3.132.0.10"
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
KINDS = ("tree-head", "anchor")
_libraries: dict[str, "pkcs11.lib"] = {}
_libraries_lock = threading.Lock()


class TokenKeyUnavailable(ConfigurationInvalid):
    """The token, its PIN or the key cannot be used (one line saying which and how to fix it)."""


def _library(module_path: str):
    with _libraries_lock:
        if module_path not in _libraries:
            if not os.path.isfile(module_path):
                raise TokenKeyUnavailable(f"PKCS#11 module {module_path}: no such file (install the token's "
                                          "library, or name it with --pkcs11-module or module-path= in the URI)")
            try:
                _libraries[module_path] = pkcs11.lib(module_path)
            except (OSError, RuntimeError) as error:
                raise TokenKeyUnavailable(f"PKCS#11 module {module_path} cannot be loaded: {error}") from None
        return _libraries[module_path]


def open_session(uri: Pkcs11Uri, *, rw: bool = False):
    """A logged-in session on the token the URI names (PIN from its pin-source file, mode 0600)."""
    if not uri.pin_file:
        raise TokenKeyUnavailable(f"{uri}: no PIN file; add pin-source=file:PATH to the URI or pass --pin-file")
    pin = read_secret_line(uri.pin_file, "the PKCS#11 PIN file")
    library = _library(uri.module_path or DEFAULT_MODULE_PATH)
    try:
        token = library.get_token(token_label=uri.token)
    except pkcs11.NoSuchToken:
        raise NothingStoredHere(f"{uri}: no token labelled {uri.token!r} in {uri.module_path or DEFAULT_MODULE_PATH}"
                                ) from None
    except pkcs11.MultipleTokensReturned:
        raise TokenKeyUnavailable(f"{uri}: several tokens are labelled {uri.token!r}") from None
    try:
        return token.open(user_pin=pin, rw=rw)
    except pkcs11.UserAlreadyLoggedIn:  # the login belongs to the process: another key's session made it
        return token.open(rw=rw)
    except (pkcs11.PinIncorrect, pkcs11.PinLenRange, pkcs11.PinInvalid):
        raise TokenKeyUnavailable(f"{uri}: the token refuses the PIN in {uri.pin_file}") from None
    except pkcs11.PinLocked:
        raise TokenKeyUnavailable(f"{uri}: the token's user PIN is locked (too many wrong PINs)") from None


def _find(session, uri: Pkcs11Uri, object_class):
    template = {Attribute.LABEL: uri.object, Attribute.CLASS: object_class}
    if uri.id is not None:
        template[Attribute.ID] = uri.id
    return list(session.get_objects(template))


def _key_pair(session, uri: Pkcs11Uri, key_type: KeyType):
    privates, publics = _find(session, uri, ObjectClass.PRIVATE_KEY), _find(session, uri, ObjectClass.PUBLIC_KEY)
    if not privates:
        raise NothingStoredHere(f"{uri}: no private key labelled {uri.object!r} in the token; create it with "
                                f"`reserve-ledger keys init --pkcs11 URI`")
    if len(privates) > 1 or len(publics) > 1:
        raise TokenKeyUnavailable(f"{uri}: several keys are labelled {uri.object!r}; add id=... to the URI")
    if not publics:
        raise TokenKeyUnavailable(f"{uri}: the token holds no public key labelled {uri.object!r} beside the "
                                  "private key (this service reads the public half from it)")
    private, public = privates[0], publics[0]
    if private.key_type != key_type:
        raise TokenKeyUnavailable(f"{uri}: the key is {private.key_type.name}, not {key_type.name}")
    return private, public


def _ec_point(public, size: int) -> bytes:
    """CKA_EC_POINT, unwrapped from its DER OCTET STRING when the token wraps it (PKCS#11 3.0 says it should)."""
    point = bytes(public[Attribute.EC_POINT])
    if len(point) == size + 2 and point[0] == 0x04 and point[1] == size:
        return point[2:]
    if len(point) != size:
        raise TokenKeyUnavailable(f"the token's public key has {len(point)} bytes; expected {size}")
    return point


def compressed_public_key(uncompressed: bytes) -> bytes:
    if len(uncompressed) != 65 or uncompressed[0] != 0x04:
        raise TokenKeyUnavailable("the token's secp256k1 public key is not an uncompressed point")
    y = int.from_bytes(uncompressed[33:], "big")
    return bytes([2 + (y & 1)]) + uncompressed[1:33]


def low_s_der(raw_signature: bytes) -> bytes:
    """A token's raw ECDSA signature r||s as Bitcoin needs it: s normalised to the lower half, minimal DER."""
    if len(raw_signature) != 64:
        raise ValueError(f"a raw secp256k1 signature has 64 bytes, not {len(raw_signature)}")
    r, s = int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
    if s > SECP256K1_ORDER // 2:
        s = SECP256K1_ORDER - s
    return encode_dss_signature(r, s)


class _TokenKey:
    def __init__(self, uri: Pkcs11Uri, key_type: KeyType):
        self.uri = uri
        self._session = open_session(uri)
        self._lock = threading.Lock()
        try:
            self._private, self._public = _key_pair(self._session, uri, key_type)
        except BaseException:
            self._session.close()
            raise

    def _sign(self, data: bytes, mechanism: Mechanism) -> bytes:
        with self._lock:
            return bytes(self._private.sign(data, mechanism=mechanism))

    def close(self) -> None:
        with self._lock:
            self._session.close()


class TokenEd25519Signer(_TokenKey):
    """The tree-head key in a token: `sign(message) -> 64-byte signature`, `public_key_bytes` (raw 32 bytes),
    and `public_key()` like cryptography's Ed25519PrivateKey, so every signer of heads and seals takes it."""

    def __init__(self, uri: Pkcs11Uri):
        super().__init__(uri, KeyType.EC_EDWARDS)
        self.public_key_bytes = _ec_point(self._public, 32)

    def sign(self, message: bytes) -> bytes:
        return self._sign(message, Mechanism.EDDSA)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key_bytes)


class TokenSecp256k1Signer(_TokenKey):
    """The anchor wallet's key in a token: `public_key` (33-byte compressed) and `sign_digest(32 bytes) -> DER`."""

    def __init__(self, uri: Pkcs11Uri):
        super().__init__(uri, KeyType.EC)
        self.public_key = compressed_public_key(_ec_point(self._public, 65))

    def sign_digest(self, digest: bytes) -> bytes:
        if len(digest) != 32:
            raise ValueError("an ECDSA digest has 32 bytes")
        return low_s_der(self._sign(digest, Mechanism.ECDSA))


def generate_key(uri: Pkcs11Uri, kind: str) -> bytes:
    """Generate a `kind` key pair inside the token, the private half sensitive and never extractable; returns
    the public key (raw 32 bytes for tree-head, 33-byte compressed for anchor). Refuses an existing label."""
    assert kind in KINDS, kind
    with open_session(uri, rw=True) as session:
        if _find(session, uri, ObjectClass.PRIVATE_KEY) or _find(session, uri, ObjectClass.PUBLIC_KEY):
            raise AlreadyExists(f"{uri}: the token already holds a key labelled {uri.object!r}; choose another "
                                "object= label (keys are never replaced in place)")
        key_type, curve, mechanism = ((KeyType.EC_EDWARDS, ED25519_OID, Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
                                      if kind == "tree-head" else (KeyType.EC, SECP256K1_OID, Mechanism.EC_KEY_PAIR_GEN))
        parameters = session.create_domain_parameters(
            key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True)
        common = {Attribute.TOKEN: True, Attribute.LABEL: uri.object, Attribute.ID: uri.id or os.urandom(8)}
        public, _private = parameters.generate_keypair(
            store=True, mechanism=mechanism,
            public_template={**common, Attribute.VERIFY: True},
            private_template={**common, Attribute.SIGN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                              Attribute.EXTRACTABLE: False})
        return _ec_point(public, 32) if kind == "tree-head" else compressed_public_key(_ec_point(public, 65))
