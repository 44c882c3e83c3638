"""DEVELOPMENT ONLY: BIP-322 signatures over a control challenge with the demo's and the tests' own keys.

Real custodians sign with their own tools (hardware wallets, Bitcoin Core, Sparrow), offline; this module
exists so that the demo and the tests can answer a challenge. It signs with embit (libsecp256k1 through
ctypes), holds keys in memory as plain files give them, and is never used by `serve` or `audit`.

Keys: a directory of `*.wif` files (one WIF each: P2WPKH or P2TR key path of that key) and `*.xprv` files
(one BIP 32 extended private key each, xprv or tprv: matched against the xpubs of a descriptor).
Formats: simple signatures (witness stack) for P2WPKH, P2WSH and P2TR; full (the to_sign transaction) for
P2SH-wrapped scripts, which need a scriptSig.
"""

import base64
import dataclasses
import hashlib
import json
import pathlib

from embit import bip32, ec, script
from embit.descriptor import Descriptor
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from ledger import bip322
from ledger.anchoring import sha256d
from ledger.descriptors import descriptor_checksum, split_checksum


@dataclasses.dataclass
class DevKeys:
    single: list[ec.PrivateKey]
    extended: list[bip32.HDKey]

    @classmethod
    def load(cls, directory: pathlib.Path) -> "DevKeys":
        """Raises ValueError naming the first file that is not a key of its kind."""
        single, extended = [], []
        for path in sorted(directory.glob("*.wif")) + sorted(directory.glob("*.xprv")):
            try:
                text = path.read_text().strip()
                if path.suffix == ".wif":
                    single.append(ec.PrivateKey.from_wif(text))
                else:
                    extended.append(bip32.HDKey.from_string(text))
            except Exception as error:  # noqa: BLE001 - embit raises many types for a bad key
                raise ValueError(f"{path}: not a {path.suffix[1:]} key ({type(error).__name__})") from None
        return cls(single, extended)


def sign_challenge(challenge: dict, keys: DevKeys) -> dict[str, dict]:
    """account_id -> signatures document (docs/FORMATS-audit.md §6) for every funded script these keys control."""
    documents = {}
    for account in challenge["accounts"]:
        message = bip322.challenge_message(challenge, account["account_id"])
        signatures = []
        for funded in account.get("funded_scripts", []):
            signature = sign_script(bytes.fromhex(funded["script_pubkey"]), funded.get("branch"), funded.get("index"),
                                    account.get("descriptor", ""), message, keys)
            if signature is not None:
                signatures.append({"script_pubkey": funded["script_pubkey"], "signature": signature})
        if signatures:
            documents[account["account_id"]] = {"format": bip322.SIGNATURES_FORMAT, "account_id": account["account_id"],
                                                "nonce": challenge["nonce"], "signatures": signatures}
    return documents


def write_signatures(documents: dict[str, dict], directory: pathlib.Path) -> list[pathlib.Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for account_id, document in documents.items():
        path = directory / f"{account_id}.json"
        path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def sign_script(script_pubkey: bytes, branch: int | None, index: int | None, descriptor: str, message: bytes,
                keys: DevKeys) -> str | None:
    """A BIP-322 signature (base64) for one script, or None when these keys do not control it."""
    for key in keys.single:
        public = key.get_public_key()
        if script.p2wpkh(public).data == script_pubkey:
            return _sign_wpkh(script_pubkey, message, key)
        if script.p2tr(public).data == script_pubkey:
            return _sign_taproot(script_pubkey, message, key)
    if descriptor:   # a fixed descriptor derives as index 0 of its only branch
        return _sign_descriptor(script_pubkey, branch, index or 0, descriptor, message, keys)
    return None


def _sign_descriptor(script_pubkey: bytes, branch: int | None, index: int, descriptor: str, message: bytes,
                     keys: DevKeys) -> str | None:
    body = split_checksum(descriptor)
    for extended in keys.extended:
        body = body.replace(extended.to_public().to_string(_version_of(extended)), extended.to_string())
    parsed = Descriptor.from_string(body)
    derived = parsed.derive(index, branch_index=branch if parsed.num_branches > 1 else None)
    if derived.script_pubkey().data != script_pubkey:
        return None
    private = [k.private_key for k in derived.keys if k.is_private]
    if not private:
        return None
    if derived.is_taproot:
        return _sign_taproot(script_pubkey, message, private[0])
    if derived.miniscript is None:
        return _sign_wpkh(script_pubkey, message, private[0], derived.redeem_script())
    return _sign_multisig(script_pubkey, message, derived, private)


def _version_of(extended: bip32.HDKey) -> bytes:
    """The public version bytes matching a private extended key (xprv -> xpub, tprv -> tpub)."""
    return bytes.fromhex("0488b21e") if extended.version == bytes.fromhex("0488ade4") else bytes.fromhex("043587cf")


def _unsigned(script_pubkey: bytes, message: bytes, script_sig: bytes = b"") -> Transaction:
    to_spend = bip322.to_spend(script_pubkey, message)
    return Transaction(version=0, locktime=0, vin=[TransactionInput(sha256d(to_spend)[::-1], 0,
                                                                    script.Script(script_sig), sequence=0)],
                       vout=[TransactionOutput(0, script.Script(bip322.OP_RETURN_SCRIPT))])


def _answer(script_pubkey: bytes, message: bytes, witness: tuple[bytes, ...], script_sig: bytes) -> str:
    if not script_sig:
        return bip322.encode_witness(witness)
    full = bip322.to_sign(bip322.to_spend(script_pubkey, message), witness, script_sig)
    return base64.b64encode(full).decode()


def _sign_wpkh(script_pubkey: bytes, message: bytes, key: ec.PrivateKey, redeem=None) -> str:
    public = key.get_public_key()
    script_sig = bytes([len(redeem.data)]) + redeem.data if redeem is not None else b""
    digest = _unsigned(script_pubkey, message, script_sig).sighash_segwit(0, script.p2pkh(public), 0)
    witness = (key.sign(digest).serialize() + bytes([SIGHASH.ALL]), public.sec())
    return _answer(script_pubkey, message, witness, script_sig)


def _sign_taproot(script_pubkey: bytes, message: bytes, key: ec.PrivateKey) -> str:
    digest = _unsigned(script_pubkey, message).sighash_taproot(0, [script.Script(script_pubkey)], [0])
    return bip322.encode_witness((key.taproot_tweak(b"").schnorr_sign(digest).serialize(),))


def _sign_multisig(script_pubkey: bytes, message: bytes, derived, private: list[ec.PrivateKey]) -> str | None:
    witness_script = derived.witness_script()
    redeem = derived.redeem_script()
    script_sig = bytes([len(redeem.data)]) + redeem.data if redeem is not None else b""
    digest = _unsigned(script_pubkey, message, script_sig).sighash_segwit(0, witness_script, 0)
    by_public = {k.get_public_key().sec(): k for k in private}
    threshold = derived.miniscript.args[0].num
    order = [key.sec() for key in _script_keys(witness_script.data)]
    signers = [by_public[public] for public in order if public in by_public][:threshold]
    if len(signers) < threshold:
        return None
    signatures = tuple(k.sign(digest).serialize() + bytes([SIGHASH.ALL]) for k in signers)
    return _answer(script_pubkey, message, (b"", *signatures, witness_script.data), script_sig)


def _script_keys(multisig: bytes) -> list[ec.PublicKey]:
    """The public keys of OP_k <key>... OP_n OP_CHECKMULTISIG, in script order (signatures must follow it)."""
    keys, position = [], 1
    while multisig[position] == 33:
        keys.append(ec.PublicKey.parse(multisig[position + 1:position + 34]))
        position += 34
    return keys


# --- the demo's and tests' keys ---------------------------------------------------------------------------

DEV_ACCOUNT_PATH = "m/48h/1h/0h/2h"     # BIP 48 multisig, testnet/regtest coin type, P2WSH script type


def dev_key(name: str) -> bip32.HDKey:
    """A deterministic regtest/testnet master key named `name` (development only: its seed is public)."""
    return bip32.HDKey.from_seed(hashlib.sha256(b"reserve-ledger dev key " + name.encode()).digest(),
                                 version=bytes.fromhex("04358394"))


def dev_multisig(names: list[str], threshold: int) -> tuple[str, list[bip32.HDKey]]:
    """A checksummed wsh(sortedmulti(threshold, [fp/48h/1h/0h/2h]tpub/<0;1>/*, ...)) descriptor over the dev keys
    of `names`, and the account-level extended private keys that sign for it."""
    masters = [dev_key(name) for name in names]
    accounts = [master.derive(DEV_ACCOUNT_PATH) for master in masters]
    origin = DEV_ACCOUNT_PATH[1:]
    keys = ",".join(f"[{m.my_fingerprint.hex()}{origin}]{a.to_public().to_string(_version_of(a))}/<0;1>/*"
                    for m, a in zip(masters, accounts))
    body = f"wsh(sortedmulti({threshold},{keys}))"
    return f"{body}#{descriptor_checksum(body)}", accounts
