"""Supervised background workers: a failure is logged, retried with backoff and visible in health and metrics.

Each worker is a `step()` called every `interval_s` until the server stops. A step that raises is counted,
logged through the FaultLog (one line per kind and minute, the traceback once) and retried after
RETRY_FIRST_S, doubling up to the worker's interval (never slower than its normal pace, at least
RETRY_FIRST_S); the worker never dies of an exception. Its status (healthy, failures, last error) is what
health and metrics report.
"""

import dataclasses
import threading
import time
from typing import Callable

from services.api.faults import FaultLog

RETRY_FIRST_S = 0.5


@dataclasses.dataclass
class WorkerStatus:
    name: str
    healthy: bool = True
    runs_total: int = 0
    failures_total: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_monotonic_s: float | None = None


def retry_delay_s(interval_s: float, consecutive_failures: int) -> float:
    ceiling_s = max(interval_s, RETRY_FIRST_S)
    return min(RETRY_FIRST_S * 2 ** (consecutive_failures - 1), ceiling_s)


class Supervisor:
    def __init__(self, stopping: threading.Event, faults: FaultLog,
                 on_change: Callable[[WorkerStatus], None] = lambda status: None):
        self._stopping = stopping
        self._faults = faults
        self._on_change = on_change
        self._threads: list[threading.Thread] = []
        self._statuses: dict[str, WorkerStatus] = {}
        self._lock = threading.Lock()

    def start(self, name: str, step: Callable[[], None], interval_s: float, first_delay_s: float | None = None) -> None:
        """Run `step` every `interval_s` (first after `first_delay_s`, default the interval) until stop."""
        status = WorkerStatus(name)
        with self._lock:
            self._statuses[name] = status
        self._on_change(status)
        thread = threading.Thread(target=self._loop, args=(status, step, interval_s,
                                                           interval_s if first_delay_s is None else first_delay_s),
                                  name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self, status: WorkerStatus, step, interval_s: float, delay_s: float) -> None:
        """Runs until the server stops (the stopping event)."""
        while not self._stopping.wait(delay_s):
            delay_s = interval_s if self._run_once(status, step) else retry_delay_s(
                interval_s, status.consecutive_failures)

    def _run_once(self, status: WorkerStatus, step) -> bool:
        try:
            step()
        except Exception as error:  # noqa: BLE001 - a worker must survive any failure of one step
            incident = self._faults.record(f"worker {status.name}", error)
            self._update(status, ok=False, error=f"{type(error).__name__} (incident {incident})")
            return False
        self._update(status, ok=True)
        return True

    def _update(self, status: WorkerStatus, ok: bool, error: str = "") -> None:
        with self._lock:
            was_healthy = status.healthy
            status.runs_total += 1
            if ok:
                status.healthy, status.consecutive_failures = True, 0
                status.last_success_monotonic_s = time.monotonic()
            else:
                status.healthy = False
                status.failures_total += 1
                status.consecutive_failures += 1
                status.last_error = error
        if was_healthy != status.healthy:
            self._on_change(status)

    def statuses(self) -> list[WorkerStatus]:
        with self._lock:
            return [dataclasses.replace(s) for s in self._statuses.values()]

    def join(self, timeout_s: float = 10.0) -> None:
        for thread in self._threads:
            thread.join(timeout_s)
