"""Run `reserve-ledger serve` as a real child process (for kill -9 and multi-process tests)."""

import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.client import secure_channel

SERVICE = "reserve_ledger.v1.ReserveLedgerService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(certs_dir, data_dir=None, database_url=None, timeout_s=30.0, signing_key=None):
    port = free_port()
    storage = ["--database", database_url] if database_url else ["--data-dir", str(data_dir)]
    if signing_key:
        storage += ["--signing-key", str(signing_key)]
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "--init", "--metrics-listen", "127.0.0.1:0", "--listen", f"127.0.0.1:{port}",
                                "--certs", str(certs_dir), *storage],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    health = health_pb2_grpc.HealthStub(secure_channel(f"127.0.0.1:{port}", certs_dir, "dave"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return process, f"127.0.0.1:{port}"
        except grpc.RpcError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become healthy")
