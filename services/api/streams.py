"""Caps on concurrent server streams. An open stream holds no thread (services/api/calls.py), only a coroutine,
its call's buffers and at most one response in flight; the caps bound that memory and the heartbeat traffic,
per identity (one auditor cannot crowd out the others) and in total. Configurable: ServerConfig
streams_per_identity_max / streams_total_max (`serve --streams-per-identity-max N --streams-total-max N`)."""

import threading

from ledger.errors import LedgerError

STREAMS_PER_IDENTITY_MAX = 256
STREAMS_TOTAL_MAX = 2048


class StreamLimitReached(LedgerError):
    """Too many streams are open (for this identity or in total); retry when one closes."""


class StreamSlots:
    def __init__(self, per_identity_max: int = STREAMS_PER_IDENTITY_MAX, total_max: int = STREAMS_TOTAL_MAX):
        self._per_identity_max, self._total_max = per_identity_max, total_max
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, identity: str) -> None:
        with self._lock:
            mine, total = self._open.get(identity, 0), sum(self._open.values())
            if mine >= self._per_identity_max:
                raise StreamLimitReached(f"{identity} already has {mine} open streams (at most "
                                         f"{self._per_identity_max}); close one or retry later")
            if total >= self._total_max:
                raise StreamLimitReached(f"the server has {total} open streams (at most {self._total_max}); "
                                         "retry later")
            self._open[identity] = mine + 1

    def open_count(self, identity: str | None = None) -> int:
        """Streams open now, for one identity or (None) in all."""
        with self._lock:
            return self._open.get(identity, 0) if identity is not None else sum(self._open.values())

    def release(self, identity: str) -> None:
        with self._lock:
            self._open[identity] -= 1
            if not self._open[identity]:
                del self._open[identity]
