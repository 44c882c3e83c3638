"""BIP-322 proofs of key control checked by Bitcoin Core's script interpreter (libbitcoinkernel via py-bitcoinkernel).

`verify_signature` builds the two virtual transactions (ledger/bip322.py) and runs the script with
`pbk.ScriptPubkey.verify` under every consensus flag (P2SH, DERSIG, NULLDUMMY, CLTV, CSV, WITNESS, TAPROOT);
no script is evaluated by hand. `prove_control` checks a signatures directory against a challenge, per account
and per funded script, and says how many sats were proven at the challenge's height.
"""

import json
import pathlib

import pbk
from pbk.script import PrecomputedTransactionData

from ledger import bip322
from ledger.anchoring import TransactionMalformed

SIGNATURE_FILE_BYTES_MAX = 4 << 20
SIGNATURE_FILES_MAX = 10_000


class ChallengeInvalid(ValueError):
    """The challenge file is not a control challenge this build reads."""


def verify_signature(script_pubkey: bytes, message: bytes, signature_b64: str) -> tuple[bool, str]:
    """(True, "") when the signature spends the BIP-322 to_spend of (script, message) under all consensus flags;
    else (False, why)."""
    to_spend = bip322.to_spend(script_pubkey, message)
    try:
        to_sign = bip322.signed_transaction(signature_b64, to_spend)
    except (bip322.SignatureMalformed, TransactionMalformed) as error:
        return False, f"malformed signature ({error})"
    spent = pbk.ScriptPubkey(script_pubkey)
    transaction = pbk.Transaction(to_sign)
    precomputed = PrecomputedTransactionData(transaction, [pbk.TransactionOutput(spent, 0)])
    try:
        valid = spent.verify(0, transaction, precomputed, 0, pbk.ScriptVerificationFlags.ALL)
    except pbk.ScriptVerifyException as error:
        return False, f"the interpreter refused to run it ({error})"
    return (True, "") if valid else (False, "the script fails: not signed by the keys of this script for this "
                                            "message (another nonce, key or address)")


def read_challenge(path: pathlib.Path) -> dict:
    try:
        challenge = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ChallengeInvalid(f"{path}: not a readable JSON challenge ({error})") from None
    if not isinstance(challenge, dict) or challenge.get("format") != bip322.CHALLENGE_FORMAT:
        raise ChallengeInvalid(f"{path}: not a {bip322.CHALLENGE_FORMAT} file")
    for field in ("nonce", "tree_size", "root_hash", "height", "block_hash", "accounts"):
        if field not in challenge:
            raise ChallengeInvalid(f"{path}: no {field!r}")
    return challenge


def read_signatures(directory: pathlib.Path) -> dict[str, dict[str, str]]:
    """account_id -> script_pubkey hex -> base64 signature, from every DIR/*.json (docs/FORMATS-audit.md §6)."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(directory.glob("*.json"))[:SIGNATURE_FILES_MAX]:
        try:
            if path.stat().st_size > SIGNATURE_FILE_BYTES_MAX:
                continue
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(document, dict) or document.get("format") != bip322.SIGNATURES_FORMAT:
            continue
        account = found.setdefault(str(document.get("account_id")), {})
        for entry in document.get("signatures") or []:
            if isinstance(entry, dict) and isinstance(entry.get("script_pubkey"), str):
                account[entry["script_pubkey"].lower()] = entry.get("signature")
    return found


def prove_control(challenge: dict, signatures: dict[str, dict[str, str]],
                  funded: dict[str, list[dict]] | None = None) -> dict:
    """The control-proof report: per account, each funded script (from `funded`, the auditor's own scan, else the
    challenge's list) proven or not, and the sats proven. Pure but for the interpreter."""
    rows = []
    listed = {account["account_id"]: account for account in challenge["accounts"]}
    for account_id in [*listed, *(i for i in funded or {} if i not in listed)]:
        account = listed.get(account_id, {})
        scripts = funded.get(account_id, []) if funded is not None else account.get("funded_scripts", [])
        message = bip322.challenge_message(challenge, account_id)
        checked = [_check_script(script, message, signatures.get(account_id, {})) for script in scripts]
        rows.append({"account_id": account_id, "ledger_sats": account.get("ledger_sats"),
                     "funded_sats": sum(s["sats"] for s in checked),
                     "proven_sats": sum(s["sats"] for s in checked if s["status"] == "proven"),
                     "scripts": checked})
    funded_total = sum(r["funded_sats"] for r in rows)
    proven_total = sum(r["proven_sats"] for r in rows)
    return {"format": bip322.PROOF_REPORT_FORMAT, "nonce": challenge["nonce"], "tree_size": challenge["tree_size"],
            "root_hash": challenge["root_hash"], "height": challenge["height"], "block_hash": challenge["block_hash"],
            "accounts": rows, "funded_sats": funded_total, "proven_sats": proven_total,
            "complete": proven_total == funded_total}


def _check_script(script: dict, message: bytes, signatures: dict[str, str]) -> dict:
    row = {"script_pubkey": script["script_pubkey"], "source": script.get("source", ""), "sats": script["sats"]}
    signature = signatures.get(script["script_pubkey"].lower())
    if signature is None:
        return {**row, "status": "missing", "reason": "no signature for this script"}
    valid, reason = verify_signature(bytes.fromhex(script["script_pubkey"]), message, signature)
    return {**row, "status": "proven" if valid else "invalid", "reason": reason}
