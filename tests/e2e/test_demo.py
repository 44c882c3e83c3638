"""`reserve-ledger demo` runs end to end, and the history it leaves behind passes `reserve-ledger verify`."""

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
                     "valid cosignature(s), quorum 1"):
        assert expected in demo.stdout, expected
    verify = subprocess.run([sys.executable, "-m", "services.cli.main", "verify", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=180)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("OK: ")
    assert "<svg" in (tmp_path / "audit-report.html").read_text()
    offline = subprocess.run([sys.executable, "-m", "services.cli.main", "audit", str(tmp_path / "audit-bundle")],
                             capture_output=True, text=True, timeout=180)
    assert offline.returncode == 0 and offline.stdout.startswith("OK: "), offline.stdout + offline.stderr
    witness = demo.stdout.split("--witness ", 1)[1].split(")", 1)[0]
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
