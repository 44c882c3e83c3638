"""HTTP plumbing both regtest servers share: bounded request bodies, exact JSON numbers, loopback-only listening."""

import errno
import http.server
import ipaddress
import json
import logging
import socket
from decimal import Decimal

from services.errors import ConfigurationInvalid

log = logging.getLogger(__name__)

REQUEST_BODY_MAX_BYTES = 16_000_000   # 25 transactions of the largest size, hex encoded, with room
REQUEST_TIMEOUT_S = 30.0              # a connection idle this long is closed
PORT_MAX = 65_535


class NodeAddressNotLoopback(ConfigurationInvalid):
    """The node serves an unauthenticated REST API and a password-guessable RPC: loopback only."""


def loopback_host(host: str) -> str:
    """`host` if it is a loopback address ("localhost" becomes 127.0.0.1); NodeAddressNotLoopback otherwise."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise NodeAddressNotLoopback(f"--host {host!r} is not a loopback address; the regtest node serves loopback only "
                                 "(127.0.0.1, ::1 or localhost)")


def dumps(value) -> str:
    """JSON with Decimal written as a number, digit for digit (json.dumps would need floats)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return "{" + ", ".join(json.dumps(str(k)) + ": " + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S
    server_version = "reserve-ledger-regtest-node"

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def body(self) -> bytes | None:
        """The request body, or None after answering 411/413 (no length, or over REQUEST_BODY_MAX_BYTES)."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self.send(411, b"Content-Length required\n", "text/plain")
            return None
        if int(length) > REQUEST_BODY_MAX_BYTES:
            self.close_connection = True
            self.send(413, f"request body over {REQUEST_BODY_MAX_BYTES} bytes\n".encode(), "text/plain")
            return None
        return self.rfile.read(int(length))


class Server(http.server.ThreadingHTTPServer):
    """A listening socket bound at construction; what it serves (handler attributes) is attached by the node."""

    daemon_threads = True

    def __init__(self, host: str, port: int, handler: type[Handler]):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)


def listen(host: str, port: int, handler: type[Handler], option: str) -> Server:
    """Bind `host:port` now; a port in use (or any refusal to bind) is the user's ConfigurationInvalid."""
    try:
        return Server(host, port, handler)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ConfigurationInvalid(f"{option} {port}: port {port} on {host} is already in use; "
                                       "choose another port or 0 for any free port") from None
        raise ConfigurationInvalid(f"{option} {port}: cannot listen on {host} port {port}: "
                                   f"{error.strerror or error}") from None


def check_port(port: int, option: str) -> int:
    if not 0 <= port <= PORT_MAX:
        raise ConfigurationInvalid(f"{option} {port}: a port is 0..{PORT_MAX} (0 picks any free port)")
    return port
