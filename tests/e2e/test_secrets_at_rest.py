"""Secrets at rest: private keys are 0600 from their first byte, the data dir 0700 and the database files
0600; `serve` refuses private keys that group or others may read; the PostgreSQL password comes from a file,
never from the command line. Every command runs as a real process."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from services.compose import StorageConfig
from services.errors import EXIT_USAGE
from services.store.config import SQLITE_FILE_NAME
from services.store.signing import SIGNING_KEY_FILE_NAME, load_or_create_signing_key
from tests.conftest import POSTGRES_URL, _drop_schema, _postgres_schema
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account
from tests.e2e.processes import start_server
from tests.e2e.test_cli_mistakes import assert_one_line, cli

# Run the CLI with an audit hook that records, for every *.key file, how it was first opened for writing.
AUDITED_CLI = """
import json, os, sys
first = {}
def hook(event, args):
    if event == "open" and str(args[0]).endswith(".key") and str(args[0]) not in first:
        flags = args[2] if isinstance(args[2], int) else -1
        if args[1] is not None or flags & (os.O_WRONLY | os.O_RDWR):
            first[str(args[0])] = {"mode": args[1], "exclusive": flags != -1 and bool(flags & os.O_EXCL)}
sys.addaudithook(hook)
os.umask(0)
from services.cli.main import main
code = main(sys.argv[1:])
print(json.dumps(first))
sys.exit(code)
"""


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_certs_init_creates_every_private_key_0600_from_its_first_byte_even_under_umask_000(tmp_path):
    """Each key file is created by an exclusive open that carries mode 0600 (never written first and tightened
    after, which leaves it readable by everyone for a moment), and ends 0600 even with umask 000."""
    out = tmp_path / "certs"
    result = subprocess.run([sys.executable, "-c", AUDITED_CLI, "certs", "init", str(out)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first_opens = json.loads(result.stdout.strip().splitlines()[-1])
    keys = sorted(out.glob("*.key"))
    assert len(keys) >= 3 and {str(k) for k in keys} == set(first_opens)
    for key in keys:
        assert first_opens[str(key)] == {"mode": None, "exclusive": True}, key  # os.open(O_CREAT|O_EXCL, 0600)
        assert mode_of(key) == 0o600, key
    assert mode_of(out) == 0o700
    assert "keep ca.key off the server" in result.stdout


def test_a_new_sqlite_ledger_keeps_its_database_wal_and_keys_to_its_owner(tmp_path, certs_dir):
    """serve --init under the usual umask (022): data dir 0700; ledger.sqlite, its -wal and -shm, and the
    tree-head key 0600 (SQLite alone would create the database and its WAL 0644)."""
    previous_umask = os.umask(0o022)
    data_dir = tmp_path / "data"
    try:
        process, address = start_server(certs_dir, data_dir=data_dir)
    finally:
        os.umask(previous_umask)
    try:
        open_account(Clients(address, certs_dir).alice, "cold-a")
        assert mode_of(data_dir) == 0o700
        for name in (SQLITE_FILE_NAME, SQLITE_FILE_NAME + "-wal", SQLITE_FILE_NAME + "-shm", SIGNING_KEY_FILE_NAME):
            assert (data_dir / name).exists(), name
            assert mode_of(data_dir / name) == 0o600, name
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture
def own_certs(tmp_path, certs_dir):
    """A copy of the test certificates whose modes a test may change."""
    copy = tmp_path / "certs"
    shutil.copytree(certs_dir, copy)
    return copy


@pytest.mark.parametrize("name, mode", [("server.key", 0o640), ("server.key", 0o604), ("ca.key", 0o644)])
def test_serve_refuses_a_tls_or_ca_key_that_group_or_others_may_read(tmp_path, own_certs, name, mode):
    """One line naming the file and the fix, exit 2, and no data dir created."""
    os.chmod(own_certs / name, mode)
    result = cli("serve", "--certs", own_certs, "--listen", "127.0.0.1:0", "--data-dir", tmp_path / "d", "--init")
    line = assert_one_line(result, EXIT_USAGE, str(own_certs / name), f"{mode:04o}", "chmod 600")
    assert "others" in line if mode & 0o007 else "group" in line
    assert not (tmp_path / "d").exists()


def test_serve_needs_no_ca_key_on_the_server(tmp_path, own_certs):
    """The server starts with ca.pem, server.pem and server.key only."""
    (own_certs / "ca.key").unlink()
    process, _ = start_server(own_certs, data_dir=tmp_path / "data")
    process.terminate()
    assert process.wait(timeout=60) in (0, -15)


def test_serve_refuses_a_tree_head_key_that_others_may_read(tmp_path, certs_dir):
    """The tree-head key is held to the same rule as the anchor key: readable by its owner only."""
    key = tmp_path / "signing.key"
    load_or_create_signing_key(key)
    os.chmod(key, 0o644)
    result = cli("serve", "--certs", certs_dir, "--listen", "127.0.0.1:0", "--data-dir", tmp_path / "d", "--init",
                 "--signing-key", key)
    assert_one_line(result, EXIT_USAGE, str(key), "0644", "chmod 600")


def test_the_database_password_comes_from_a_private_file(tmp_path):
    """--database-password-file: its first line is the password; a file others may read is refused; a URL that
    carries a password too is refused; the password never needs to be on the command line."""
    secret = tmp_path / "pg-password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o600)
    assert StorageConfig(None, POSTGRES_URL, str(secret)).env()["POSTGRES_PASSWORD"] == "s3cret"
    os.chmod(secret, 0o644)
    result = cli("balances", "--database", POSTGRES_URL + "?schema=nothing_here", "--database-password-file", secret)
    assert_one_line(result, EXIT_USAGE, "--database-password-file", "0644", "chmod 600")
    os.chmod(secret, 0o600)
    with_password = POSTGRES_URL.replace("postgres@", "postgres:other@")
    result = cli("balances", "--database", with_password, "--database-password-file", secret)
    assert_one_line(result, EXIT_USAGE, "remove the password from the URL")


def test_a_postgresql_ledger_opens_with_the_password_from_a_file(tmp_path, certs_dir):
    """A real command against PostgreSQL given --database-password-file (the test server trusts loopback, so
    this shows the option is wired through to the connection without breaking it)."""
    schema = _postgres_schema()
    secret = tmp_path / "pg-password"
    descriptor = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(descriptor, b"unused-by-trust-auth\n")
    os.close(descriptor)
    try:
        result = cli("balances", "--database", f"{POSTGRES_URL}?schema={schema}", "--database-password-file", secret)
        assert_one_line(result, EXIT_USAGE, schema, "--init")  # reached PostgreSQL: the schema holds no ledger
    finally:
        _drop_schema(schema)


def test_a_database_an_older_version_left_readable_is_made_private_on_open(tmp_path, certs_dir):
    """ledger.sqlite at 0644 (as SQLite alone creates it) is 0600 once a command opens the ledger, with a warning."""
    data_dir = tmp_path / "data"
    process, _ = start_server(certs_dir, data_dir=data_dir)
    process.terminate()
    process.wait(timeout=60)
    os.chmod(data_dir / SQLITE_FILE_NAME, 0o644)
    result = cli("balances", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert mode_of(data_dir / SQLITE_FILE_NAME) == 0o600 and "now 0600" in result.stderr
