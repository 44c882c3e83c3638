"""The stock OpenTimestamps client (`ots`, opentimestamps-client from PyPI) accepts a demo event's `.ots`
against the regtest node's Bitcoin Core RPC, and refuses a changed event or a changed proof."""

import pathlib
import subprocess
import sys

import pytest

from services.bitcoin.regtest.chain import RegtestChain
from services.bitcoin.regtest.node import RegtestNode

OTS = pathlib.Path(sys.executable).parent / "ots"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("demo")
    demo = subprocess.run([sys.executable, "-m", "services.cli.main", "demo", "--data-dir", str(directory)],
                          capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stderr[-3000:]
    return directory


@pytest.fixture(scope="module")
def node_url(demo_dir):
    assert OTS.exists(), f"{OTS} is missing: install the dev extras (pip install -e '.[dev]')"
    with RegtestChain.open(demo_dir / "regtest") as chain, RegtestNode(chain) as node:
        user_password = node.cookie_file.read_text().strip()
        yield node.rpc_url.replace("http://", f"http://{user_password}@", 1)


def _ots_verify(node_url: str, event: pathlib.Path, ots: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(OTS), "--btc-regtest", "--bitcoin-node", node_url, "verify", "-f", str(event),
                           str(ots)], capture_output=True, text=True, timeout=60)


def _proof_dir(demo_dir: pathlib.Path) -> pathlib.Path:
    (proof,) = (demo_dir / "proofs").glob("event-*")
    return proof


def test_the_stock_client_accepts_the_demo_event_proof(demo_dir, node_url):
    proof = _proof_dir(demo_dir)
    result = _ots_verify(node_url, proof / "event.bin", proof / "event.bin.ots")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success! Bitcoin block" in result.stderr


def test_the_stock_client_refuses_a_changed_event(demo_dir, node_url, tmp_path):
    proof = _proof_dir(demo_dir)
    changed = tmp_path / "event.bin"
    changed.write_bytes(proof.joinpath("event.bin").read_bytes().replace(b'"position":', b'"position": ', 1))
    result = _ots_verify(node_url, changed, proof / "event.bin.ots")
    assert result.returncode != 0 and "does not match" in result.stderr, result.stderr


def test_the_stock_client_refuses_a_proof_with_a_changed_sibling_hash(demo_dir, node_url, tmp_path):
    proof = _proof_dir(demo_dir)
    ots = bytearray(proof.joinpath("event.bin.ots").read_bytes())
    ots[-40] ^= 0x01  # inside the last ops (the block's merkle branch), before the attestation
    changed = tmp_path / "event.bin.ots"
    changed.write_bytes(bytes(ots))
    result = _ots_verify(node_url, proof / "event.bin", changed)
    assert result.returncode != 0 and "does not match merkleroot" in result.stderr, result.stderr
