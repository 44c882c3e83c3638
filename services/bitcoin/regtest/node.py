"""An HTTP front for the embedded regtest chain: a Bitcoin Core JSON-RPC subset and an Esplora REST subset.

It lets the production clients (core_rpc.py, esplora.py) and outside tools run against a real server on
loopback. Both servers share one RegtestChain (whose lock serialises them with any other process using
DIR). The methods, paths and the differences from Core and electrs are listed in docs/REGTEST.md.

  JSON-RPC  http://HOST:RPC_PORT/     rpc_server.py (protocol, auth) and rpc_methods.py (the methods)
  Esplora   http://HOST:ESPLORA_PORT  esplora_server.py
"""

import os
import pathlib
import secrets
import threading
from typing import TYPE_CHECKING

from services.bitcoin.regtest.chain_view import ChainView
from services.bitcoin.regtest.esplora_server import EsploraHandler, EsploraRoutes
from services.bitcoin.regtest.http import NodeAddressNotLoopback, Server, check_port, listen, loopback_host
from services.bitcoin.regtest.rpc_methods import CoreMethods
from services.bitcoin.regtest.rpc_server import RpcHandler
from services.errors import ConfigurationInvalid

if TYPE_CHECKING:
    from services.bitcoin.regtest.chain import RegtestChain

__all__ = ["RegtestNode", "NodeAddressNotLoopback", "bind_servers", "check_rpc_login"]

COOKIE_USER = "__cookie__"
COOKIE_FILE_NAME = ".cookie"


def check_rpc_login(rpc_user: str | None, rpc_password: str | None) -> None:
    if (rpc_user is None) != (rpc_password is None):
        raise ConfigurationInvalid("--rpc-user and --rpc-password go together: give both, or neither (cookie only)")
    if rpc_user is not None and ":" in rpc_user:
        raise ConfigurationInvalid(f"--rpc-user {rpc_user!r}: a user name cannot contain ':'")


def bind_servers(host: str, rpc_port: int, esplora_port: int) -> tuple[Server, Server]:
    """Both listening sockets, bound now (so a port in use is refused before anything else happens)."""
    host = loopback_host(host)
    if rpc_port and rpc_port == esplora_port:
        raise ConfigurationInvalid(f"--rpc-port and --esplora-port are both {rpc_port}; give two different ports")
    rpc = listen(host, check_port(rpc_port, "--rpc-port"), RpcHandler, "--rpc-port")
    try:
        esplora = listen(host, check_port(esplora_port, "--esplora-port"), EsploraHandler, "--esplora-port")
    except BaseException:
        rpc.server_close()
        raise
    return rpc, esplora


class RegtestNode:
    """Both servers over one RegtestChain; the caller owns (and closes) the chain."""

    def __init__(self, chain: "RegtestChain", *, host: str = "127.0.0.1", rpc_port: int = 0, esplora_port: int = 0,
                 rpc_user: str | None = None, rpc_password: str | None = None):
        check_rpc_login(rpc_user, rpc_password)
        self._host = loopback_host(host)
        self._ports = (check_port(rpc_port, "--rpc-port"), check_port(esplora_port, "--esplora-port"))
        self._chain = chain
        self._user_credentials = f"{rpc_user}:{rpc_password}".encode() if rpc_user is not None else None
        self._servers: list[Server] = []
        self._threads: list[threading.Thread] = []

    @property
    def cookie_file(self) -> pathlib.Path:
        return pathlib.Path(self._chain.directory) / COOKIE_FILE_NAME

    def _url(self, index: int) -> str:
        host, port = self._servers[index].server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def rpc_url(self) -> str:
        return self._url(0) + "/"

    @property
    def esplora_url(self) -> str:
        return self._url(1)

    def _write_cookie(self) -> bytes:
        """A new random cookie at each start, mode 0600, as Core writes DATADIR/.cookie."""
        credentials = f"{COOKIE_USER}:{secrets.token_hex(32)}"
        self.cookie_file.unlink(missing_ok=True)
        descriptor = os.open(self.cookie_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(credentials)
        return credentials.encode()

    def start(self, servers: tuple[Server, Server] | None = None) -> "RegtestNode":
        """Serve on `servers` (from bind_servers) or on sockets bound now from the node's host and ports."""
        assert not self._servers, "started twice"
        rpc, esplora = servers or bind_servers(self._host, *self._ports)
        view = ChainView(self._chain)
        rpc.methods = CoreMethods(view)
        rpc.credentials = [self._write_cookie()] + ([self._user_credentials] if self._user_credentials else [])
        esplora.routes = EsploraRoutes(view)
        self._servers = [rpc, esplora]
        for server, name in zip(self._servers, ("rpc", "esplora")):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"regtest-node-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        if not self._servers:
            return  # never started: the cookie (if any) belongs to another node on DIR
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers, self._threads = [], []
        self.cookie_file.unlink(missing_ok=True)

    def __enter__(self) -> "RegtestNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
