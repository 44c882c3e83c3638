"""The witness-related command line: checkpoint [--vkey], serve --witness/--log-origin, audit --witness; every
mistake is one line and exit 2 with nothing created; witness lag shows in the metrics."""

import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.compose import ServerConfig, build_server
from services.errors import EXIT_USAGE
from services.witness import note
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account
from tests.e2e.processes import free_port
from tests.e2e.test_cli_mistakes import assert_one_line, cli
from tests.witness.helpers import init_witness

ORIGIN = "reserve.test/ledger"


@pytest.fixture
def ledger_dir(certs_dir, tmp_path):
    """A SQLite ledger of 3 events, its server stopped."""
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0",
                                       data_dir=str(tmp_path / "data"), certs_dir=str(certs_dir))).start()
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        for i in range(3):
            open_account(clients.alice, f"cold-{i}")
    finally:
        server.stop(grace_s=1)
    return tmp_path / "data"


def test_checkpoint_prints_a_note_that_verifies_with_the_vkey_it_prints(ledger_dir):
    """`checkpoint --vkey` and `checkpoint` agree: the note opens with that vkey and names the latest head."""
    vkey = cli("checkpoint", "--data-dir", ledger_dir, "--vkey", "--log-origin", ORIGIN)
    signed = cli("checkpoint", "--data-dir", ledger_dir, "--log-origin", ORIGIN)
    assert vkey.returncode == 0 and signed.returncode == 0, vkey.stderr + signed.stderr
    opened = note.open_note(signed.stdout.encode(), note.parse_vkey(vkey.stdout.strip()))
    assert note.parse_checkpoint(opened.text).tree_size == 3
    default = cli("checkpoint", "--data-dir", ledger_dir, "--vkey").stdout
    assert default.startswith("reserve-ledger.local/")


def test_checkpoint_mistakes_are_one_line(ledger_dir, tmp_path):
    """A missing ledger, a bad origin, a size with no head: exit 2, one line."""
    assert_one_line(cli("checkpoint", "--data-dir", tmp_path / "none"), EXIT_USAGE, "no ledger")
    assert_one_line(cli("checkpoint", "--data-dir", ledger_dir, "--log-origin", "a b"), EXIT_USAGE, "--log-origin")
    assert_one_line(cli("checkpoint", "--data-dir", ledger_dir, "--tree-size", "2"), EXIT_USAGE, "size 2")
    assert not (tmp_path / "none").exists()


def _cosigner_vkey(name: str) -> str:
    public = note.KeySigner(Ed25519PrivateKey.generate()).public_key_raw
    return note.verifier_key(name, note.ALG_COSIGNATURE_V1, public).text()


@pytest.mark.parametrize("witness_args", [
    ["--witness", "w1"],                                                              # no vkey
    ["--witness", f"w1={_cosigner_vkey('w1')}"],                                      # no URL
    ["--witness", f"w2={_cosigner_vkey('w1')}@http://127.0.0.1:1"],                    # name is not the vkey's
    ["--witness", f"w1={_cosigner_vkey('w1')}@ftp://host"],                            # not http(s)
    ["--witness", f"w1={_cosigner_vkey('w1')}@http://127.0.0.1:1", "--witness-quorum", "2"],   # quorum > witnesses
    ["--log-origin", "has space"],
], ids=["no-vkey", "no-url", "wrong-name", "bad-url", "quorum", "origin"])
def test_serve_refuses_bad_witness_options_before_creating_anything(witness_args, certs_dir, tmp_path):
    """serve checks --witness, --witness-quorum and --log-origin first: one line, exit 2, no data dir."""
    result = cli("serve", "--init", "--data-dir", tmp_path / "data", "--certs", certs_dir, "--listen",
                 f"127.0.0.1:{free_port()}", "--metrics-listen", "off", *witness_args)
    assert_one_line(result, EXIT_USAGE, witness_args[0].split("-quorum")[0] if len(witness_args) == 2 else "quorum")
    assert not (tmp_path / "data").exists()


def test_audit_refuses_a_log_vkey_as_a_witness_key(tmp_path):
    """A witness key must be a cosignature (0x04) vkey: a log's (0x01) vkey is refused in one line."""
    log_vkey = note.verifier_key("w1", note.ALG_ED25519, bytes(32)).text()
    tmp_path.joinpath("bundle").mkdir()
    assert_one_line(cli("audit", tmp_path / "bundle", "--witness", f"w1={log_vkey}"), EXIT_USAGE, "--witness")


def test_witness_lag_is_in_the_metrics_while_a_witness_is_down(certs_dir, tmp_path):
    """With the witness unreachable, the lag equals the latest head's size and its worker is unhealthy."""
    key = init_witness(tmp_path / "w1", "witness.test/w1")
    server = build_server(ServerConfig(
        create_store=True, metrics_listen="127.0.0.1:0", listen="127.0.0.1:0", data_dir=str(tmp_path / "data"),
        certs_dir=str(certs_dir), log_origin=ORIGIN, witness_quorum=1,
        witnesses=(f"witness.test/w1={key}@http://127.0.0.1:{free_port()}",))).start()
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        for i in range(2):
            open_account(clients.alice, f"cold-{i}")
        import time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
            if 'reserve_ledger_witness_lag_events{witness="witness.test/w1"} 2.0' in page and \
                    'reserve_ledger_worker_healthy{worker="witness-witness.test/w1"} 0.0' in page:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(page)
    finally:
        server.stop(grace_s=1)
