"""`reserve-ledger audit --report FILE.html` on a real demo bundle: the JSON twin states the verdict and the
reserves difference; the HTML, rendered by headless Chromium, shows the verdict banner in its colour, the
account at fault and real charts, and loads nothing from the network."""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from matplotlib import image

CHROMIUM = "/usr/bin/chromium"
UNRECORDED_SATS = 50_000_000          # the demo's own unrecorded movement to ops-warm-1 (services/cli/demo.py)
FAIL_RED = (0xC5, 0x30, 0x30)         # .FAIL banner, services/audit/report.py
PASS_GREEN = (0x2F, 0x85, 0x5A)       # .PASS banner
WINDOW = (1200, 2000)
BANNER_ROWS = 300                     # the verdict banner sits in the top 15% of the screenshot
BANNER_PIXELS_MIN = 20_000            # a banner about 1100 x 70 px


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, pathlib.Path]:
    """One demo run and its bundle; a failing report (with --chain) and a passing one (offline)."""
    root = tmp_path_factory.mktemp("audit-report")
    data_dir, out = root / "data", root / "bundle"
    run = cli("demo", "--data-dir", str(data_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    export = cli("export", "--data-dir", str(data_dir), "--out", str(out), "--chain", f"regtest:{data_dir / 'regtest'}")
    assert export.returncode == 0, export.stdout + export.stderr
    failing = cli("audit", str(out), "--chain", f"regtest:{data_dir / 'regtest'}", "--report", str(root / "fail.html"))
    assert failing.returncode == 1, failing.stdout + failing.stderr
    passing = cli("audit", str(out), "--report", str(root / "pass.html"))
    assert passing.returncode == 0, passing.stdout + passing.stderr
    return {"FAIL": root / "fail.html", "PASS": root / "pass.html"}


def chromium(html: pathlib.Path, *mode: str) -> subprocess.CompletedProcess:
    """Headless Chromium on the file, with a fresh profile and no background network traffic."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (Debian package)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=html.parent)
    try:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *mode, f"file://{html}"], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def screenshot(html: pathlib.Path) -> np.ndarray:
    """The rendered page as an (rows, columns, 3) array of 0..255 RGB values."""
    png = html.with_suffix(".png")
    png.unlink(missing_ok=True)
    chromium(html, f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    assert png.exists(), "chromium wrote no screenshot"
    pixels = image.imread(str(png))
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0]), pixels.shape
    return np.rint(pixels[:, :, :3] * 255).astype(np.int32)


def dom_text(html: pathlib.Path) -> str:
    """The rendered DOM with its tags removed."""
    dom = chromium(html, "--dump-dom").stdout
    assert "<body" in dom, dom[:500]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def colour_count(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 3) -> int:
    return int(np.all(np.abs(pixels - np.array(rgb)) <= tolerance, axis=-1).sum())


def assert_not_blank(pixels: np.ndarray) -> None:
    packed = (pixels[:, :, 0] << 16) | (pixels[:, :, 1] << 8) | pixels[:, :, 2]
    distinct = len(np.unique(packed))
    non_white = float(np.mean(np.any(pixels < 245, axis=-1)))
    assert distinct > 200, f"only {distinct} distinct colours: the page did not render its text and charts"
    assert non_white > 0.05, f"only {non_white:.1%} of the pixels are not white"


# --- the JSON twin ---------------------------------------------------------------------------------------

def test_the_json_twin_of_a_chain_audit_states_the_fail_verdict_and_the_reserves_difference(reports):
    result = json.loads(reports["FAIL"].with_suffix(".json").read_text())
    assert result["verdict"] == "FAIL" and result["failures_total"] == 1
    (failure,) = result["failures"]
    assert (failure["check"], failure["where"]) == ("reserves", "account ops-warm-1")
    rows = {row["account_id"]: row for row in result["reserves"]["accounts"]}
    assert rows["ops-warm-1"]["status"] == "difference"
    assert rows["ops-warm-1"]["difference_sats"] == UNRECORDED_SATS
    assert rows["ops-warm-1"]["onchain_sats"] - rows["ops-warm-1"]["ledger_sats"] == UNRECORDED_SATS
    assert {name: row["status"] for name, row in rows.items() if name != "ops-warm-1"} == {
        "bny-cold-1": "match", "vault-cold-2": "match", "vault-cold-3": "match"}
    statuses = {check["check"]: check["status"] for check in result["checks"]}
    assert statuses["reserves"] == "fail" and statuses["chain"] == "pass" and statuses["tree_heads"] == "pass"


def test_the_json_twin_of_an_offline_audit_passes_and_skips_the_chain_checks(reports):
    result = json.loads(reports["PASS"].with_suffix(".json").read_text())
    assert result["verdict"] == "PASS" and result["failures_total"] == 0 and result["failures"] == []
    statuses = {check["check"]: check["status"] for check in result["checks"]}
    assert statuses["chain"] == statuses["reserves"] == "skipped"
    assert statuses["events"] == statuses["anchors"] == statuses["headers"] == "pass"


# --- the HTML in a browser -------------------------------------------------------------------------------

def test_a_failing_report_renders_a_red_verdict_and_names_the_account(reports):
    pixels = screenshot(reports["FAIL"])
    assert_not_blank(pixels)
    top = pixels[:BANNER_ROWS]
    assert colour_count(top, FAIL_RED) > BANNER_PIXELS_MIN, "no red verdict banner near the top"
    assert colour_count(top, PASS_GREEN) < BANNER_PIXELS_MIN // 10
    text = dom_text(reports["FAIL"])
    assert "Verdict: FAIL" in text and "Verdict: PASS" not in text
    assert "ops-warm-1" in text
    assert "0.50000000" in text            # the difference, in BTC, in the reserves table
    assert re.search(r"reserves\s+account ops-warm-1\s+on chain at height \d+: 250,000,000 sats", text), text[-3000:]


def test_a_passing_report_renders_a_green_verdict(reports):
    pixels = screenshot(reports["PASS"])
    assert_not_blank(pixels)
    top = pixels[:BANNER_ROWS]
    assert colour_count(top, PASS_GREEN) > BANNER_PIXELS_MIN, "no green verdict banner near the top"
    assert colour_count(top, FAIL_RED) < BANNER_PIXELS_MIN // 10
    text = dom_text(reports["PASS"])
    assert "Verdict: PASS" in text and "Verdict: FAIL" not in text


def test_the_reports_load_nothing_from_the_network(reports):
    for html in reports.values():
        page = html.read_text()
        assert "<svg" in page, "the charts should be inline SVG"
        remote = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//[^"'\s>]*""", page, re.IGNORECASE)
        assert remote == [], remote
        assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//|@import""", page, re.IGNORECASE)
