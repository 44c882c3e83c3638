"""The benchmark scripts run end to end at small sizes, so they cannot rot between measurement runs.

These check that the scripts work and report what they claim; speed is measured by running them by hand.
"""

import pathlib
import re
import subprocess
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_replay_benchmark_replays_every_event_it_wrote(tmp_path):
    out = run("bench_replay.py", "--events", "3000", "--data-dir", str(tmp_path))
    size = int(re.search(r"events: ([\d,]+)", out).group(1).replace(",", ""))
    assert size >= 3000
    assert re.search(r"replay into fresh projections: +[\d,]+ events/s", out)
    assert re.search(r"replay / raw scan: \d+\.\d\d", out)


def test_command_benchmark_reports_ledger_and_echo_rates():
    out = run("bench_commands.py", "--clients", "2", "--seconds", "1")
    rates = [float(m.replace(",", "")) for m in re.findall(r"([\d,]+) calls/s", out)]
    assert len(rates) == 2 and all(rate > 0 for rate in rates), out
    assert re.search(r"ledger / echo: \d+\.\d\d", out)


def test_proof_benchmark_verifies_the_proofs_it_times(tmp_path):
    out = run("bench_proofs.py", "--events", "2000", "--samples", "50", "--data-dir", str(tmp_path))
    assert re.search(r"log part of the inserts .*: [\d.]+ us/event", out)
    assert re.search(r"inclusion proof \(size [\d,]+\): +p50 [\d.]+ ms", out)
    assert re.search(r"consistency proof \(to [\d,]+\): +p50 [\d.]+ ms", out)


def test_anchor_benchmark_proves_an_event_through_a_confirmed_anchor(tmp_path):
    out = run("bench_anchor.py", "--events", "300", "--block-txs", "5", "--data-dir", str(tmp_path))
    assert re.search(r"anchor transaction: \d+ vB, fee \d+ sats", out)
    assert re.search(r"tree head -> first confirmation: [\d.]+ ms", out)
    assert re.search(r"anchor block holds 7 transactions", out)
    assert re.search(r"\.ots \d+ bytes, proof\.json \d+ bytes", out)


def test_audit_benchmark_exports_and_audits_a_log_that_passes(tmp_path):
    out = run("bench_audit.py", "--events", "600", "--data-dir", str(tmp_path))
    size = int(re.search(r"events: ([\d,]+)", out).group(1).replace(",", ""))
    assert size >= 600 and (tmp_path / "bundle" / "events.bin").stat().st_size > size * 100
    assert re.search(r"export: [\d.]+ s, peak \d+ MB, bundle [\d.]+ MB", out)
    assert re.search(r"audit: [\d.]+ s, peak \d+ MB \([\d,]+ events/s\)", out)


def test_signing_benchmark_compares_a_softhsm2_token_with_a_key_file():
    """The script creates its own SoftHSM2 token, checks a signature of each kind, and reports both costs."""
    out = run("bench_signing.py", "--signatures", "40")
    for kind in ("tree head", "anchor digest"):
        for where in ("key file", "SoftHSM2"):
            assert re.search(rf"{kind}, {where}: p50 [\d.,]+ us, p99 [\d.,]+ us per signature", out), out
        assert re.search(rf"{kind}: SoftHSM2 / key file \(p50\): \d+\.\d\d", out)
