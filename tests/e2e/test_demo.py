"""`reserve-ledger demo` runs end to end, and the history it leaves behind passes `reserve-ledger verify`."""

import re
import subprocess
import sys


def test_demo_runs_and_its_history_verifies(tmp_path):
    demo = subprocess.run([sys.executable, "-m", "services.cli.main", "demo", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stderr[-3000:]
    for expected in ("Balances as of position", "Holdings per custodian", "Cost basis", "signature valid",
                     "proof valid", "| anchored |", "event.bin.ots", "checked against the block header",
                     "FAIL reserves account ops-warm-1: on chain at height", "difference +50,000,000 sats",
                     "verdict FAIL: the only failure is the deliberate unrecorded movement",
                     "Live reserves monitor", ": ops-warm-1: 0.50000000 BTC moved in block",
                     "with no ledger event explaining it (unrecorded)", "before any later block",
                     "reserve alerts (live monitor): 1 recorded, 1 open",
                     "a separate process at http://127.0.0.1:", "requiring the witness's cosignature",
                     "valid cosignature(s), quorum 1",

                     "vault-cold-2: control proven for 8.00000000 of 8.00000000 BTC (3 script(s)",
                     "control proven for 38.49997500 of 38.49997500 BTC",
                     "reserves vault-cold-2: ledger 800,000,000 sats, on chain 800,000,000 sats"):
        assert expected in demo.stdout, expected
    verify = subprocess.run([sys.executable, "-m", "services.cli.main", "verify", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=180)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("OK: ")
    assert "<svg" in (tmp_path / "audit-report.html").read_text()
    assert "Control proven for 38.49997500 of 38.49997500 BTC" in (tmp_path / "audit-report.html").read_text()
    proven = subprocess.run([sys.executable, "-m", "services.cli.main", "reserves", "prove-control", "--challenge",
                             str(tmp_path / "control-proofs" / "challenge.json"), "--signatures",
                             str(tmp_path / "control-proofs" / "signatures")], capture_output=True, text=True,
                            timeout=180)
    assert proven.returncode == 0 and "control proven for 38.49997500 of 38.49997500 BTC" in proven.stdout, (
        proven.stdout + proven.stderr)
    offline = subprocess.run([sys.executable, "-m", "services.cli.main", "audit", str(tmp_path / "audit-bundle")],
                             capture_output=True, text=True, timeout=180)
    assert offline.returncode == 0 and offline.stdout.startswith("OK: "), offline.stdout + offline.stderr
    witness = re.search(r"--witness (\S+?)[\s)]", demo.stdout).group(1)  # the printed audit command's argument
    for given, code in ((witness, 0), (_stranger(witness), 1)):
        required = subprocess.run([sys.executable, "-m", "services.cli.main", "audit", str(tmp_path / "audit-bundle"),
                                   "--witness", given], capture_output=True, text=True, timeout=180)
        assert required.returncode == code, required.stdout + required.stderr
    proofs = list((tmp_path / "proofs").glob("event-*/event.bin.ots"))
    assert len(proofs) == 1 and proofs[0].stat().st_size > 100


def _stranger(witness_argument: str) -> str:
    """The demo witness's name with another key: its cosignatures do not count."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.witness import note
    name = witness_argument.split("=", 1)[0]
    key = note.verifier_key(name, note.ALG_COSIGNATURE_V1, note.KeySigner(Ed25519PrivateKey.generate()).public_key_raw)
    return f"{name}={key.text()}"


def test_a_fresh_challenge_is_not_answered_by_old_signatures_and_is_by_new_ones(tmp_path):
    """From the demo's bundle and chain, through the command line: a new challenge (new nonce) checked against the
    demo's signatures fails key_control for every funded script; signed anew (development signer), the audit's
    only failure is again the deliberate unrecorded movement."""
    demo = subprocess.run([sys.executable, "-m", "services.cli.main", "demo", "--data-dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stderr[-3000:]
    chain, bundle = f"regtest:{tmp_path / 'demo' / 'regtest'}", tmp_path / "demo" / "audit-bundle"
    proofs = tmp_path / "proofs"
    proofs.mkdir()
    challenge = _cli("reserves", "challenge", "--bundle", bundle, "--chain", chain, "--out", proofs / "challenge.json")
    assert challenge.returncode == 0 and "6 funded scripts to sign for" in challenge.stdout, challenge.stdout
    (proofs / "signatures").symlink_to(tmp_path / "demo" / "control-proofs" / "signatures")
    stale = _cli("audit", bundle, "--chain", chain, "--control-proofs", proofs)
    assert stale.returncode == 1
    assert sum(line.startswith("FAIL key_control account ") for line in stale.stdout.splitlines()) == 6, stale.stdout
    (proofs / "signatures").unlink()
    signed = _cli("reserves", "sign-challenge", "--challenge", proofs / "challenge.json", "--keys",
                  tmp_path / "demo" / "custody-keys", "--out", proofs / "signatures")
    assert signed.returncode == 0, signed.stdout + signed.stderr
    fresh = _cli("audit", bundle, "--chain", chain, "--control-proofs", proofs)
    fails = [line for line in fresh.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 1 and fails[0].startswith("FAIL reserves account ops-warm-1: on chain"), fresh.stdout
    assert "control proven for 3,849,997,500 of 3,849,997,500 sats" in fresh.stdout, fresh.stdout


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=180)
