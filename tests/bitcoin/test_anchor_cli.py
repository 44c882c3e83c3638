"""`reserve-ledger anchor`, `anchor psbt` / `anchor submit` and `proof`, run as real processes on the embedded chain."""

import subprocess
import sys

import pytest
from bitcoinutils.keys import PrivateKey
from bitcoinutils.psbt import PSBT
from bitcoinutils.setup import setup

from ledger.event_proofs import verify_event_timestamp
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.regtest.chain import RegtestChain
from services.compose import ServerConfig, build_server
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, purchase


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def recorded(tmp_path, certs_dir):
    """A SQLite data dir holding a few events, the service stopped."""
    data_dir = tmp_path / "data"
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=str(data_dir), certs_dir=str(certs_dir))).start()
    clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
    open_account(clients.alice, "cold-a")
    purchase(clients.alice, "cold-a", 2, "buy-1")
    server.stop(grace_s=1)
    return data_dir


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


def test_anchor_then_proof_from_the_command_line(recorded, chain, tmp_path):
    key = AnchorKey.generate("regtest")
    key.save(recorded / "anchor-wallet.wif")
    storage = ["--data-dir", str(recorded)]
    unfunded = _cli("anchor", *storage, "--chain", f"regtest:{chain.directory}")
    assert unfunded.returncode == 1 and key.address in unfunded.stderr

    chain.send(key.script_pubkey, 50_000)
    chain.mine(1)
    first = _cli("anchor", *storage, "--chain", f"regtest:{chain.directory}")
    assert first.returncode == 0, first.stderr
    assert "broadcast anchor" in first.stdout and "broadcast" in first.stdout
    not_yet = _cli("proof", *storage, "--chain", f"regtest:{chain.directory}", "--position", "1", "--out",
                   str(tmp_path / "p"))
    assert not_yet.returncode == 3 and "not anchored yet" in not_yet.stderr

    chain.mine(1)
    second = _cli("anchor", *storage, "--chain", f"regtest:{chain.directory}")
    assert "included" in second.stdout and "broadcast anchor" not in second.stdout
    written = _cli("proof", *storage, "--chain", f"regtest:{chain.directory}", "--position", "1", "--out",
                   str(tmp_path / "p"))
    assert written.returncode == 0, written.stderr
    event_bytes = (tmp_path / "p" / "event.bin").read_bytes()
    header = chain.block_header(chain.block_hash(chain.tip_height()))
    assert verify_event_timestamp(event_bytes, (tmp_path / "p" / "event.bin.ots").read_bytes(), header) == \
        chain.tip_height()
    assert (tmp_path / "p" / "proof.json").read_text().startswith("{")

    beyond = _cli("proof", *storage, "--chain", f"regtest:{chain.directory}", "--position", "999", "--out",
                  str(tmp_path / "q"))
    assert beyond.returncode == 2 and "beyond the log" in beyond.stderr


def test_the_psbt_flow_lets_an_external_signer_hold_the_key(recorded, chain, tmp_path):
    setup("regtest")
    external = AnchorKey.generate("regtest")  # lives in the "HSM": the ledger only sees its public key
    chain.send(external.script_pubkey, 50_000)
    chain.mine(1)
    common = ["--data-dir", str(recorded), "--chain", f"regtest:{chain.directory}",
              "--public-key", external.public_key.hex()]
    prepared = _cli("anchor", "psbt", *common, "--out", str(tmp_path / "anchor.psbt"))
    assert prepared.returncode == 0, prepared.stderr

    psbt = PSBT.from_base64((tmp_path / "anchor.psbt").read_text().strip())
    assert psbt.sign_input(0, PrivateKey(wif=external.wif))
    (tmp_path / "signed.psbt").write_text(psbt.to_base64())
    submitted = _cli("anchor", "submit", *common, "--signed", str(tmp_path / "signed.psbt"),
                     "--request", str(tmp_path / "anchor.psbt.request.json"))
    assert submitted.returncode == 0, submitted.stderr
    txid = submitted.stdout.split()[-1]
    assert chain.mempool_txids() == [txid]
    (block_hash,) = chain.mine(1)
    assert chain.transaction_status(txid) == (block_hash, 1)

    again = _cli("anchor", "psbt", *common, "--out", str(tmp_path / "again.psbt"))
    assert again.returncode == 0 and "nothing to anchor" in again.stdout
