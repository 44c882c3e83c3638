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
    proofs = list((tmp_path / "proofs").glob("event-*/event.bin.ots"))
    assert len(proofs) == 1 and proofs[0].stat().st_size > 100
