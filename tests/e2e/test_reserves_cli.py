"""`reserve-ledger reserves ...` and `audit --control-proofs`: every mistake is one line with its exit code and
changes nothing; a control-proof check that finds a missing or forged signature fails by name."""

import json

from ledger import bip322
from ledger.audit import Findings
from services.errors import EXIT_USAGE
from services.reserves.challenge import CHALLENGE_FILE, SIGNATURES_DIR
from services.reserves.descriptors import account_scripts
from services.reserves.dev_signer import DevKeys, dev_multisig, sign_challenge, write_signatures
from services.audit.run import check_control_proofs
from tests.e2e.test_cli_mistakes import assert_one_line, cli


def test_a_challenge_needs_an_existing_bundle_a_known_chain_and_a_new_file(tmp_path):
    """Each mistake names what is wrong; no challenge file is written."""
    out = tmp_path / "challenge.json"
    assert_one_line(cli("reserves", "challenge", "--bundle", tmp_path / "nope", "--chain", f"regtest:{tmp_path}",
                        "--out", out), EXIT_USAGE, "no such bundle directory")
    assert_one_line(cli("reserves", "challenge", "--bundle", tmp_path, "--chain", "carrier-pigeon:x", "--out", out),
                    EXIT_USAGE, "carrier-pigeon")
    out.write_text("{}")
    assert_one_line(cli("reserves", "challenge", "--bundle", tmp_path, "--chain", f"regtest:{tmp_path}", "--out",
                        out), EXIT_USAGE, "exists")
    assert out.read_text() == "{}"


def test_prove_control_refuses_a_file_that_is_no_challenge_and_a_missing_signatures_directory(tmp_path):
    not_a_challenge = tmp_path / "c.json"
    not_a_challenge.write_text(json.dumps({"format": "something else"}))
    assert_one_line(cli("reserves", "prove-control", "--challenge", not_a_challenge, "--signatures", tmp_path),
                    EXIT_USAGE, "not a reserve-ledger/control-challenge/v1 file")
    not_a_challenge.write_text(json.dumps(_challenge([])))
    assert_one_line(cli("reserves", "prove-control", "--challenge", not_a_challenge, "--signatures",
                        tmp_path / "none"), EXIT_USAGE, "no such directory")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "bad.xprv").write_text("xprv-not-really\n")
    assert_one_line(cli("reserves", "sign-challenge", "--challenge", not_a_challenge, "--keys", tmp_path / "keys",
                        "--out", tmp_path / "sigs"), EXIT_USAGE, "bad.xprv: not a xprv key")
    assert not (tmp_path / "sigs").exists()


def test_audit_control_proofs_needs_a_challenge_in_the_directory(tmp_path):
    assert_one_line(cli("audit", tmp_path, "--control-proofs", tmp_path / "proofs"), EXIT_USAGE,
                    "no challenge.json there")


def _challenge(funded: list[dict], tree_size: int = 3) -> dict:
    return {"format": bip322.CHALLENGE_FORMAT, "nonce": "ab" * 32, "tree_size": tree_size, "root_hash": "cd" * 32,
            "height": 250, "block_hash": "ef" * 32, "network": "regtest",
            "accounts": [{"account_id": "vault-m", "ledger_sats": 300, "addresses": [], "gap_limit": 0,
                          "descriptor": dev_multisig(["a", "b", "c"], 2)[0], "funded_scripts": funded}]}


def test_the_audit_names_every_funded_script_without_a_valid_proof_and_a_challenge_for_another_head(tmp_path):
    """Two funded scripts: one signed by two cosigners passes; the other, whose signature file entry is removed,
    is a key_control failure; a challenge naming a head the bundle does not hold is one more."""
    descriptor, keys = dev_multisig(["a", "b", "c"], 2)
    scripts = account_scripts({"addresses": [], "descriptor": descriptor, "gap_limit": 0}, 2)[:2]
    funded = [{"script_pubkey": s.script_pubkey.hex(), "source": s.source, "branch": s.branch, "index": s.index,
               "sats": 100 * (n + 1), "address": None} for n, s in enumerate(scripts)]
    challenge = _challenge(funded, tree_size=4)
    (tmp_path / CHALLENGE_FILE).write_text(json.dumps(challenge))
    documents = sign_challenge(challenge, DevKeys([], keys[1:]))
    documents["vault-m"]["signatures"] = documents["vault-m"]["signatures"][:1]
    write_signatures(documents, tmp_path / SIGNATURES_DIR)
    facts = {"findings": Findings(), "tree_heads": [{"tree_size": 3, "root_hash": "cd" * 32}]}
    report = check_control_proofs(tmp_path, facts)
    assert (report["proven_sats"], report["funded_sats"]) == (100, 300)
    assert [(f.check, f.where) for f in facts["findings"].kept] == [
        ("key_control", "challenge"), ("key_control", "account vault-m")]
    assert "200 sats at descriptor receive/1: control not proven (missing" in facts["findings"].kept[1].message
