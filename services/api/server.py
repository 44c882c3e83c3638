"""The gRPC server: servicers, interceptor, health, reflection and the background workers; graceful stop.

Its parts are opened by the composition root (services/compose.py), which checks the configuration first.
"""

import dataclasses
import logging
import pathlib
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger import merkle
from ledger.anchoring import ChainBackend
from ledger.application import ReserveLedger
from ledger.commands import Caller, ExpirePending
from reserve_ledger.v1 import audit_pb2, audit_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from services.anchoring.worker import AnchorWorker
from services.api.audit_servicer import AuditServicer
from services.api.interceptor import LedgerInterceptor
from services.api.ledger_servicer import LedgerServicer
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.backends import close_backend
from services.errors import ConfigurationInvalid
from services.store.signing import TreeHeadSigner
from services.store.writer import CommandWriter

log = logging.getLogger("reserve_ledger.server")
SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["ReserveLedgerService"].full_name
AUDIT_SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
WORKER_THREADS = 64
SYSTEM_CALLER = Caller("system", "system")


@dataclasses.dataclass(frozen=True)
class ServerParts:
    """What the composition root (services/compose.py) opened for one server."""

    ledger: ReserveLedger
    signer: TreeHeadSigner
    chain: ChainBackend | None
    anchor_key: AnchorKey | None
    clock_us: Callable[[], int]


def server_credentials(certs_dir: str) -> grpc.ServerCredentials:
    directory = pathlib.Path(certs_dir)
    return grpc.ssl_server_credentials(
        [((directory / "server.key").read_bytes(), (directory / "server.pem").read_bytes())],
        root_certificates=(directory / "ca.pem").read_bytes(), require_client_auth=True)


class LedgerServer:
    def __init__(self, config: "ServerConfig", parts: ServerParts):
        """Built by services.compose.build_server, which checks `config` and opens `parts`."""
        self.config = config
        self.ledger, self.signer, self.chain = parts.ledger, parts.signer, parts.chain
        self.writer = CommandWriter(self.ledger, parts.clock_us, refusal=lambda: self.signer.alarm)
        self._clock_us = parts.clock_us
        self.health = health.HealthServicer(experimental_non_blocking=True,
                                            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKER_THREADS),
                                  interceptors=[LedgerInterceptor(config.insecure_loopback)],
                                  options=[("grpc.so_reuseport", 0)])
        ledger_pb2_grpc.add_ReserveLedgerServiceServicer_to_server(
            LedgerServicer(self.ledger, self.writer, merkle.leaf_hash, config.insecure_loopback), self.server)

        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, AUDIT_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self._bind(config)
        self._stopping = threading.Event()
        self._expiry = threading.Thread(target=self._expire_forever, name="expiry", daemon=True)
        self.anchor_worker = None
        if self.chain is not None:
            self.anchor_worker = AnchorWorker(self.ledger.store, self.signer, self.chain, parts.anchor_key,
                                              config.anchor_policy, parts.clock_us)
        self._anchors = threading.Thread(target=self._anchor_forever, name="anchors", daemon=True)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(self.ledger, self.signer, self.chain),
                                                          self.server)

    def _bind(self, config) -> int:
        try:
            if config.insecure_loopback:
                return self.server.add_insecure_port(config.listen)
            return self.server.add_secure_port(config.listen, server_credentials(config.certs_dir))
        except RuntimeError:  # grpc says only "Failed to bind"
            raise ConfigurationInvalid(f"cannot listen on {config.listen}: the port is in use or the address is "
                                       "not this machine's; choose another --listen") from None

    def start(self) -> "LedgerServer":
        self._open_log()
        self.server.start()
        self._expiry.start()
        if self.anchor_worker is not None:
            self._anchors.start()
        log.info("serving on port %s", self.port)
        return self

    def _expire_forever(self) -> None:
        """Runs until stop(): voids proposals whose expiry time has passed."""
        while not self._stopping.wait(self.config.expiry_interval_s):
            for pending_id in self.ledger.due_for_expiry(self._clock_us()):
                self.writer.execute(ExpirePending(f"expire:{pending_id}", pending_id), SYSTEM_CALLER)

    def _open_log(self) -> None:
        """Check the stored log against the latest signed head before taking writes (services/store/signing.py):
        an event beyond it, or one contradicting it, is an integrity alarm; reads are still served."""
        started_s = time.monotonic()
        self.signer.on_alarm = self._alarm_raised
        alarm = self.signer.open_log()
        log.info("checked the stored log against its latest signed tree head in %.2f s", time.monotonic() - started_s)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING if alarm is None
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _alarm_raised(self, alarm) -> None:
        log.error("refusing writes: %s", alarm)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _anchor_forever(self) -> None:
        """Runs until stop(): one anchor step per period (nothing new, nothing sent); between steps, the
        anchors are refreshed whenever a new block arrives (polled every block_poll_interval_s)."""
        policy = self.config.anchor_policy
        next_step_s = time.monotonic() + policy.interval_s
        while not self._stopping.wait(min(policy.block_poll_interval_s, max(0.0, next_step_s - time.monotonic()))):
            try:
                if time.monotonic() >= next_step_s:
                    next_step_s = time.monotonic() + policy.interval_s
                    self.anchor_worker.step()
                else:
                    self.anchor_worker.follow_chain()
            except Exception:  # a node outage must not end the worker; the next poll or period retries
                log.exception("anchor step failed")

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, let running ones finish, commit what is queued, save the projection."""
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        self.writer.stop()  # every commit signed its own head: nothing is left to sign here
        self.ledger.persist_projection()
        if self._anchors.is_alive():
            self._anchors.join()
        if self.chain is not None:
            close_backend(self.chain)
        self.ledger.close()

    def wait(self) -> None:
        self.server.wait_for_termination()
