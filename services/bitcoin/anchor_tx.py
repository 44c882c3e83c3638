"""Building and signing anchor transactions: one P2WPKH input, OP_RETURN payload, P2WPKH change to the same key.

bitcoin-utils assembles and signs; everything it produces is re-read with ledger.anchoring's own parser and
the input is checked with Bitcoin Core's consensus code (py-bitcoinkernel) before it leaves this module.
bitcoin-utils keeps its network in a process-global (``bitcoinutils.setup``); nothing here reads or sets
it: WIF and bech32 encodings are done here with an explicit network, and nothing else we call depends on it.

bitcoin-utils signs with pure-Python ECDSA (CVE-2024-23342, not side-channel hardened): use ``AnchorKey``
for regtest and tests; for real funds use the PSBT flow with an external signer.
"""

import base64
import binascii
import hashlib
import os
import secrets
import stat
import struct
from dataclasses import dataclass
from typing import Callable

import pbk
from base58check import b58decode, b58encode
from bitcoinutils.bech32 import encode as bech32_encode
from bitcoinutils.constants import SIGHASH_ALL
from bitcoinutils.keys import PrivateKey
from bitcoinutils.psbt import PSBT
from bitcoinutils.ripemd160 import ripemd160
from bitcoinutils.script import Script
from bitcoinutils.transactions import Locktime, Transaction, TxInput, TxOutput, TxWitnessInput
from ecdsa import SECP256k1
from pbk.script import PrecomputedTransactionData

from ledger.anchoring import (
    DUST_P2WPKH_SATS, LOCKTIME_HEIGHT_MAX, AnchoringError, ByteReader, FeeRate, ParsedTx, Utxo,
    change_value_sats, check_fee_cap, compact_size, decode_payload, fee_sats, internal_from_display,
    op_return_script, parse_transaction, sha256d,
)
from ledger.limits import KEY_ORIGIN_DEPTH_MAX

# (WIF prefix, bech32 human-readable part) per network.
NETWORKS = {
    "mainnet": (0x80, "bc"),
    "testnet": (0xEF, "tb"),
    "testnet4": (0xEF, "tb"),
    "signet": (0xEF, "tb"),
    "regtest": (0xEF, "bcrt"),
}
TX_VERSION = 2
# BIP125-signalling, and no BIP68 relative lock (unlike bitcoin-utils' Sequence(TYPE_REPLACE_BY_FEE) = 1),
# so an anchor can spend its unconfirmed predecessor's change and be bumped by CPFP.
ANCHOR_SEQUENCE = 0xFFFFFFFD
# Sizing uses the largest DER signature plus sighash byte; bitcoin-utils grinds low-R (71 bytes) so the
# real transaction is never larger.
DUMMY_SIGNATURE_SIZE_BYTES = 72
PSBT_SIZE_MAX_BYTES = 1_000_000
KEY_FILE_SIZE_MAX_BYTES = 200


class AnchorTxUnexpected(AnchoringError):
    """A transaction that is not exactly the anchor we meant: wrong input, outputs, payload, change or fee."""


class PrevTxMismatch(AnchoringError):
    """The previous transaction given does not hash to the UTXO's txid or does not pay the key that amount."""


class PsbtMalformed(AnchoringError):
    pass


class PsbtNotSigned(AnchoringError):
    pass


class SignedPsbtChanged(AnchoringError):
    """The signer returned a different unsigned transaction or a witness for another key."""


class SignatureInvalid(AnchoringError):
    pass


class AnchorKeyError(ValueError):
    pass


class KeyOriginInvalid(AnchorKeyError):
    """Not `FINGERPRINT/PATH` (8 hex digits, then BIP-32 steps such as 84h/1h/0h/0/0)."""


class KeyNetworkWrong(AnchorKeyError):
    pass


class KeyFileTooOpen(AnchorKeyError):
    pass


class WifMalformed(AnchorKeyError):
    pass


# --- keys -------------------------------------------------------------------------------------------------

def hash160(data: bytes) -> bytes:
    return ripemd160(hashlib.sha256(data).digest())


def p2wpkh_script_pubkey(public_key: bytes) -> bytes:
    if len(public_key) != 33 or public_key[0] not in (2, 3):
        raise AnchorKeyError("P2WPKH needs a 33-byte compressed public key")
    return b"\x00\x14" + hash160(public_key)


def _secret_from_wif(wif: str) -> tuple[bytes, int]:
    """(32-byte secret, WIF prefix byte) of a compressed-key WIF."""
    try:
        data = b58decode(wif.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError) as error:
        raise WifMalformed(f"not base58: {error}") from None
    body, checksum = data[:-4], data[-4:]
    if len(body) != 34 or body[33] != 1 or sha256d(body)[:4] != checksum:
        raise WifMalformed("not a checksummed compressed-key WIF")
    return body[1:33], body[0]


class AnchorKey:
    """The anchoring key: a P2WPKH key stored as one WIF line in a file readable by its owner only."""

    def __init__(self, secret: bytes, network: str):
        if network not in NETWORKS:
            raise KeyNetworkWrong(f"unknown network {network!r}; expected one of {sorted(NETWORKS)}")
        if len(secret) != 32 or not 1 <= int.from_bytes(secret, "big") < SECP256k1.order:
            raise AnchorKeyError("secret must be 32 bytes in [1, n)")
        self.network = network
        self._secret = secret
        self.signing_key = PrivateKey(b=secret)
        self.public_key = bytes.fromhex(self.signing_key.get_public_key().to_hex(compressed=True))
        self.script_pubkey = p2wpkh_script_pubkey(self.public_key)
        self.address = bech32_encode(NETWORKS[network][1], 0, list(self.script_pubkey[2:]))

    def __repr__(self) -> str:
        return f"AnchorKey({self.network}, {self.address})"

    @classmethod
    def generate(cls, network: str) -> "AnchorKey":
        while True:
            secret = secrets.token_bytes(32)
            if 1 <= int.from_bytes(secret, "big") < SECP256k1.order:
                return cls(secret, network)

    @classmethod
    def from_wif(cls, wif: str, network: str) -> "AnchorKey":
        secret, prefix = _secret_from_wif(wif)
        if network not in NETWORKS or prefix != NETWORKS[network][0]:
            raise KeyNetworkWrong(f"the WIF's prefix 0x{prefix:02x} is not for {network!r}")
        return cls(secret, network)

    @property
    def wif(self) -> str:
        body = bytes([NETWORKS[self.network][0]]) + self._secret + b"\x01"
        return b58encode(body + sha256d(body)[:4]).decode("ascii")

    def save(self, path: str | os.PathLike) -> None:
        """Write the WIF to a new file created with mode 0600; never overwrites an existing file."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(self.wif + "\n")
            file.flush()
            os.fsync(file.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike, network: str) -> "AnchorKey":
        """Read a key file; refused if group or others may read or write it, or if it is for another network."""
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if stat.S_IMODE(mode) & 0o077:
                raise KeyFileTooOpen(f"{path} has mode {stat.S_IMODE(mode):04o}; expected 0600 or stricter")
            content = file.read(KEY_FILE_SIZE_MAX_BYTES + 1)
        if len(content) > KEY_FILE_SIZE_MAX_BYTES:
            raise WifMalformed(f"{path} is too large to be a WIF key file")
        return cls.from_wif(content.decode("ascii", errors="replace"), network)


class WatchOnlyAnchorKey:
    """The anchor wallet when an external signer (HSM, air-gapped machine, Core's wallet) holds the key."""

    def __init__(self, public_key: bytes, network: str):
        if network not in NETWORKS:
            raise KeyNetworkWrong(f"unknown network {network!r}; expected one of {sorted(NETWORKS)}")
        if len(public_key) != 33 or public_key[0] not in (2, 3):
            raise AnchorKeyError("the anchor public key must be 33 bytes, compressed (02/03 prefix)")
        self.network = network
        self.public_key = public_key
        self.script_pubkey = p2wpkh_script_pubkey(public_key)
        self.address = bech32_encode(NETWORKS[network][1], 0, list(self.script_pubkey[2:]))

    def __repr__(self) -> str:
        return f"WatchOnlyAnchorKey({self.network}, {self.address})"


# --- verification with Core's consensus code -------------------------------------------------------------

def verify_p2wpkh_input(raw: bytes, script_pubkey: bytes, amount_sats: int, input_index: int = 0) -> bool:
    """True only if libbitcoinkernel accepts the input's witness under every consensus flag."""
    tx = pbk.Transaction(raw)
    spk = pbk.ScriptPubkey(script_pubkey)
    spent = [pbk.TransactionOutput(spk, amount_sats)]
    precomputed = PrecomputedTransactionData(tx, spent)
    try:
        return bool(spk.verify(amount_sats, tx, precomputed, input_index, pbk.ScriptVerificationFlags.ALL))
    except pbk.ScriptVerifyException:
        return False


def check_anchor_shape(tx: ParsedTx, prev: Utxo, payload: bytes, script_pubkey: bytes, fee_max_sats: int) -> int:
    """Refuse anything but: version 2; one input spending ``prev`` with nSequence 0xfffffffd; output 0 =
    OP_RETURN payload of value 0; output 1 = change to ``script_pubkey`` above dust; fee within the cap.
    Returns the fee."""
    def refuse(reason: str) -> AnchorTxUnexpected:
        return AnchorTxUnexpected(f"{tx.txid}: {reason}")

    if tx.version != TX_VERSION:
        raise refuse(f"version {tx.version}, expected {TX_VERSION}")
    if len(tx.inputs) != 1:
        raise refuse(f"{len(tx.inputs)} inputs, expected 1")
    txin = tx.inputs[0]
    if (txin.prev_txid_internal, txin.vout) != (internal_from_display(prev.txid), prev.vout):
        raise refuse("the input does not spend the expected outpoint")
    if txin.script_sig or txin.sequence != ANCHOR_SEQUENCE:
        raise refuse("the input has a scriptSig or an unexpected nSequence")
    if len(tx.outputs) != 2:
        raise refuse(f"{len(tx.outputs)} outputs, expected 2")
    anchor, change = tx.outputs
    if anchor.value_sats != 0 or anchor.script_pubkey != op_return_script(payload):
        raise refuse("output 0 is not the expected zero-value OP_RETURN payload")
    if change.script_pubkey != script_pubkey:
        raise refuse("output 1 does not pay the change back to the anchor key")
    fee = prev.value_sats - change.value_sats
    if fee < 0:
        raise refuse("outputs exceed the input")
    check_fee_cap(fee, fee_max_sats)
    change_value_sats(prev.value_sats, fee)
    return fee


# --- building ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnchorTx:
    raw: bytes  # network serialisation, witness included
    txid: str
    vsize: int
    fee_sats: int
    change_vout: int
    change_value_sats: int


@dataclass(frozen=True)
class _Plan:
    tx: Transaction  # unsigned, with the final change value
    vsize: int
    fee_sats: int
    change_value_sats: int


def _validated_prev(prev: Utxo) -> None:
    internal_from_display(prev.txid)
    if not isinstance(prev.vout, int) or not 0 <= prev.vout <= 0xFFFFFFFF:
        raise ValueError(f"vout {prev.vout!r} out of range")
    if not isinstance(prev.value_sats, int) or prev.value_sats <= 0:
        raise ValueError(f"value {prev.value_sats!r} must be a positive int of sats")


def _unsigned(prev: Utxo, change_public_key: bytes, payload: bytes, change_sats: int,
              locktime_height: int) -> Transaction:
    txin = TxInput(prev.txid, prev.vout, sequence=ANCHOR_SEQUENCE.to_bytes(4, "little"))
    outputs = [
        TxOutput(0, Script(["OP_RETURN", payload.hex()])),
        TxOutput(change_sats, Script(["OP_0", hash160(change_public_key).hex()])),
    ]
    return Transaction([txin], outputs, locktime=Locktime(locktime_height).for_transaction(),
                       version=TX_VERSION.to_bytes(4, "little"), has_segwit=True)


def _plan(prev: Utxo, public_key: bytes, payload: bytes, fee_rate_sat_per_vb: FeeRate, fee_max_sats: int,
          locktime_height: int, change_public_key: bytes | None = None) -> _Plan:
    """The unsigned anchor; its change pays ``change_public_key`` (another key only to move the chain of anchors
    to a new wallet: docs/FORMATS-anchoring.md §7), else ``public_key``, whose witness it is sized for."""
    change_public_key = change_public_key or public_key
    p2wpkh_script_pubkey(change_public_key)
    decode_payload(payload)
    _validated_prev(prev)
    if not isinstance(locktime_height, int) or not 0 <= locktime_height <= LOCKTIME_HEIGHT_MAX:
        raise ValueError(f"locktime height {locktime_height!r} is not a block height")
    sized = _unsigned(prev, change_public_key, payload, prev.value_sats, locktime_height)
    sized.witnesses = [TxWitnessInput(["00" * DUMMY_SIGNATURE_SIZE_BYTES, public_key.hex()])]
    vsize = parse_transaction(sized.to_bytes(True)).vsize
    fee = fee_sats(vsize, fee_rate_sat_per_vb)
    check_fee_cap(fee, fee_max_sats)
    change = change_value_sats(prev.value_sats, fee, DUST_P2WPKH_SATS)
    return _Plan(_unsigned(prev, change_public_key, payload, change, locktime_height), vsize, fee, change)


def _signing_key(key: "AnchorKey | str") -> PrivateKey:
    if isinstance(key, AnchorKey):
        return key.signing_key
    secret, _prefix = _secret_from_wif(key)
    return PrivateKey(b=secret)


def _input_signer(key) -> tuple[bytes, Callable[[Transaction, Script, int], str]]:
    """(compressed public key, signer of input 0 -> hex DER + SIGHASH_ALL) for an AnchorKey or a WIF, or for a
    key that signs BIP-143 digests itself (`sign_digest`, a key in a PKCS#11 token: services/keys/)."""
    if hasattr(key, "sign_digest"):
        def sign_in_token(tx: Transaction, script_code: Script, amount_sats: int) -> str:
            digest = tx.get_transaction_segwit_digest(0, script_code, amount_sats, SIGHASH_ALL)
            return (key.sign_digest(digest) + bytes([SIGHASH_ALL])).hex()
        return key.public_key, sign_in_token
    signing_key = _signing_key(key)
    public_key = bytes.fromhex(signing_key.get_public_key().to_hex(compressed=True))
    return public_key, lambda tx, script_code, amount_sats: minimal_der_signature(
        signing_key.sign_segwit_input(tx, 0, script_code, amount_sats))


def build_anchor_tx(prev: Utxo, key: "AnchorKey | str", payload: bytes, fee_rate_sat_per_vb: FeeRate,
                    fee_max_sats: int, locktime_height: int, change_public_key: bytes | None = None) -> AnchorTx:
    """Build and sign the anchor spending ``prev`` (a P2WPKH output of ``key``); its change pays ``key`` again,
    or ``change_public_key`` when the chain of anchors moves to a new wallet.

    Refuses with FeeAboveCap or ChangeBelowDust; the result is checked with check_anchor_shape and
    libbitcoinkernel before it is returned. The txid is the hash of the bytes returned.
    """
    public_key, sign_input = _input_signer(key)
    script_pubkey = p2wpkh_script_pubkey(public_key)
    plan = _plan(prev, public_key, payload, fee_rate_sat_per_vb, fee_max_sats, locktime_height, change_public_key)
    change_script = p2wpkh_script_pubkey(change_public_key or public_key)
    # BIP143 scriptCode of a P2WPKH input is the P2PKH template, not the scriptPubKey.
    script_code = Script(["OP_DUP", "OP_HASH160", hash160(public_key).hex(), "OP_EQUALVERIFY", "OP_CHECKSIG"])
    signature = sign_input(plan.tx, script_code, prev.value_sats)
    plan.tx.witnesses = [TxWitnessInput([signature, public_key.hex()])]
    raw = plan.tx.to_bytes(True)
    parsed = parse_transaction(raw)
    fee = check_anchor_shape(parsed, prev, payload, change_script, fee_max_sats)
    assert fee == plan.fee_sats and parsed.vsize <= plan.vsize, (fee, parsed.vsize, plan)
    if not verify_p2wpkh_input(raw, script_pubkey, prev.value_sats):
        raise SignatureInvalid(f"{parsed.txid}: the signature does not verify; is the UTXO paying this key?")
    return AnchorTx(raw, parsed.txid, parsed.vsize, fee, 1, plan.change_value_sats)


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading 0x00 only when the top bit is set
    return b"\x02" + bytes([len(body)]) + body


def minimal_der_signature(signature_hex: str) -> str:
    """The same ECDSA signature in minimal DER (BIP66, a consensus rule since 2015).

    bitcoin-utils 0.8.8 pads s (and r) to 32 bytes even when its top byte is zero, e.g. `0220 00 7b…`: about one
    signature in 256 is then non-minimal and every node refuses the transaction (mandatory-script-verify-flag).
    """
    signature = bytes.fromhex(signature_hex)
    der, sighash = signature[:-1], signature[-1:]
    try:
        r_length = der[3]
        s_length = der[5 + r_length]
        shape_ok = (der[0], der[1], der[2], der[4 + r_length], len(der)) == (
            0x30, len(der) - 2, 0x02, 0x02, 6 + r_length + s_length)
    except IndexError:
        shape_ok = False
    if not shape_ok:
        raise ValueError("not a DER-encoded ECDSA signature")
    r = int.from_bytes(der[4:4 + r_length], "big")
    s = int.from_bytes(der[6 + r_length:], "big")
    body = _der_integer(r) + _der_integer(s)
    return (b"\x30" + bytes([len(body)]) + body + sighash).hex()


# --- PSBT flow for external signers ----------------------------------------------------------------------

def _public_key_of(key: "AnchorKey | bytes") -> bytes:
    return key.public_key if isinstance(key, AnchorKey) else bytes(key)


def _prev_tx_checked(prev: Utxo, prev_tx_raw: bytes, script_pubkey: bytes) -> Transaction:
    parsed = parse_transaction(prev_tx_raw)
    if parsed.txid != prev.txid.lower():
        raise PrevTxMismatch(f"the previous transaction hashes to {parsed.txid}, not {prev.txid}")
    if prev.vout >= len(parsed.outputs):
        raise PrevTxMismatch(f"the previous transaction has no output {prev.vout}")
    out = parsed.outputs[prev.vout]
    if (out.value_sats, out.script_pubkey) != (prev.value_sats, script_pubkey):
        raise PrevTxMismatch("the previous output does not pay the anchor key the expected amount")
    # Give bitcoin-utils the witness-free serialisation, which it re-serialises byte-exactly (checked).
    prev_tx = Transaction.from_raw(parsed.no_witness)
    if sha256d(prev_tx.to_bytes(False)) != parsed.txid_internal:
        raise PrevTxMismatch("bitcoin-utils did not round-trip the previous transaction")
    return prev_tx


@dataclass(frozen=True)
class KeyOrigin:
    """Where an HD signer finds a key: its root's BIP-32 fingerprint and the derivation path (BIP-174
    PSBT_IN_BIP32_DERIVATION / PSBT_OUT_BIP32_DERIVATION)."""

    fingerprint: bytes                 # 4 bytes: the first 4 bytes of HASH160 of the root public key
    path: tuple[int, ...]              # hardened steps have bit 31 set

    def __str__(self) -> str:
        steps = (f"{i & 0x7FFFFFFF}h" if i & 0x80000000 else str(i) for i in self.path)
        return "/".join([self.fingerprint.hex(), *steps])


def parse_key_origin(text: str) -> KeyOrigin:
    """`FINGERPRINT/PATH` as in a descriptor's key origin (`d34db33f/84h/1h/0h/0/0`; `'` for `h` and the
    surrounding brackets are accepted) -> KeyOrigin; KeyOriginInvalid for anything else."""
    parts = text.strip().strip("[]").split("/") if isinstance(text, str) else [""]
    fingerprint, steps = parts[0], parts[1:]
    if len(fingerprint) != 8 or not all(c in "0123456789abcdefABCDEF" for c in fingerprint):
        raise KeyOriginInvalid(f"{text!r}: the fingerprint must be 8 hex digits (FINGERPRINT/PATH)")
    if len(steps) > KEY_ORIGIN_DEPTH_MAX:
        raise KeyOriginInvalid(f"{text!r}: a path is at most {KEY_ORIGIN_DEPTH_MAX} steps")
    return KeyOrigin(bytes.fromhex(fingerprint), tuple(_path_step(text, step) for step in steps))


def _path_step(text: str, step: str) -> int:
    hardened = step[-1:] in ("h", "H", "'")
    number = step[:-1] if hardened else step
    if not number.isdigit() or len(number) > 10 or int(number) >= 0x80000000:
        raise KeyOriginInvalid(f"{text!r}: {step!r} is not a BIP-32 step (0 to 2^31-1, `h` for hardened)")
    return int(number) | (0x80000000 if hardened else 0)


def build_anchor_psbt(prev: Utxo, key: "AnchorKey | bytes", payload: bytes, fee_rate_sat_per_vb: FeeRate,
                      fee_max_sats: int, locktime_height: int, prev_tx_raw: bytes | None = None, *,
                      key_origin: KeyOrigin | None = None, change_public_key: bytes | None = None,
                      change_key_origin: KeyOrigin | None = None) -> str:
    """The unsigned anchor as a base64 PSBT (BIP174 v0) with witness_utxo, and non_witness_utxo when the
    previous transaction is given (hardware signers need it against the segwit-v0 fee lie).

    ``key`` is an AnchorKey or just the 33-byte compressed public key of the external signer. With
    ``key_origin`` the input (and the change, when it pays the same key) carries the BIP-32 derivation, so a
    signer holding only an HD root finds the key. ``change_public_key`` moves the chain to a new wallet.
    """
    public_key = _public_key_of(key)
    script_pubkey = p2wpkh_script_pubkey(public_key)
    change_public_key = change_public_key or public_key
    plan = _plan(prev, public_key, payload, fee_rate_sat_per_vb, fee_max_sats, locktime_height, change_public_key)
    psbt = PSBT(plan.tx)
    psbt.update_input(
        0,
        witness_utxo=TxOutput(prev.value_sats, Script(["OP_0", script_pubkey[2:].hex()])),
        non_witness_utxo=None if prev_tx_raw is None else _prev_tx_checked(prev, prev_tx_raw, script_pubkey),
        bip32_derivs=None if key_origin is None else {public_key: (key_origin.fingerprint, list(key_origin.path))},
    )
    if change_public_key == public_key:
        change_key_origin = change_key_origin or key_origin
    if change_key_origin is not None:
        psbt.update_output(1, bip32_derivs={change_public_key: (change_key_origin.fingerprint,
                                                                list(change_key_origin.path))})
    encoded = psbt.to_bytes()
    unsigned = psbt_unsigned_tx(encoded)
    check_anchor_shape(parse_transaction(unsigned), prev, payload, p2wpkh_script_pubkey(change_public_key),
                       fee_max_sats)
    assert unsigned == plan.tx.to_bytes(False), "bitcoin-utils changed the unsigned transaction"
    return base64.b64encode(encoded).decode("ascii")


def _decode_b64(text: "str | bytes") -> bytes:
    if len(text) > PSBT_SIZE_MAX_BYTES * 4 // 3 + 4:
        raise PsbtMalformed(f"PSBT larger than {PSBT_SIZE_MAX_BYTES} bytes")
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise PsbtMalformed(f"not base64: {error}") from None
    if len(data) > PSBT_SIZE_MAX_BYTES:
        raise PsbtMalformed(f"PSBT larger than {PSBT_SIZE_MAX_BYTES} bytes")
    return data


def read_psbt(data: "bytes | str") -> bytes:
    """A PSBT in either form signers write: binary (BIP-174's file form, starting `psbt` 0xff) or base64 text.
    Returns the binary form; PsbtMalformed for anything else."""
    if isinstance(data, bytes) and data.startswith(b"psbt\xff"):
        if len(data) > PSBT_SIZE_MAX_BYTES:
            raise PsbtMalformed(f"PSBT larger than {PSBT_SIZE_MAX_BYTES} bytes")
        return data
    return _decode_b64(data)


def psbt_unsigned_tx(psbt: bytes) -> bytes:
    """The global unsigned transaction's bytes exactly as they appear in the PSBT (BIP174 key 0x00)."""
    if psbt[:5] != b"psbt\xff":
        raise PsbtMalformed("bad PSBT magic")
    reader = ByteReader(psbt, PsbtMalformed)
    reader.take(5)
    found = None
    while key_size := reader.compact_size(reader.remaining()):
        key = reader.take(key_size)
        value = reader.take(reader.compact_size(reader.remaining()))
        if key == b"\x00":
            if found is not None:
                raise PsbtMalformed("two global unsigned transactions")
            found = value
    if found is None:
        raise PsbtMalformed("no global unsigned transaction")
    return found


def _signed_witness(signed: bytes, script_pubkey: bytes) -> list[bytes]:
    try:
        psbt = PSBT.from_bytes(signed)
        entry = psbt.inputs[0]
        if entry.final_scriptwitness is None:
            if not entry.partial_sigs:
                raise PsbtNotSigned("input 0 carries no signature")
            psbt.finalize_input(0)
    except (ValueError, IndexError, KeyError, TypeError, struct.error) as error:
        if isinstance(error, AnchoringError):
            raise
        raise PsbtMalformed(f"bitcoin-utils could not read or finalise the PSBT: {error}") from None
    if entry.final_scriptsig is not None and entry.final_scriptsig.to_bytes():
        raise SignedPsbtChanged("a P2WPKH input must have an empty scriptSig")
    stack = list(entry.final_scriptwitness)
    if len(stack) != 2 or b"\x00\x14" + hash160(stack[1]) != script_pubkey:
        raise SignedPsbtChanged("the witness is not [signature, anchor public key]")
    if not stack[0] or stack[0][-1] != SIGHASH_ALL:
        raise SignedPsbtChanged("the signature is not SIGHASH_ALL")
    try:  # the same signature, minimally encoded: signers built on bitcoin-utils pad s (see minimal_der_signature)
        stack[0] = bytes.fromhex(minimal_der_signature(stack[0].hex()))
    except ValueError as error:
        raise PsbtMalformed(f"input 0: {error}") from None
    return stack


def _with_witness(unsigned: bytes, stack: list[bytes]) -> bytes:
    witness = compact_size(len(stack)) + b"".join(compact_size(len(item)) + item for item in stack)
    return unsigned[:4] + b"\x00\x01" + unsigned[4:-4] + witness + unsigned[-4:]


def finalize_signed_psbt(signed_psbt: "str | bytes", *, unsigned_b64: str, prev: Utxo, payload: bytes,
                         script_pubkey: bytes, fee_max_sats: int, change_script_pubkey: bytes | None = None) -> bytes:
    """The broadcastable anchor from a PSBT an external signer returned (binary or base64), or a named refusal.

    The signer must return exactly the unsigned transaction of ``unsigned_b64`` (what we built); that
    transaction must be the anchor of ``payload`` spending ``prev`` (an output of ``script_pubkey``) with change
    to ``change_script_pubkey`` (default: the same script) and a fee within the cap; the witness must be a
    SIGHASH_ALL signature that Core's consensus code accepts.
    The raw transaction is assembled here from those checked bytes, never re-serialised from a parse.
    """
    unsigned = psbt_unsigned_tx(_decode_b64(unsigned_b64))
    signed = read_psbt(signed_psbt)
    if psbt_unsigned_tx(signed) != unsigned:
        raise SignedPsbtChanged("the signer returned a different unsigned transaction")
    check_anchor_shape(parse_transaction(unsigned), prev, payload, change_script_pubkey or script_pubkey,
                       fee_max_sats)
    raw = _with_witness(unsigned, _signed_witness(signed, script_pubkey))
    parsed = parse_transaction(raw)
    assert parsed.no_witness == unsigned, "witness assembly changed the transaction"
    if not verify_p2wpkh_input(raw, script_pubkey, prev.value_sats):
        raise SignatureInvalid(f"{parsed.txid}: the signer's signature does not verify")
    return raw
