"""Faults the service could not turn into a domain answer: counted by class, logged without flooding.

Each fault gets an incident id (returned to the caller in ErrorInfo, so an operator can find it in the
log). The first fault of a class is logged with its traceback; later ones of the same class log one line
at most once per LOG_INTERVAL_S, with the count since the last line.
"""

import logging
import threading
import time
import uuid

log = logging.getLogger("reserve_ledger.faults")
LOG_INTERVAL_S = 60.0


class FaultLog:
    def __init__(self, monotonic_s=time.monotonic, on_record=lambda kind: None):
        """`on_record(kind)` hears of every fault as it is recorded (the metrics counter)."""
        self._monotonic_s = monotonic_s
        self._on_record = on_record
        self._lock = threading.Lock()
        self._seen: dict[str, dict] = {}   # class -> {"count", "unlogged", "logged_at_s"}

    @staticmethod
    def fault_class(error: BaseException) -> str:
        return f"{type(error).__module__}.{type(error).__qualname__}"

    def record(self, where: str, error: BaseException) -> str:
        """Count the fault, log it if its class is due, and return its incident id."""
        incident = uuid.uuid4().hex[:12]
        kind = self.fault_class(error)
        now_s = self._monotonic_s()
        with self._lock:
            entry = self._seen.setdefault(kind, {"count": 0, "unlogged": 0, "logged_at_s": None})
            entry["count"] += 1
            first = entry["logged_at_s"] is None
            due = first or now_s - entry["logged_at_s"] >= LOG_INTERVAL_S
            if due:
                skipped, entry["unlogged"], entry["logged_at_s"] = entry["unlogged"], 0, now_s
            else:
                entry["unlogged"] += 1
        self._on_record(kind)
        if first:
            log.error("incident %s in %s: %s: %s", incident, where, kind, error, exc_info=error)
        elif due:
            log.error("incident %s in %s: %s: %s (%d more of this kind since the last line)", incident, where,
                      kind, error, skipped)
        return incident
