import pytest

from services.api.client import ledger_stub
from services.compose import ServerConfig, build_server


class Clients:
    def __init__(self, address, certs_dir):
        self.address = address
        for name in ("alice", "oscar", "bob", "carol", "dave", "erin"):
            setattr(self, name, ledger_stub(address, certs_dir, name))
        self.frank_operator = ledger_stub(address, certs_dir, "frank-operator")
        self.frank_approver = ledger_stub(address, certs_dir, "frank-approver")


@pytest.fixture
def server(storage, certs_dir, tmp_path):
    data_dir, database_url = storage
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir, database_url=database_url,
                                       certs_dir=str(certs_dir), purchase_approval_threshold_sats=10 * 10**8,
                                       signing_key_path=str(tmp_path / "signing.key"))).start()
    yield server
    server.stop(grace_s=1)


@pytest.fixture
def clients(server, certs_dir):
    return Clients(f"127.0.0.1:{server.port}", certs_dir)
