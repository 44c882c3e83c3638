"""An auditor's control challenge (`reserve-ledger reserves challenge`) and its check against a signatures directory
(`reserves prove-control`, `audit --control-proofs`). Format: docs/FORMATS-audit.md §6."""

import json
import pathlib
import secrets

from ledger import bip322
from ledger.anchoring import ChainBackend
from services.audit import bundle
from services.bitcoin.addresses import address_of_script_pubkey
from services.reserves.control import prove_control, read_challenge, read_signatures
from services.reserves.scan import AccountScan, scan_account

NONCE_BYTES = 32
CHALLENGE_FILE = "challenge.json"
SIGNATURES_DIR = "signatures"


def build_challenge(directory: pathlib.Path, backend: ChainBackend, network: str, nonce: bytes | None = None) -> dict:
    """A fresh challenge over the bundle's custody accounts, at the latest signed tree head and the node's tip:
    every script that holds coins there is listed with its sats (what custodians must sign for)."""
    files = bundle.read_small_files(directory)
    heads = [h for h in files["tree_heads"] if isinstance(h, dict)] if isinstance(files["tree_heads"], list) else []
    if not heads:
        raise bundle.BundleInvalid(f"{directory}: no signed tree head to refer to")
    head = max(heads, key=lambda h: h.get("tree_size", -1))
    height = backend.tip_height()
    accounts = [a for a in files["custody"] if a.get("balance_sats") or a.get("addresses") or a.get("descriptor")]
    return {"format": bip322.CHALLENGE_FORMAT, "nonce": (nonce or secrets.token_bytes(NONCE_BYTES)).hex(),
            "tree_size": head["tree_size"], "root_hash": head["root_hash"], "height": height,
            "block_hash": backend.block_hash(height), "network": network,
            "accounts": [_challenge_account(a, scan_account(a, backend), network) for a in accounts]}


def _challenge_account(account: dict, scan: AccountScan, network: str) -> dict:
    return {"account_id": account["account_id"], "ledger_sats": account["balance_sats"],
            "addresses": account["addresses"], "descriptor": account["descriptor"],
            "gap_limit": account.get("gap_limit", 0), "scripts_scanned": len(scan.scripts),
            "funded_scripts": funded_rows(scan, network)}


def funded_rows(scan: AccountScan, network: str) -> list[dict]:
    return [{"script_pubkey": s.script_pubkey.hex(), "address": address_of_script_pubkey(s.script_pubkey, network),
             "source": s.source, "branch": s.branch, "index": s.index,
             "sats": sum(c.value_sats for c in scan.coins[s.script_pubkey])} for s in scan.funded_scripts()]


def write_challenge(challenge: dict, path: pathlib.Path) -> None:
    path.write_text(json.dumps(challenge, indent=1, sort_keys=True) + "\n")


def control_report(challenge_path: pathlib.Path, signatures_dir: pathlib.Path,
                   backend: ChainBackend | None = None) -> dict:
    """The control-proof report; with a backend, the funded scripts are re-read from the chain now (coins moved
    since the challenge are then what counts) and the report says at which height."""
    challenge = read_challenge(challenge_path)
    funded, height = None, challenge["height"]
    if backend is not None:
        height = backend.tip_height()
        network = challenge.get("network", "regtest")
        funded = {a["account_id"]: funded_rows(scan_account(_as_custody(a), backend), network)
                  for a in challenge["accounts"]}
    report = prove_control(challenge, read_signatures(signatures_dir), funded)
    report["coins_read_at_height"] = height
    return report


def _as_custody(account: dict) -> dict:
    return {"account_id": account["account_id"], "addresses": account["addresses"],
            "descriptor": account["descriptor"], "gap_limit": account.get("gap_limit", 0)}
