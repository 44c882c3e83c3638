"""Output descriptors a custody account may register (BIP 380-386, 389): the checksum and the shape.

The ledger checks, at its own entry, everything about a descriptor that needs no elliptic-curve arithmetic:
the BIP 380 checksum (required), the script shape this ledger reconciles (`wpkh`, `sh(wpkh)`,
`wsh(multi|sortedmulti)`, `sh(wsh(multi|sortedmulti))`, `tr` with a key path only), every key expression
(hex public keys of the right form, extended *public* keys with a valid base58 checksum, origins, paths with
no hardened step after an extended key, at most one multipath `<a;b>` step and one final `/*`), the multisig
threshold and key count. Private keys are refused: the log is immutable and public.

Deriving the scripts (BIP 32 child keys, tweaks) is the service's job (services/reserves/descriptors.py).
"""

import dataclasses
import hashlib
import re

from ledger.limits import DESCRIPTOR_LENGTH_MAX

# BIP 380: the characters a descriptor may use, in the order the checksum reads them (groups of 32).
INPUT_CHARSET = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
CHECKSUM_LENGTH = 8
_GENERATORS = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)

MULTI_KEYS_MAX = 20              # BIP 383 under wsh(); also the bound for sh(wsh())
HARDENED = 1 << 31
BRANCHES_MAX = 2                 # a multipath step names the receive and the change branch: <0;1>
EXTENDED_KEY_BYTES = 78
PUBLIC_VERSIONS = {bytes.fromhex("0488b21e"): "mainnet", bytes.fromhex("043587cf"): "testnet"}   # xpub, tpub
PRIVATE_VERSIONS = (bytes.fromhex("0488ade4"), bytes.fromhex("04358394"))                      # xprv, tprv
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_FINGERPRINT = re.compile(r"[0-9a-f]{8}")
_INDEX = re.compile(r"(0|[1-9][0-9]{0,9})(h|')?")


class DescriptorInvalid(ValueError):
    """Why a descriptor is refused: `rule` (UPPER_SNAKE, the field violation's reason) and a sentence."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


@dataclasses.dataclass(frozen=True)
class KeyExpression:
    text: str
    extended: bool                        # an xpub/tpub (else a hex public key)
    path: tuple[int, ...]                 # steps after the key, before the multipath step
    branches: tuple[int, ...] | None      # the multipath step's values, e.g. (0, 1)
    suffix: tuple[int, ...]               # steps after the multipath step
    ranged: bool                          # ends with /*


@dataclasses.dataclass(frozen=True)
class DescriptorShape:
    """What the ledger knows of a descriptor: its script type, threshold and keys."""

    script_type: str                      # wpkh, sh-wpkh, wsh, sh-wsh, tr
    threshold: int                        # 1 for single-key scripts
    sorted_keys: bool
    keys: tuple[KeyExpression, ...]

    @property
    def ranged(self) -> bool:
        return any(key.ranged for key in self.keys)

    @property
    def branch_count(self) -> int:
        return max((len(key.branches) for key in self.keys if key.branches), default=1)


# --- BIP 380 checksum ------------------------------------------------------------------------------------

def _polymod(symbols) -> int:
    state = 1
    for value in symbols:
        top = state >> 35
        state = ((state & 0x7FFFFFFFF) << 5) ^ value
        for bit, generator in enumerate(_GENERATORS):
            if top >> bit & 1:
                state ^= generator
    return state


def _symbols(body: str) -> list[int]:
    """Each character's position in its group of 32, and after every third character the three group numbers."""
    symbols, groups = [], []
    for char in body:
        position = INPUT_CHARSET.find(char)
        if position < 0:
            raise DescriptorInvalid("DESCRIPTOR_CHARACTER_INVALID", f"character {char!r} is not allowed in a "
                                                                    "descriptor (BIP 380)")
        symbols.append(position & 31)
        groups.append(position >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if groups:
        symbols.append(groups[0] * 3 + groups[1] if len(groups) == 2 else groups[0])
    return symbols


def descriptor_checksum(body: str) -> str:
    """The 8-character BIP 380 checksum of a descriptor without its `#`."""
    value = _polymod(_symbols(body) + [0] * CHECKSUM_LENGTH) ^ 1
    return "".join(CHECKSUM_CHARSET[value >> 5 * (CHECKSUM_LENGTH - 1 - i) & 31] for i in range(CHECKSUM_LENGTH))


def split_checksum(descriptor: str) -> str:
    """The descriptor's body once its required checksum is verified."""
    body, hash_sign, checksum = descriptor.partition("#")
    if not hash_sign:
        raise DescriptorInvalid("DESCRIPTOR_CHECKSUM_MISSING", "the descriptor needs its #checksum (BIP 380), e.g. "
                                                               "as Bitcoin Core's getdescriptorinfo prints it")
    if len(checksum) != CHECKSUM_LENGTH or any(c not in CHECKSUM_CHARSET for c in checksum):
        raise DescriptorInvalid("DESCRIPTOR_CHECKSUM_MALFORMED", f"the checksum must be {CHECKSUM_LENGTH} characters "
                                                                 f"of {CHECKSUM_CHARSET}")
    expected = descriptor_checksum(body)
    if checksum != expected:
        raise DescriptorInvalid("DESCRIPTOR_CHECKSUM_MISMATCH", f"checksum #{checksum} does not match the "
                                                                "descriptor (a character was mistyped)")
    return body


# --- the shape -------------------------------------------------------------------------------------------

def parse_descriptor(descriptor: str) -> DescriptorShape:
    """The shape of a checksummed descriptor of a supported kind; raises DescriptorInvalid naming the problem."""
    if len(descriptor) > DESCRIPTOR_LENGTH_MAX:
        raise DescriptorInvalid("DESCRIPTOR_TOO_LONG", f"at most {DESCRIPTOR_LENGTH_MAX} characters")
    body = split_checksum(descriptor)
    shape = _script(body)
    _check_lockstep(shape)
    return shape


def _unwrap(text: str, name: str) -> str | None:
    return text[len(name) + 1:-1] if text.startswith(name + "(") and text.endswith(")") else None


def _script(body: str) -> DescriptorShape:
    for wrapper, inner_type in (("sh", "sh-"), ("", "")):
        inner = _unwrap(body, wrapper) if wrapper else body
        if inner is None:
            continue
        if (key := _unwrap(inner, "wpkh")) is not None:
            return DescriptorShape(inner_type + "wpkh", 1, False, (_key(key, xonly=False),))
        if (script := _unwrap(inner, "wsh")) is not None:
            return _multisig(inner_type + "wsh", script)
        if not wrapper and (key := _unwrap(inner, "tr")) is not None:
            if "," in key:
                raise DescriptorInvalid("DESCRIPTOR_SCRIPT_UNSUPPORTED", "tr() with a script tree is not supported: "
                                                                         "register the key-path-only tr(KEY)")
            return DescriptorShape("tr", 1, False, (_key(key, xonly=True),))
    raise DescriptorInvalid("DESCRIPTOR_SCRIPT_UNSUPPORTED", "supported descriptors: wpkh(KEY), sh(wpkh(KEY)), "
                                                             "wsh(multi|sortedmulti(k,KEY,...)), sh(wsh(...)), tr(KEY)")


def _multisig(script_type: str, script: str) -> DescriptorShape:
    for name in ("multi", "sortedmulti"):
        arguments = _unwrap(script, name)
        if arguments is not None:
            break
    else:
        raise DescriptorInvalid("DESCRIPTOR_SCRIPT_UNSUPPORTED", "wsh() must hold multi(k,KEY,...) or "
                                                                 "sortedmulti(k,KEY,...)")
    threshold_text, *key_texts = arguments.split(",")
    if not re.fullmatch(r"[1-9][0-9]?", threshold_text) or not 1 <= int(threshold_text) <= len(key_texts):
        raise DescriptorInvalid("DESCRIPTOR_THRESHOLD_INVALID", f"the threshold {threshold_text!r} must be a number "
                                                                f"from 1 to the number of keys ({len(key_texts)})")
    if len(key_texts) > MULTI_KEYS_MAX:
        raise DescriptorInvalid("DESCRIPTOR_TOO_MANY_KEYS", f"at most {MULTI_KEYS_MAX} keys in a multisig")
    keys = tuple(_key(text, xonly=False) for text in key_texts)
    return DescriptorShape(script_type, int(threshold_text), name == "sortedmulti", keys)


def _key(text: str, *, xonly: bool) -> KeyExpression:
    key_text = _without_origin(text)
    head, *steps = key_text.split("/")
    if re.fullmatch(r"[0-9a-fA-F]+", head):
        if steps:
            raise DescriptorInvalid("DESCRIPTOR_KEY_INVALID", f"{head[:16]}...: a hex public key takes no "
                                                              "derivation steps")
        _hex_key(head, xonly)
        return KeyExpression(text, False, (), None, (), False)
    _extended_key(head)
    return _derivation(text, steps)


def _without_origin(text: str) -> str:
    if not text.startswith("["):
        if "]" in text:
            raise DescriptorInvalid("DESCRIPTOR_KEY_ORIGIN_INVALID", "a key origin must start with '['")
        return text
    origin, closing, rest = text[1:].partition("]")
    fingerprint, *steps = origin.split("/")
    if not closing or not _FINGERPRINT.fullmatch(fingerprint) or not all(_INDEX.fullmatch(s) for s in steps):
        raise DescriptorInvalid("DESCRIPTOR_KEY_ORIGIN_INVALID", f"[{origin}]: a key origin is [8 hex digits of "
                                                                 "fingerprint/0h/...] (BIP 380)")
    if not rest or rest.startswith("["):
        raise DescriptorInvalid("DESCRIPTOR_KEY_ORIGIN_INVALID", "one key origin, followed by a key")
    return rest


def _hex_key(head: str, xonly: bool) -> None:
    lowered = head.lower()
    if xonly and len(head) == 64:
        return
    if len(head) == 66 and lowered[:2] in ("02", "03"):
        return
    if len(head) == 130 and lowered[:2] == "04":
        raise DescriptorInvalid("DESCRIPTOR_KEY_UNCOMPRESSED", "uncompressed public keys cannot be used in segwit "
                                                               "or taproot scripts (BIP 382, 386)")
    xonly_hint = " or a 64-digit x-only key" if xonly else ""
    raise DescriptorInvalid("DESCRIPTOR_KEY_INVALID", f"{head[:16]}...: not a compressed public key (66 hex digits "
                                                      f"starting 02 or 03{xonly_hint})")


def _extended_key(head: str) -> None:
    data = base58check_decode(head)
    if data is None or len(data) != EXTENDED_KEY_BYTES:
        if data is not None and len(data) in (33, 34) and data[0] in (0x80, 0xEF):
            raise DescriptorInvalid("DESCRIPTOR_PRIVATE_KEY", "a private key (WIF) must never be registered: "
                                                              "give the public key")
        raise DescriptorInvalid("DESCRIPTOR_KEY_INVALID", f"{head[:16]}...: not a public key, xpub or tpub (bad "
                                                          "characters, length or base58 checksum)")
    if data[:4] in PRIVATE_VERSIONS:
        raise DescriptorInvalid("DESCRIPTOR_PRIVATE_KEY", "an extended private key (xprv/tprv) must never be "
                                                          "registered: give its xpub")
    if data[:4] not in PUBLIC_VERSIONS:
        raise DescriptorInvalid("DESCRIPTOR_KEY_INVALID", f"{head[:16]}...: unknown extended key version "
                                                          f"{data[:4].hex()}")
    if data[45] not in (2, 3):
        raise DescriptorInvalid("DESCRIPTOR_KEY_INVALID", f"{head[:16]}...: the extended key's public key is not "
                                                          "compressed")


def _derivation(text: str, steps: list[str]) -> KeyExpression:
    ranged = bool(steps) and steps[-1] in ("*", "*h", "*'")
    if ranged and steps[-1] != "*":
        raise DescriptorInvalid("DESCRIPTOR_HARDENED_AFTER_XPUB", "hardened children (/*h) cannot be derived from "
                                                                  "an xpub")
    path, branches, suffix = [], None, []
    for step in steps[:-1] if ranged else steps:
        if step.startswith("<"):
            if branches is not None:
                raise DescriptorInvalid("DESCRIPTOR_MULTIPATH_INVALID", "at most one multipath step <a;b> per key")
            branches = _multipath(step)
            continue
        if step == "*" or step.endswith(("*h", "*'")):
            raise DescriptorInvalid("DESCRIPTOR_PATH_INVALID", "/* may only be the last step")
        (suffix if branches is not None else path).append(_unhardened(step))
    return KeyExpression(text, True, tuple(path), branches, tuple(suffix), ranged)


def _multipath(step: str) -> tuple[int, ...]:
    if not step.endswith(">") or ";" not in step:
        raise DescriptorInvalid("DESCRIPTOR_MULTIPATH_INVALID", f"{step}: a multipath step is <NUM;NUM> (BIP 389)")
    values = tuple(_unhardened(value) for value in step[1:-1].split(";"))
    if len(values) != BRANCHES_MAX or len(set(values)) != len(values):
        raise DescriptorInvalid("DESCRIPTOR_MULTIPATH_INVALID", f"{step}: name exactly two different branches, "
                                                                "receive then change, e.g. <0;1>")
    return values


def _unhardened(step: str) -> int:
    match = _INDEX.fullmatch(step)
    if match is None or int(match.group(1)) >= HARDENED:
        raise DescriptorInvalid("DESCRIPTOR_PATH_INVALID", f"/{step}: a derivation step is a number below 2^31")
    if match.group(2):
        raise DescriptorInvalid("DESCRIPTOR_HARDENED_AFTER_XPUB", f"/{step}: a hardened step after an xpub cannot be "
                                                                  "derived without the private key")
    return int(match.group(1))


def _check_lockstep(shape: DescriptorShape) -> None:
    """BIP 383/389: extended keys of one script derive in lockstep; multipath tuples have one length."""
    lengths = {len(key.branches) for key in shape.keys if key.branches}
    if lengths and any(key.extended and not key.branches and key.ranged for key in shape.keys):
        raise DescriptorInvalid("DESCRIPTOR_MULTIPATH_INVALID", "every ranged key needs the same multipath step")
    if len({key.ranged for key in shape.keys if key.extended}) > 1:
        raise DescriptorInvalid("DESCRIPTOR_RANGE_MIXED", "either every extended key ends with /* or none does")


# --- base58check (BIP 32 serialisation) ------------------------------------------------------------------

def base58check_decode(text: str) -> bytes | None:
    """The payload of a base58check string, or None when a character or the checksum is wrong."""
    if not text or len(text) > 120 or any(c not in BASE58_ALPHABET for c in text):
        return None
    number = 0
    for char in text:
        number = number * 58 + BASE58_ALPHABET.index(char)
    leading_zeros = len(text) - len(text.lstrip("1"))
    raw = b"\x00" * leading_zeros + (number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b"")
    payload, checksum = raw[:-4], raw[-4:]
    if len(raw) < 5 or hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        return None
    return payload
