"""Fixtures shared by the Bitcoin tests: a fresh embedded regtest chain, and the same chain read through each
backend (embedded, Bitcoin Core's JSON-RPC and Esplora, both over real HTTP from the regtest node)."""

import pytest

from services.bitcoin.core_rpc import CoreRpcClient
from services.bitcoin.esplora import EsploraClient
from services.bitcoin.regtest.chain import RegtestChain
from services.bitcoin.regtest.node import RegtestNode

BACKENDS = ("embedded", "core", "esplora")


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


@pytest.fixture(params=BACKENDS)
def backend(request, chain):
    if request.param == "embedded":
        yield chain
        return
    with RegtestNode(chain) as node:
        yield (CoreRpcClient(node.rpc_url, cookie_file=str(node.cookie_file)) if request.param == "core"
               else EsploraClient(node.esplora_url))
