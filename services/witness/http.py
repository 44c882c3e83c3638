"""The witness over HTTP (stdlib http.server): ``POST /add-checkpoint`` and ``GET /<sha256(origin) hex>/checkpoint``
(c2sp.org/tlog-witness). Requests are bounded in size and time; every answer is a status and a short text."""

import hashlib
import http.server
import threading

from ledger import limits
from services.witness.witness import Reply, Witness

REQUEST_TIMEOUT_S = 30


class WitnessHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], witness: Witness, origins: list[str]):
        super().__init__(address, _Handler)
        self.witness = witness
        self.origin_by_hash = {hashlib.sha256(origin.encode()).hexdigest(): origin for origin in origins}

    @property
    def port(self) -> int:
        return self.server_address[1]

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="witness-http", daemon=True)
        thread.start()
        return thread


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WitnessHTTPServer
    protocol_version = "HTTP/1.1"   # keep-alive, as the spec recommends
    timeout = REQUEST_TIMEOUT_S

    def do_POST(self) -> None:
        if self.path != "/add-checkpoint":
            return self._send(Reply(404, "no such endpoint\n"))
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._send(Reply(411, "Content-Length is required\n"))
        if not 0 <= length <= limits.WITNESS_REQUEST_SIZE_MAX_BYTES:
            return self._send(Reply(413, f"a request is at most {limits.WITNESS_REQUEST_SIZE_MAX_BYTES} bytes\n"))
        self._send(self.server.witness.add_checkpoint(self.rfile.read(length)))

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        origin = self.server.origin_by_hash.get(parts[0]) if len(parts) == 2 and parts[1] == "checkpoint" else None
        latest = None if origin is None else self.server.witness.latest(origin)
        if latest is None:
            return self._send(Reply(404, "no checkpoint cosigned for that log\n"))
        self._send(Reply(200, latest.decode()))

    def _send(self, reply: Reply) -> None:
        data = reply.body.encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass  # refusals are kept as evidence; access logs are not the witness's job
