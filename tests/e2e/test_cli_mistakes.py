"""Every user mistake at the command line ends in one line on stderr, a documented exit code and no traceback,
and creates nothing: no directory, no database file, no certificate, no bundle."""

import os
import socket
import sqlite3
import subprocess
import sys

import pytest

from services.compose import ServerConfig, build_server
from services.errors import EXIT_CHECK_FAILED, EXIT_USAGE
from services.store.config import SQLITE_FILE_NAME
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, purchase

EVENTS = 6


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def assert_one_line(result: subprocess.CompletedProcess, exit_code: int, *words: str) -> str:
    """The documented exit code, exactly one line on stderr that contains `words`, no traceback anywhere."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def snapshot(directory) -> dict:
    """Every file under `directory` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture
def ledger_dir(tmp_path, certs_dir):
    """A SQLite ledger holding EVENTS events and a signed tree head over them; the server is stopped."""
    data_dir = tmp_path / "ledger"
    server = build_server(ServerConfig(metrics_listen=None, listen="127.0.0.1:0", data_dir=str(data_dir), certs_dir=str(certs_dir),
                                       create_store=True)).start()
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        open_account(clients.alice, "cold-a")
        for n in range(EVENTS - 1):
            purchase(clients.alice, "cold-a", 1 + n, f"buy-{n}")
    finally:
        server.stop(grace_s=1)
    return data_dir


# --- serve -------------------------------------------------------------------------------------------------


def test_serve_without_certs_says_how_to_make_them(tmp_path):
    result = cli("serve", "--data-dir", tmp_path / "d", "--init", "--listen", "127.0.0.1:0")
    assert_one_line(result, EXIT_USAGE, "--certs", "certs init")
    assert not (tmp_path / "d").exists()


def test_plaintext_on_a_public_address_is_refused(tmp_path):
    result = cli("serve", "--insecure-loopback", "--listen", "0.0.0.0:0", "--data-dir", tmp_path / "d", "--init")
    assert_one_line(result, EXIT_USAGE, "loopback")
    assert not (tmp_path / "d").exists()


def test_a_port_in_use_is_named(tmp_path, certs_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--certs", certs_dir, "--listen", f"127.0.0.1:{port}", "--data-dir", tmp_path / "d",
                     "--init")
    assert_one_line(result, EXIT_USAGE, str(port))
    assert not (tmp_path / "d").exists()


def test_a_mistyped_data_dir_is_not_created_by_serve(tmp_path, certs_dir):
    result = cli("serve", "--certs", certs_dir, "--listen", "127.0.0.1:0", "--data-dir", tmp_path / "typo")
    assert_one_line(result, EXIT_USAGE, "typo", "--init")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/test", "postgresql://postgres@127.0.0.1:5432/",
                                 "postgresql://postgres@127.0.0.1:99999/test"])
def test_a_malformed_database_url_is_refused(url, certs_dir):
    result = cli("serve", "--certs", certs_dir, "--listen", "127.0.0.1:0", "--database", url, "--signing-key",
                 "k.pem", "--init")
    assert_one_line(result, EXIT_USAGE, "--database")


def test_an_unreachable_postgresql_is_one_line(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        result = cli("balances", "--database", f"postgresql://postgres@127.0.0.1:{port}/test")
    assert_one_line(result, EXIT_USAGE, "cannot reach PostgreSQL", str(port))


@pytest.mark.postgres
def test_a_schema_without_a_ledger_is_refused_and_left_empty(certs_dir):
    import psycopg
    from tests.conftest import POSTGRES_URL, _drop_schema, _postgres_schema
    schema = _postgres_schema()
    try:
        result = cli("verify", "--database", f"{POSTGRES_URL}?schema={schema}")
        assert_one_line(result, EXIT_USAGE, schema, "--init")
        with psycopg.connect(POSTGRES_URL) as conn:
            tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                                  (schema,)).fetchone()[0]
        assert tables == 0
    finally:
        _drop_schema(schema)


def test_an_unknown_chain_backend_is_refused_before_anything_opens(tmp_path, certs_dir):
    result = cli("serve", "--certs", certs_dir, "--listen", "127.0.0.1:0", "--data-dir", tmp_path / "d", "--init",
                 "--chain", "bitcoind:http://127.0.0.1:1")
    assert_one_line(result, EXIT_USAGE, "bitcoind")
    assert not (tmp_path / "d").exists()


# --- certs -------------------------------------------------------------------------------------------------


def test_a_bad_role_creates_no_certificates(tmp_path):
    result = cli("certs", "init", tmp_path / "certs", "--identity", "zed:king")
    assert_one_line(result, EXIT_USAGE, "king", "operator")
    assert not (tmp_path / "certs").exists()


def test_certs_init_keeps_an_existing_ca_unless_forced(tmp_path):
    assert cli("certs", "init", tmp_path / "certs", "--identity", "ann:operator").returncode == 0
    before = snapshot(tmp_path / "certs")
    again = cli("certs", "init", tmp_path / "certs", "--identity", "ann:operator")
    assert_one_line(again, EXIT_USAGE, "already holds a CA", "--force")
    assert snapshot(tmp_path / "certs") == before
    forced = cli("certs", "init", tmp_path / "certs", "--identity", "ann:operator", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "certs" / "ca.pem").read_bytes() != b"" and snapshot(tmp_path / "certs") != before


def test_private_keys_are_never_readable_by_others(tmp_path):
    old = os.umask(0)
    try:
        assert cli("certs", "init", tmp_path / "certs", "--identity", "ann:operator").returncode == 0
    finally:
        os.umask(old)
    for name in ("ca.key", "server.key", "ann.key"):
        assert (tmp_path / "certs" / name).stat().st_mode & 0o077 == 0, name


# --- commands that read stored data ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [["verify"], ["rebuild"], ["balances"],
                                     ["export", "--out", "OUT", "--public-key", "00" * 32],
                                     ["anchor", "--chain", "regtest:CHAIN"],
                                     ["proof", "--chain", "regtest:CHAIN", "--position", "0", "--out", "OUT"]])
def test_a_mistyped_data_dir_is_refused_and_not_created(command, tmp_path):
    command = [str(tmp_path / "out") if c == "OUT" else c.replace("CHAIN", str(tmp_path / "chain")) for c in command]
    result = cli(*command, "--data-dir", tmp_path / "typo")
    assert_one_line(result, EXIT_USAGE, "typo")
    assert not (tmp_path / "typo").exists() and not (tmp_path / "out").exists()


def test_balances_beyond_the_log_or_negative_are_refused(ledger_dir):
    before = snapshot(ledger_dir)
    beyond = cli("balances", "--data-dir", ledger_dir, "--as-of-position", EVENTS)
    assert_one_line(beyond, EXIT_USAGE, f"size {EVENTS}", "from 0")
    negative = cli("balances", "--data-dir", ledger_dir, "--as-of-position", "-1")
    assert_one_line(negative, EXIT_USAGE, "negative")
    last = cli("balances", "--data-dir", ledger_dir, "--as-of-position", EVENTS - 1)
    assert last.returncode == 0 and f"as of position {EVENTS - 1}" in last.stdout
    assert snapshot(ledger_dir).keys() == before.keys()


def _delete_log_rows(data_dir, positions_from: int) -> None:
    """What an insider does to hide events: delete their log rows behind the service's back."""
    with sqlite3.connect(data_dir / SQLITE_FILE_NAME) as db:
        db.execute("DELETE FROM ledger_log WHERE position >= ?", (positions_from,))


def test_export_of_a_log_shorter_than_its_signed_head_is_one_line_and_writes_nothing(ledger_dir, tmp_path):
    _delete_log_rows(ledger_dir, EVENTS - 2)
    result = cli("export", "--data-dir", ledger_dir, "--out", tmp_path / "bundle",
                 "--signing-key", ledger_dir / "tree-head-signing.key")
    assert_one_line(result, EXIT_CHECK_FAILED, "signed tree head covers", str(EVENTS))
    assert not (tmp_path / "bundle").exists()


def test_rebuild_of_a_log_the_replay_refuses_is_one_line(ledger_dir):
    with sqlite3.connect(ledger_dir / SQLITE_FILE_NAME) as db:
        db.execute("DELETE FROM ledger_log WHERE position = 0")  # the account's opening disappears
    result = cli("rebuild", "--data-dir", ledger_dir)
    assert_one_line(result, EXIT_CHECK_FAILED, "replay refuses", "verify")


def test_verify_with_the_wrong_key_names_no_position_as_none(ledger_dir):
    result = cli("verify", "--data-dir", ledger_dir, "--public-key", "11" * 32)
    assert result.returncode == EXIT_CHECK_FAILED
    assert "None" not in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert "signature does not verify" in result.stdout


def test_a_public_key_that_is_not_hex_is_refused(ledger_dir):
    result = cli("verify", "--data-dir", ledger_dir, "--public-key", "xyz")
    assert_one_line(result, EXIT_USAGE, "--public-key", "64 hex")


def test_an_unknown_option_is_one_line():
    assert_one_line(cli("balances", "--as-of", "3"), EXIT_USAGE, "--as-of")


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(ledger_dir):
    (ledger_dir / SQLITE_FILE_NAME).write_bytes(b"not a database" * 100)  # damage no user mistake explains
    for stale in ("-wal", "-shm"):
        (ledger_dir / (SQLITE_FILE_NAME + stale)).unlink(missing_ok=True)
    line = assert_one_line(cli("balances", "--data-dir", ledger_dir), 70, "unexpected", "traceback in")
    written = line.rsplit("traceback in ", 1)[1].rstrip(")")
    assert "Traceback" in open(written).read()
