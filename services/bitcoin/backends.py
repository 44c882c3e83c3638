"""One place that turns a `--chain` setting into a ChainBackend.

  regtest:DIR                                   the embedded regtest chain kept in DIR (opened, never created)
  core:http://USER:PASSWORD@HOST:PORT           Bitcoin Core JSON-RPC with an rpcauth user
  core:http://HOST:PORT?cookie=PATH             Bitcoin Core JSON-RPC with the node's cookie file
  esplora:http://HOST:PORT/api                  an Esplora REST server

The spec is checked before anything is opened and no network I/O happens here: a malformed spec, an unknown
kind or a DIR without a chain is the user's mistake (services.errors), reported in one line.
"""

import urllib.parse

from ledger.anchoring import ChainBackend
from services.errors import ConfigurationInvalid

CHAIN_SPEC_HELP = "regtest:DIR | core:http://USER:PASSWORD@HOST:PORT | core:http://HOST:PORT?cookie=FILE | esplora:URL"
URL_SCHEMES = ("http", "https")


class ChainSpecInvalid(ConfigurationInvalid):
    """A --chain value that names no backend this service knows, or a malformed URL for one."""


def check_spec(spec: str) -> tuple[str, str]:
    """(kind, target) of a well-formed spec; ChainSpecInvalid otherwise. Opens nothing, sends nothing."""
    kind, _, target = spec.partition(":")
    if kind not in ("regtest", "core", "esplora"):
        raise ChainSpecInvalid(f"--chain {_shown(spec)!r}: unknown backend {kind!r}; expected {CHAIN_SPEC_HELP}")
    if not target:
        raise ChainSpecInvalid(f"--chain {spec!r}: nothing after '{kind}:'; expected {CHAIN_SPEC_HELP}")
    if kind != "regtest":
        parts = _checked_url(spec, target)
        if kind == "core" and parts.username is None and "cookie" not in urllib.parse.parse_qs(parts.query):
            raise ChainSpecInvalid(f"--chain {_shown(spec)!r}: core: needs USER:PASSWORD@ in the URL or ?cookie=FILE")
    return kind, target


def open_backend(spec: str) -> ChainBackend:
    """The backend `spec` names; regtest:DIR must already hold a chain (services.errors.NothingStoredHere)."""
    kind, target = check_spec(spec)
    if kind == "regtest":
        from services.bitcoin.regtest.chain import RegtestChain
        return RegtestChain.open(target)
    if kind == "core":
        return _core_client(spec, target)
    from services.bitcoin.esplora import EsploraClient
    return EsploraClient(target)


def _checked_url(spec: str, url: str) -> urllib.parse.SplitResult:
    """An http(s) URL with a host and, if given, a port in 1..65535."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:
        raise ChainSpecInvalid(f"--chain {_shown(spec)!r}: {error}; expected {CHAIN_SPEC_HELP}") from None
    spec = _shown(spec)
    url = spec.partition(":")[2]
    if parts.scheme not in URL_SCHEMES or not parts.hostname:
        raise ChainSpecInvalid(f"--chain {spec!r}: {url!r} is not an http:// or https:// URL with a host; "
                               f"expected {CHAIN_SPEC_HELP}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ChainSpecInvalid(f"--chain {spec!r}: the port in {url!r} is not a number in 1..65535")
    return parts


def _shown(spec: str) -> str:
    """The spec as an error message may show it: a password in the URL becomes ***."""
    kind, _, url = spec.partition(":")
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return f"{kind}:..."
    return spec.replace(f":{password}@", ":***@") if password else spec


def _core_client(spec: str, url: str) -> ChainBackend:
    from services.bitcoin.core_rpc import CoreRpcClient
    parts = _checked_url(spec, url)
    cookie = urllib.parse.parse_qs(parts.query).get("cookie", [None])[0]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host + (f":{parts.port}" if parts.port else "")
    plain_url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
    if cookie:
        return CoreRpcClient(plain_url, cookie_file=cookie)
    return CoreRpcClient(plain_url, user=urllib.parse.unquote(parts.username),
                         password=urllib.parse.unquote(parts.password or ""))


def close_backend(backend: ChainBackend) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()
