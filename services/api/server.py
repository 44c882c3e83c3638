"""Composition root: storage -> ledger -> writer -> servicers -> gRPC server; graceful stop."""

import dataclasses
import ipaddress
import logging
import pathlib
import random
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger import merkle
from ledger.application import ReserveLedger
from ledger.commands import Caller, ExpirePending
from ledger.anchor_policy import AnchorPolicy
from ledger.rules import Policy
from reserve_ledger.v1 import audit_pb2, audit_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from services.anchoring.worker import AnchorWorker
from services.api.audit_servicer import AuditServicer
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.backends import close_backend, open_backend
from services.store.config import storage_env
from services.api.interceptor import LedgerInterceptor
from services.api.ledger_servicer import LedgerServicer
from services.store.signing import SIGNING_KEY_FILE_NAME, TreeHeadSigner, load_or_create_signing_key
from services.store.writer import CommandWriter

log = logging.getLogger("reserve_ledger.server")
SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["ReserveLedgerService"].full_name
AUDIT_SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
WORKER_THREADS = 64
SYSTEM_CALLER = Caller("system", "system")
ANCHOR_KEY_FILE_NAME = "anchor-wallet.wif"


def clock_us() -> int:
    return time.time_ns() // 1000


def jittered_backoff(attempt: int) -> None:
    """After losing an append race to another process: sleep up to 1 ms x 2^attempt (capped at 100 ms)."""
    time.sleep(random.uniform(0, min(0.001 * 2 ** attempt, 0.1)))


@dataclasses.dataclass
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    data_dir: str | None = "./reserve-data"
    database_url: str | None = None
    certs_dir: str | None = None           # holds ca.pem, server.pem, server.key
    insecure_loopback: bool = False        # plaintext, development only, loopback only
    purchase_approval_threshold_sats: int = Policy().purchase_approval_threshold_sats
    expiry_interval_s: float = 30.0
    signing_key_path: str | None = None    # default: <data_dir>/tree-head-signing.key (required with a database)
    tree_head_interval_s: float = 60.0     # how often a new head is signed when the log has grown
    chain: str | None = None               # Bitcoin backend for anchors (services/bitcoin/backends.py); None: off
    anchor_key_path: str | None = None     # WIF key file of the fee-only anchor wallet
    anchor_network: str = "regtest"        # mainnet | testnet | signet | regtest (the key and addresses)
    anchor_policy: AnchorPolicy = dataclasses.field(default_factory=AnchorPolicy)


def signing_key_path_of(config: ServerConfig) -> pathlib.Path:
    if config.signing_key_path:
        return pathlib.Path(config.signing_key_path)
    if config.database_url:
        raise ValueError("with --database every replica must sign with the same key: pass --signing-key FILE")
    return pathlib.Path(config.data_dir or "./reserve-data") / SIGNING_KEY_FILE_NAME


def anchor_key_path_of(config: ServerConfig) -> pathlib.Path:
    if config.anchor_key_path:
        return pathlib.Path(config.anchor_key_path)
    if config.database_url or config.anchor_network != "regtest":
        raise ValueError("anchoring needs --anchor-key FILE (a WIF key of the fee-only anchor wallet)")
    return pathlib.Path(config.data_dir or "./reserve-data") / ANCHOR_KEY_FILE_NAME


def open_anchor_key(config: ServerConfig) -> AnchorKey:
    """Load the anchor wallet's key; on regtest with a data dir, create it on first start."""
    path = anchor_key_path_of(config)
    if not path.exists() and config.anchor_network == "regtest" and not config.anchor_key_path:
        AnchorKey.generate("regtest").save(path)
    return AnchorKey.load(path, config.anchor_network)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(certs_dir: str) -> grpc.ServerCredentials:
    directory = pathlib.Path(certs_dir)
    return grpc.ssl_server_credentials(
        [((directory / "server.key").read_bytes(), (directory / "server.pem").read_bytes())],
        root_certificates=(directory / "ca.pem").read_bytes(), require_client_auth=True)


class LedgerServer:
    def __init__(self, config: ServerConfig):
        if config.insecure_loopback and not is_loopback(config.listen):
            raise ValueError("plaintext mode is for loopback development only; use mTLS on other addresses")
        if not config.insecure_loopback and not config.certs_dir:
            raise ValueError("mTLS needs --certs DIR (ca.pem, server.pem, server.key); see `reserve-ledger certs init`")
        self.config = config
        self.ledger = ReserveLedger(storage_env(config.data_dir, config.database_url),
                                    Policy(config.purchase_approval_threshold_sats), jittered_backoff)
        self.writer = CommandWriter(self.ledger, clock_us)
        self.signer = TreeHeadSigner(self.ledger.store, load_or_create_signing_key(signing_key_path_of(config)),
                                     clock_us)
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
        if config.insecure_loopback:
            self.port = self.server.add_insecure_port(config.listen)
        else:
            self.port = self.server.add_secure_port(config.listen, server_credentials(config.certs_dir))
        self._stopping = threading.Event()
        self._expiry = threading.Thread(target=self._expire_forever, name="expiry", daemon=True)
        self._heads = threading.Thread(target=self._sign_heads_forever, name="tree-heads", daemon=True)
        self.chain = open_backend(config.chain) if config.chain else None
        self.anchor_worker = None
        if self.chain is not None:
            self.anchor_worker = AnchorWorker(self.ledger.store, self.signer, self.chain, open_anchor_key(config),
                                              config.anchor_policy, clock_us)
        self._anchors = threading.Thread(target=self._anchor_forever, name="anchors", daemon=True)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(self.ledger, self.signer, self.chain),
                                                          self.server)

    def start(self) -> "LedgerServer":
        self.server.start()
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._expiry.start()
        self._heads.start()
        if self.anchor_worker is not None:
            self._anchors.start()
        log.info("serving on port %s", self.port)
        return self

    def _expire_forever(self) -> None:
        """Runs until stop(): voids proposals whose expiry time has passed."""
        while not self._stopping.wait(self.config.expiry_interval_s):
            for pending_id in self.ledger.due_for_expiry(clock_us()):
                self.writer.execute(ExpirePending(f"expire:{pending_id}", pending_id), SYSTEM_CALLER)

    def _sign_heads_forever(self) -> None:
        """Runs until stop(): signs a tree head for the current log whenever it has grown."""
        while not self._stopping.wait(self.config.tree_head_interval_s):
            try:
                self.signer.latest()
            except Exception:  # a database hiccup must not end the worker; the next period retries
                log.exception("signing a tree head failed")

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
        self.writer.stop()
        self.ledger.persist_projection()
        try:
            self.signer.latest()  # a head that covers every acknowledged command
        except Exception:
            log.exception("signing the final tree head failed")
        if self._anchors.is_alive():
            self._anchors.join()
        if self.chain is not None:
            close_backend(self.chain)
        self.ledger.close()

    def wait(self) -> None:
        self.server.wait_for_termination()
