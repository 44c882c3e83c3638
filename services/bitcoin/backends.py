"""One place that turns a `--chain` setting into a ChainBackend.

  regtest:DIR                                   the embedded regtest chain kept in DIR
  core:http://USER:PASSWORD@HOST:PORT           Bitcoin Core JSON-RPC with an rpcauth user
  core:http://HOST:PORT?cookie=PATH             Bitcoin Core JSON-RPC with the node's cookie file
  esplora:http://HOST:PORT/api                  an Esplora REST server
"""

import urllib.parse

from ledger.anchoring import ChainBackend

CHAIN_SPEC_HELP = "regtest:DIR | core:http://USER:PASSWORD@HOST:PORT | core:http://HOST:PORT?cookie=FILE | esplora:URL"


class ChainSpecInvalid(ValueError):
    """A --chain value that names no backend this service knows."""


def open_backend(spec: str) -> ChainBackend:
    kind, _, target = spec.partition(":")
    if not target:
        raise ChainSpecInvalid(f"--chain {spec!r}: expected {CHAIN_SPEC_HELP}")
    if kind == "regtest":
        from services.bitcoin.regtest.chain import RegtestChain
        return RegtestChain(target)
    if kind == "core":
        return _core_client(target)
    if kind == "esplora":
        from services.bitcoin.esplora import EsploraClient
        return EsploraClient(target)
    raise ChainSpecInvalid(f"--chain {spec!r}: unknown backend {kind!r}; expected {CHAIN_SPEC_HELP}")


def _core_client(url: str) -> ChainBackend:
    from services.bitcoin.core_rpc import CoreRpcClient
    parts = urllib.parse.urlsplit(url)
    cookie = urllib.parse.parse_qs(parts.query).get("cookie", [None])[0]
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    plain_url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
    if cookie:
        return CoreRpcClient(plain_url, cookie_file=cookie)
    if parts.username is None:
        raise ChainSpecInvalid("core: needs USER:PASSWORD@ in the URL or ?cookie=FILE")
    return CoreRpcClient(plain_url, user=urllib.parse.unquote(parts.username),
                         password=urllib.parse.unquote(parts.password or ""))


def close_backend(backend: ChainBackend) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()
