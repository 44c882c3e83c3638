"""Prometheus metrics: what an operator watches (served on --metrics-listen, loopback by default).

Counters and histograms are updated as things happen; the ledger's own state (projection lag, tree-head
age, events not yet anchored, time since the last anchor confirmation, worker health) is read at scrape
time by a collector, so a scrape always shows the present. Every metric is listed in docs/OPERATIONS.md.
"""

import struct
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from ledger.anchor_policy import CONFIRMED_STATES

PREFIX = "reserve_ledger"
RECENT_ANCHORS = 16           # anchors re-read per scrape (older ones no longer change)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """One registry per server (several servers may share a process in tests)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.calls = Counter(f"{PREFIX}_calls", "RPCs by method and outcome (OK or the gRPC status name)",
                             ["method", "outcome"], registry=self.registry)
        self.call_seconds = Histogram(f"{PREFIX}_call_duration_seconds", "RPC latency by method", ["method"],
                                      buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.batch_size = Histogram(f"{PREFIX}_group_commit_batch_size", "commands decided per group commit",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.open_streams = Gauge(f"{PREFIX}_open_streams", "server-streaming calls in progress",
                                  registry=self.registry)
        self.faults = Counter(f"{PREFIX}_faults", "failures that were not the caller's (incidents), by kind",
                              ["kind"], registry=self.registry)
        self.reserve_alert_events = Counter(f"{PREFIX}_reserve_alert_events", "events the reserves monitor recorded "
                                            "(ReserveDiscrepancyObserved, ReserveDiscrepancyReorgedOut)", ["event"],
                                            registry=self.registry)
        self._http = None

    def observe_call(self, method: str, outcome: str, seconds: float) -> None:
        short = method.rsplit("/", 1)[-1]
        self.calls.labels(short, outcome).inc()
        self.call_seconds.labels(short).observe(seconds)

    def add_state_collector(self, read_state: Callable[[], dict]) -> None:
        self.registry.register(_StateCollector(read_state))

    def serve(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _StateCollector:
    """Scrape-time gauges from `read_state()` (a dict of name -> value or name -> {label: value})."""

    HELP = {
        "log_size_events": "events in the log",
        "projection_lag_events": "events committed but not yet folded into the read projection",
        "tree_head_age_seconds": "seconds since the latest signed tree head was signed",
        "tree_head_size_events": "events covered by the latest signed tree head",
        "events_not_anchored": "events not covered by a confirmed Bitcoin anchor",
        "seconds_since_last_anchor_confirmation": "seconds since the block of the newest confirmed anchor",
        "writes_serving": "1 while the store accepts writes, 0 while it does not",
        "reserve_alerts_open": "reserve alerts (unexplained on-chain movements) not yet closed or reorged out",
        "worker_healthy": "1 while a background worker's last step succeeded",
        "worker_failures": "failed steps of a background worker since start",
        "witness_lag_events": "events of the latest signed tree head a witness has not cosigned yet",
        "witness_cosignature_age_seconds": "seconds since a witness's last cosignature was gathered",
    }
    LABELS = {"witness_lag_events": "witness", "witness_cosignature_age_seconds": "witness"}  # others: worker

    def __init__(self, read_state: Callable[[], dict]):
        self._read_state = read_state

    def describe(self):
        return []

    def collect(self):
        for name, value in self._read_state().items():
            if value is None:
                continue
            if isinstance(value, dict):
                label = self.LABELS.get(name, "worker")
                family = GaugeMetricFamily(f"{PREFIX}_{name}", self.HELP[name], labels=[label])
                for label, number in value.items():
                    family.add_metric([label], number)
            else:
                family = GaugeMetricFamily(f"{PREFIX}_{name}", self.HELP[name], value=value)
            yield family


class AnchorWatch:
    """The newest confirmed anchor, kept by re-reading only the most recent anchors at each scrape."""

    def __init__(self, store):
        self._store = store
        self._next_id = 0
        self.confirmed_size = 0
        self.confirmed_block_time_s: int | None = None

    def refresh(self) -> None:
        anchors = self._store.list_anchors(anchor_id_min=max(0, self._next_id - RECENT_ANCHORS))
        for anchor in anchors:
            self._next_id = max(self._next_id, anchor.anchor_id + 1)
            if anchor.state in CONFIRMED_STATES and anchor.tree_size >= self.confirmed_size:
                self.confirmed_size = anchor.tree_size
                if anchor.block_header:
                    self.confirmed_block_time_s = struct.unpack_from("<I", anchor.block_header, 68)[0]


def seconds_since(time_s: float | None) -> float | None:
    return None if time_s is None else max(0.0, time.time() - time_s)
