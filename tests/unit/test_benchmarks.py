"""The benchmark scripts run end to end at small sizes, so they cannot rot between measurement runs.

These check that the scripts work and report what they claim; speed is measured by running them by hand.
"""

import pathlib
import re
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import POSTGRES_URL

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
    out = run("bench_commands.py", "--clients", "2", "--seconds", "1", "--no-sync-echo")
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


def test_monitor_benchmark_times_alerts_it_checked_were_recorded(tmp_path):
    out = run("bench_monitor.py", "--accounts", "3", "--rounds", "2", "--block-txs", "2", "--data-dir", str(tmp_path))
    assert re.search(r"block mined -> alerts recorded: p50 [\d.]+ ms, max [\d.]+ ms", out)
    assert re.search(r"step without a new block: p50 [\d.]+ ms", out)


def test_witness_benchmark_reports_the_time_to_a_quorum_of_cosignatures(tmp_path):
    out = run("bench_witness.py", "--witnesses", "2", "--heads", "2", "--pause-s", "1.2", "--data-dir", str(tmp_path))
    assert re.search(r"new head -> quorum of cosignatures: p50 \d+ ms, p95 \d+ ms", out), out


def test_reserves_benchmark_reconciles_and_proves_control_of_what_it_funded(tmp_path):
    out = run("bench_reserves.py", "--addresses", "60", "--funded", "4", "--data-dir", str(tmp_path))
    assert re.search(r"derivation: 60 scripts of a 2-of-3 multisig", out)
    assert re.search(r"reconciliation \(embedded\): [\d,]+ scripts scanned, 4 funded, status match", out)
    assert re.search(r"control proofs: 4 BIP-322 2-of-3 signatures verified .*; proven ([\d,]+) of \1 sats", out)


def test_signing_benchmark_compares_a_softhsm2_token_with_a_key_file():
    """The script creates its own SoftHSM2 token, checks a signature of each kind, and reports both costs."""
    out = run("bench_signing.py", "--signatures", "40")
    for kind in ("tree head", "anchor digest"):
        for where in ("key file", "SoftHSM2"):
            assert re.search(rf"{kind}, {where}: p50 [\d.,]+ us, p99 [\d.,]+ us per signature", out), out
        assert re.search(rf"{kind}: SoftHSM2 / key file \(p50\): \d+\.\d\d", out)


def test_longrun_benchmark_reports_every_window_on_a_prefilled_log(tmp_path):
    """The long-run mix runs against a real server on a log prefilled through the application, prints one row
    per window and the first/last comparison."""
    out = run("bench_longrun.py", "--minutes", "0.1", "--window-s", "3", "--probe", "20",
              "--prefill-purchases", "600", "--data-dir", str(tmp_path))
    assert re.search(r"prefilled 600 purchases \(616 events\)", out), out
    position = int(re.search(r"GetBalances alone, one client, log position ([\d,]+)", out).group(1).replace(",", ""))
    assert position == 615, out   # the opening commands replayed by request id: nothing added before the load
    rows = re.findall(r"^ +\d+ +\d+ +\d+ +\d+ ", out, re.MULTILINE)
    assert len(rows) == 2, out
    assert re.search(r"last / first window commands/s: \d+\.\d\d", out)
    assert re.search(r"server RSS: \d+ MB before the load, \d+ MB at the end", out)


@pytest.mark.postgres
def test_longrun_benchmark_spreads_the_mix_over_two_postgresql_replicas_and_drops_its_schema(tmp_path):
    """Two servers on one PostgreSQL schema: each window has a system row and one row per replica, both replicas
    record commands, approvals sent to the other replica than the proposal succeed (no errors), the CPU and
    group-commit lines and replica 0's profile are printed, and the schema the run made is gone afterwards. An
    unreachable PostgreSQL fails the run, hence the test."""
    out = run("bench_longrun.py", "--database", POSTGRES_URL, "--replicas", "2", "--minutes", "0.1",
              "--window-s", "3", "--probe", "5", "--data-dir", str(tmp_path), "--profile", str(tmp_path / "r0.prof"))
    schema = re.search(r"storage: PostgreSQL schema (longrun_[0-9a-f]{12}), 2 replica\(s\)", out).group(1)
    assert len(re.findall(r"^ +\d+ +\d+ +\d+ +\d+ ", out, re.MULTILINE)) == 2, out
    for replica in ("r0", "r1"):
        assert len(re.findall(rf"^ +\d+/{replica} +\d+ +\d+ +\d+ ", out, re.MULTILINE)) == 2, out
    whole = re.search(r"whole run: \d+ calls/s, \d+ commands/s \(r0 (\d+), r1 (\d+)\), (\d+) errors", out)
    assert whole and int(whole.group(1)) > 0 and int(whole.group(2)) > 0, out
    assert whole.group(3) == "0", out
    assert re.search(r"CPU, in cores busy over the load: replicas r0 [\d.]+, r1 [\d.]+; .* whole machine", out), out
    assert re.search(r"commands per group commit during the load: r0 [\d.]+ \(\d+ commits\), r1 ", out), out
    assert re.search(r"the 25 functions with the most own time:\n.*ncalls +tottime", out, re.DOTALL), out
    with psycopg.connect(POSTGRES_URL) as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()[0]
    assert left == 0
