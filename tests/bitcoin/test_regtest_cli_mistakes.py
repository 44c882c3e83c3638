"""Mistakes around the embedded regtest chain end in one line, exit 2 and nothing created on disk.

Each test runs the real CLI (`python -m services.cli.main`) as a process; before this behaviour a mistyped
`--chain regtest:DIR` silently mined a new chain at the wrong path, and `regtest-node` created DIR before
refusing a non-loopback host, a bad port or half a login, with a traceback or a bare SystemExit string.
"""

import socket
import subprocess
import sys

import pytest

from services import errors
from services.bitcoin.backends import ChainSpecInvalid, open_backend
from services.bitcoin.core_rpc import CoreRpcClient
from services.bitcoin.esplora import EsploraClient
from services.bitcoin.regtest.chain import RegtestChain


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def _refused(result: subprocess.CompletedProcess, exit_code: int = errors.EXIT_USAGE) -> str:
    """The one stderr line of a refused command (after checking there is exactly one and no traceback)."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reserve-ledger: error: "), result.stderr
    assert result.returncode == exit_code, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def existing_chain(tmp_path_factory):
    directory = tmp_path_factory.mktemp("existing") / "chain"
    RegtestChain.create(directory).close()
    return directory


# --- regtest-node ---------------------------------------------------------------------------------------------

def test_regtest_node_refuses_a_directory_without_a_chain_and_says_how_to_create_one(tmp_path):
    missing = tmp_path / "mistyped"
    line = _refused(_cli("regtest-node", "--dir", str(missing)))
    assert str(missing) in line and "--create" in line
    assert not missing.exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com"])
def test_regtest_node_refuses_a_non_loopback_host_before_creating_anything(tmp_path, host):
    directory = tmp_path / "chain"
    assert host in _refused(_cli("regtest-node", "--dir", str(directory), "--create", "--host", host))
    assert not directory.exists()


@pytest.mark.parametrize("option, port", [("--rpc-port", "65536"), ("--esplora-port", "-1")])
def test_regtest_node_refuses_a_port_out_of_range_before_creating_anything(tmp_path, option, port):
    directory = tmp_path / "chain"
    line = _refused(_cli("regtest-node", "--dir", str(directory), "--create", option, port))
    assert option in line and port in line
    assert not directory.exists()


@pytest.mark.parametrize("login", [["--rpc-user", "auditor"], ["--rpc-password", "s3cret"]])
def test_regtest_node_refuses_half_a_login_before_creating_anything(tmp_path, login):
    directory = tmp_path / "chain"
    line = _refused(_cli("regtest-node", "--dir", str(directory), "--create", *login))
    assert "--rpc-user and --rpc-password go together" in line
    assert not directory.exists()


def test_regtest_node_refuses_a_regular_file_as_its_directory(tmp_path):
    not_a_directory = tmp_path / "notes.txt"
    not_a_directory.write_text("keep me")
    assert "is a file" in _refused(_cli("regtest-node", "--dir", str(not_a_directory), "--create"))
    assert not_a_directory.read_text() == "keep me"


def test_regtest_node_refuses_a_port_in_use_before_creating_anything(tmp_path):
    directory = tmp_path / "chain"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        line = _refused(_cli("regtest-node", "--dir", str(directory), "--create", "--esplora-port", port))
    assert port in line and "in use" in line
    assert not directory.exists()


# --- commands that read a chain through --chain ---------------------------------------------------------------

def test_a_command_pointed_at_a_missing_regtest_chain_refuses_and_creates_none(tmp_path):
    missing = tmp_path / "regtest-typo"
    (tmp_path / "bundle").mkdir()  # the bundle is there; only the chain is mistyped
    line = _refused(_cli("audit", str(tmp_path / "bundle"), "--chain", f"regtest:{missing}"))
    assert str(missing) in line and "regtest-node" in line
    assert not missing.exists()


@pytest.mark.parametrize("spec, reason", [
    ("regtset:/tmp/x", "unknown backend 'regtset'"), ("regtest:", "nothing after 'regtest:'"),
    ("core:http://:8332", "URL with a host"), ("core:http://127.0.0.1:99999", "not a number in 1..65535"),
    ("core:ftp://127.0.0.1:8332", "not an http:// or https:// URL"),
    ("esplora:127.0.0.1:3002", "not an http:// or https:// URL")])
def test_a_malformed_chain_spec_is_one_line_naming_the_problem(tmp_path, spec, reason):
    assert reason in _refused(_cli("audit", str(tmp_path / "bundle"), "--chain", spec))


# --- open_backend and RegtestChain, in process -----------------------------------------------------------------

def test_open_backend_refuses_an_unknown_kind_as_a_configuration_mistake():
    with pytest.raises(ChainSpecInvalid, match="unknown backend 'bitcoind'") as refused:
        open_backend("bitcoind:http://127.0.0.1:8332")
    assert isinstance(refused.value, errors.ConfigurationInvalid)


def test_open_backend_refuses_a_missing_regtest_directory_without_creating_it(tmp_path):
    with pytest.raises(errors.NothingStoredHere, match="regtest-node --dir .* --create"):
        open_backend(f"regtest:{tmp_path / 'absent'}")
    assert not (tmp_path / "absent").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.NothingStoredHere):
        open_backend(f"regtest:{tmp_path / 'empty'}")
    assert list((tmp_path / "empty").iterdir()) == []


def test_open_backend_never_shows_a_password_in_its_message():
    with pytest.raises(ChainSpecInvalid) as refused:
        open_backend("core:http://auditor:hunter2@127.0.0.1:99999")
    assert "hunter2" not in str(refused.value)


def test_open_backend_still_opens_every_kind(existing_chain, tmp_path):
    chain = open_backend(f"regtest:{existing_chain}")
    try:
        assert chain.tip_height() == 200
    finally:
        chain.close()
    cookie = tmp_path / ".cookie"
    assert isinstance(open_backend(f"core:http://127.0.0.1:18443?cookie={cookie}"), CoreRpcClient)
    assert isinstance(open_backend("core:http://user:pw@[::1]:18443"), CoreRpcClient)
    assert isinstance(open_backend("esplora:http://127.0.0.1:3002/api"), EsploraClient)


def test_creating_a_chain_where_one_exists_is_refused(existing_chain):
    size = (existing_chain / "blocks.dat").stat().st_size
    with pytest.raises(errors.AlreadyExists):
        RegtestChain.create(existing_chain)
    assert (existing_chain / "blocks.dat").stat().st_size == size
