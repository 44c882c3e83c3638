"""The gRPC server: servicers, interceptor, health, reflection and the background workers; graceful stop.

Its parts are opened by the composition root (services/compose.py), which checks the configuration first.
The server is grpc.aio on an event loop of its own thread; the servicers' blocking work runs in a bounded
thread pool (`call_threads`, the loop's default executor) through services/api/calls.py, so open streams
hold no thread. Everything else (command writer, supervised workers, metrics) keeps its own threads.
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import pathlib
import threading
import time
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger import merkle
from ledger.anchoring import ChainBackend
from ledger.application import ReserveLedger
from ledger.commands import Caller, ExpirePending
from ledger.errors import InvariantBroken, LedgerError
from reserve_ledger.v1 import alerts_pb2, alerts_pb2_grpc, audit_pb2, audit_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from services.anchoring.worker import AnchorWorker
from services.api.alert_servicer import AlertServicer
from services.api.audit_servicer import AuditServicer
from services.api.faults import FaultLog
from services.api.interceptor import LedgerInterceptor
from services.api.ledger_servicer import LedgerServicer
from services.api.metrics import AnchorWatch, Metrics, seconds_since
from services.api.status import STORE_FAILURES
from services.api.streams import StreamSlots
from services.api.tail import LogTail
from services.api.workers import Supervisor, WorkerStatus
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.backends import close_backend
from services.errors import ConfigurationInvalid
from services.monitor.worker import ReservesMonitor
from services.store.signing import TreeHeadSigner
from services.store.writer import CommandWriter
from services.witness.gatherer import WitnessEndpoint, start_feeds, witnessed_head_choice
from services.witness.log import LogCheckpoints

log = logging.getLogger("reserve_ledger.server")
SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["ReserveLedgerService"].full_name
AUDIT_SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
ALERT_SERVICE_NAME = alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name
# Health entry for saved states: NOT_SERVING once a saved projection or checkpoint failed its proof since start
# (the service still answers, from a replay; the WARNING log names the row). grpc.health carries no detail.
SAVED_STATES_HEALTH_NAME = "reserve_ledger.v1.SavedStates"
HEALTH_SET_TIMEOUT_S = 10.0
STORE_PROBLEM_CHARS_MAX = 200
SYSTEM_CALLER = Caller("system", "system")
WRITES_HEALTH_NAME = "reserve_ledger.v1.ReserveLedgerService.writes"   # NOT_SERVING while the store refuses writes
WORKER_HEALTH_PREFIX = "reserve_ledger.worker."   # + expiry, tree-heads, anchors, reserves-monitor, store-probe
STORE_PROBE_INTERVAL_S = 5.0


@dataclasses.dataclass(frozen=True)
class ServerParts:
    """What the composition root (services/compose.py) opened for one server."""

    ledger: ReserveLedger
    signer: TreeHeadSigner
    chain: ChainBackend | None
    anchor_key: AnchorKey | None
    clock_us: Callable[[], int]
    checkpoints: LogCheckpoints | None = None         # C2SP checkpoints of the heads (services/witness/log.py)
    witnesses: tuple[WitnessEndpoint, ...] = ()       # whose cosignatures to gather (services/witness/gatherer.py)


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
        self._clock_us = parts.clock_us
        self.metrics = Metrics()
        self.faults = FaultLog(on_record=lambda kind: self.metrics.faults.labels(kind).inc())
        self.tail = LogTail(self.ledger.store.log_size)
        self.writer = CommandWriter(self.ledger, parts.clock_us, self._on_batch, refusal=lambda: self.signer.alarm)
        self.health = health.aio.HealthServicer()
        self.slots = StreamSlots(config.streams_per_identity_max, config.streams_total_max)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.checkpoints, self._witnesses, self.witness_feeds = parts.checkpoints, parts.witnesses, []
        self._open_loop(config.call_threads)
        try:
            self.port = self._in_loop(self._build(config))
        except BaseException:
            self._close_loop()
            raise
        self.workers = Supervisor(self._stopping, self.faults, self._on_worker_change)
        self.writes_serving = True
        self.writes_problem = ""
        self.anchor_worker = None
        if self.chain is not None:
            self.anchor_worker = AnchorWorker(
                self.ledger.store, self.signer, self.chain, parts.anchor_key, config.anchor_policy, parts.clock_us,
                witnessed_head_choice(self.ledger.store, self.signer.latest, config.witness_quorum,
                                      parts.checkpoints.vkey, list(parts.witnesses))
                if parts.witnesses and config.witness_quorum else None)
        self.monitor = None
        if self.chain is not None:
            self.monitor = ReservesMonitor(self.ledger, self.chain, lambda command: self.writer.execute(
                command, SYSTEM_CALLER), on_recorded=lambda recorded: self.metrics.reserve_alert_events.labels(
                recorded.event_type).inc())
        self._anchor_watch = AnchorWatch(self.ledger.store)
        self.metrics.add_state_collector(self._state_for_metrics)
        self.metrics_port = None

    # --- the event loop -------------------------------------------------------------------------------

    def _open_loop(self, call_threads: int) -> None:
        """The loop's thread, and the bounded pool that runs the servicers' blocking work (its default executor)."""
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=call_threads, thread_name_prefix="call")
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(self.executor)
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self._loop_thread.start()

    def _in_loop(self, coroutine, timeout_s: float | None = None):
        """Run a coroutine on the server's loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def _close_loop(self) -> None:
        """Cancel what still runs on the loop (waits of streams the server stop cut), then stop it."""
        self._in_loop(_cancel_other_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def _build(self, config) -> int:
        """The aio server with its servicers, bound to the listen address (created in the loop: aio needs it)."""
        self.server = grpc.aio.server(
            migration_thread_pool=self.executor, options=[("grpc.so_reuseport", 0)],
            interceptors=[LedgerInterceptor(config.insecure_loopback, self.faults, self._on_call, self._on_stream,
                                            self.slots)])
        ledger_pb2_grpc.add_ReserveLedgerServiceServicer_to_server(
            LedgerServicer(self.ledger, self.writer, merkle.leaf_hash, config.insecure_loopback, self.tail),
            self.server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(self.ledger, self.signer, self.chain, self.checkpoints), self.server)
        alerts_pb2_grpc.add_AlertServiceServicer_to_server(AlertServicer(self.ledger, self.tail), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, AUDIT_SERVICE_NAME, ALERT_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server)
        return self._bind(config)

    def _bind(self, config) -> int:
        try:
            if config.insecure_loopback:
                return self.server.add_insecure_port(config.listen)
            return self.server.add_secure_port(config.listen, server_credentials(config.certs_dir))
        except RuntimeError:  # grpc says only "Failed to bind"
            raise ConfigurationInvalid(f"cannot listen on {config.listen}: the port is in use or the address is "
                                       "not this machine's; choose another --listen") from None

    def _set_health(self, name: str, status: int) -> None:
        """Set a health entry from any thread (the aio health servicer lives on the loop)."""
        if threading.current_thread() is self._loop_thread:
            self._loop.create_task(self.health.set(name, status))
        elif self._loop.is_running():
            self._in_loop(self.health.set(name, status), HEALTH_SET_TIMEOUT_S)

    def start(self) -> "LedgerServer":
        if self.config.metrics_listen:
            self.metrics_port = self.metrics.serve(self.config.metrics_listen)
        self._open_log()
        self.ledger.projection_position()  # load (prove or replay) the projection now: a refused log stops here
        self._in_loop(self.server.start())
        self._set_health(AUDIT_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._set_health(ALERT_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._set_saved_states_health()
        self.ledger.on_unproven = lambda row: self._set_saved_states_health()
        self._probe_writes()
        self._set_writes_health()
        self.workers.start("expiry", self._expire_due, self.config.expiry_interval_s)
        self.workers.start("store-probe", self._probe_writes_if_down, STORE_PROBE_INTERVAL_S)
        if self.anchor_worker is not None:
            schedule = AnchorSchedule(self.anchor_worker, self.config.anchor_policy)
            self.workers.start("anchors", schedule.tick, self.config.anchor_policy.block_poll_interval_s)
        if self.monitor is not None:
            self.workers.start("reserves-monitor", self.monitor.step, self.config.monitor_interval_s, first_delay_s=0)
        if self._witnesses:
            self.witness_feeds = start_feeds(self.workers, self.ledger.store, self.checkpoints, list(self._witnesses))
        log.info("serving on port %s", self.port)
        return self

    def _set_saved_states_health(self) -> None:
        status = health_pb2.HealthCheckResponse
        self._set_health(SAVED_STATES_HEALTH_NAME, status.NOT_SERVING if self.ledger.unproven_rows else status.SERVING)

    def _open_log(self) -> None:
        """Check the stored log against the latest signed head before taking writes (services/store/signing.py):
        an event beyond it, or one contradicting it, is an integrity alarm; reads are still served."""
        started_s = time.monotonic()
        self.signer.on_alarm = self._alarm_raised
        alarm = self.signer.open_log()
        log.info("checked the stored log against its latest signed tree head in %.2f s", time.monotonic() - started_s)
        self._set_health(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING if alarm is None
                        else health_pb2.HealthCheckResponse.NOT_SERVING)
        if alarm is not None:
            self._limit_reads(alarm)

    def _limit_reads(self, alarm) -> None:
        """Reads fold only the events before the first one in doubt (the trusted, signed prefix)."""
        if alarm.positions is not None:
            self.ledger.fold_limit = alarm.positions[0] - 1

    def _alarm_raised(self, alarm) -> None:
        log.error("refusing writes: %s", alarm)
        self._limit_reads(alarm)
        self._set_health(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._set_writes_health()

    # --- supervised workers -------------------------------------------------------------------------

    def _expire_due(self) -> None:
        """Voids proposals whose expiry time has passed; a refusal or failure surfaces to the supervisor."""
        for pending_id in self.ledger.due_for_expiry(self._clock_us()):
            outcome = self.writer.execute(ExpirePending(f"expire:{pending_id}", pending_id), SYSTEM_CALLER)
            if isinstance(outcome, Exception) and not isinstance(outcome, LedgerError):
                raise outcome

    def _probe_writes(self) -> None:
        try:
            self.ledger.store.probe_write(self._clock_us())
        except Exception as error:  # noqa: BLE001 - the store's state is reported, not raised
            self._writes_failed(error)
        else:
            self._writes_recovered()

    def _probe_writes_if_down(self) -> None:
        if not self.writes_serving:
            self.ledger.store.reopen_connections()  # one opened while the store was read-only stays read-only
            self.ledger.store.probe_write(self._clock_us())
            self._writes_recovered()

    # --- health and metrics ---------------------------------------------------------------------------

    def _on_batch(self, size: int, error: BaseException | None) -> None:
        self.metrics.batch_size.observe(size)
        self.tail.poke()
        if isinstance(error, InvariantBroken):
            self.signer.refuse_log(error)
        elif error is None:
            self._writes_recovered()
        elif isinstance(error, STORE_FAILURES):
            self._writes_failed(error)

    def _writes_failed(self, error: BaseException) -> None:
        incident = self.faults.record("store writes", error)
        self.writes_problem = f"the store refuses writes: {store_problem(error)} (incident {incident})"
        if self.writes_serving:
            self.writes_serving = False
            log.warning("writes NOT_SERVING: %s", self.writes_problem)
            self._set_writes_health()

    def _writes_recovered(self) -> None:
        if not self.writes_serving:
            self.writes_serving, self.writes_problem = True, ""
            log.warning("writes SERVING again: the store accepts writes")
            self._set_writes_health()

    def _set_writes_health(self) -> None:
        """SERVING only while the store takes writes and no integrity alarm stands."""
        serving = self.writes_serving and self.signer.alarm is None
        self._set_health(WRITES_HEALTH_NAME, health_pb2.HealthCheckResponse.SERVING if serving
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _on_worker_change(self, status: WorkerStatus) -> None:
        self._set_health(WORKER_HEALTH_PREFIX + status.name, health_pb2.HealthCheckResponse.SERVING
                        if status.healthy else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _on_call(self, method: str, outcome: str, seconds: float) -> None:
        self.metrics.observe_call(method, outcome, seconds)

    def _on_stream(self, change: int) -> None:
        self.metrics.open_streams.inc(change)

    def _state_for_metrics(self) -> dict:
        store = self.ledger.store
        size = store.log_size()
        head = store.load_tree_head()
        self._anchor_watch.refresh()
        statuses = self.workers.statuses()
        return {"log_size_events": size,
                "projection_lag_events": max(0, size - 1 - self.ledger.projection_position()),
                "tree_head_size_events": None if head is None else head.tree_size,
                "tree_head_age_seconds": None if head is None else seconds_since(head.timestamp_us / 1e6),
                "events_not_anchored": size - self._anchor_watch.confirmed_size if self.chain else None,
                "seconds_since_last_anchor_confirmation": seconds_since(self._anchor_watch.confirmed_block_time_s),
                "writes_serving": 1 if self.writes_serving else 0,
                "reserve_alerts_open": self.ledger.open_alerts_total() if self.monitor else None,
                "worker_healthy": {s.name: 1 if s.healthy else 0 for s in statuses},
                "worker_failures": {s.name: s.failures_total for s in statuses},
                **self._witness_state(head)}

    def _witness_state(self, head) -> dict:
        """Witness lag: events of the latest head each witness has not cosigned yet, and the age of its last
        cosignature gathered since start (services/witness/gatherer.py)."""
        if not self.witness_feeds:
            return {}
        size = 0 if head is None else head.tree_size
        return {"witness_lag_events": {f.witness.name: max(0, size - f.cosigned_size) for f in self.witness_feeds},
                "witness_cosignature_age_seconds": {f.witness.name: max(0.0, time.monotonic() - f.cosigned_at_s)
                                                    for f in self.witness_feeds if f.cosigned_at_s is not None}}

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, let running ones finish (open streams are cancelled after `grace_s`), commit what is
        queued, save the projection."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        self._in_loop(self.health.enter_graceful_shutdown())
        self._in_loop(self.server.stop(grace_s))
        self.writer.stop()  # every commit signed its own head: nothing is left to sign here
        self.workers.join()
        try:
            self.ledger.persist_projection()
        except Exception as error:  # noqa: BLE001 - a failing store must not stop the shutdown
            self.faults.record("shutdown", error)
        if self.chain is not None:
            close_backend(self.chain)
        self.metrics.stop()
        self._close_loop()
        self.ledger.close()
        self._stopped.set()

    def wait(self) -> None:
        """Until stop() has finished (from a signal handler or another thread)."""
        self._stopped.wait()


async def _cancel_other_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def store_problem(error: BaseException) -> str:
    """The store's own words for a failure, for the operator's log (never sent to clients): the first line of the
    innermost error, e.g. 'attempt to write a readonly database', 'permission denied for table ...'."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:STORE_PROBLEM_CHARS_MAX] if lines else '(no message)'}"


class AnchorSchedule:
    """One anchor step per anchor interval; between steps, anchors are refreshed when a block arrives."""

    def __init__(self, worker: AnchorWorker, policy):
        self._worker, self._interval_s = worker, policy.interval_s
        self._next_step_s = time.monotonic() + policy.interval_s

    def tick(self) -> None:
        if time.monotonic() >= self._next_step_s:
            self._next_step_s = time.monotonic() + self._interval_s
            self._worker.step()
        else:
            self._worker.follow_chain()
