"""Caps on concurrent server streams: each open stream holds one of the server's worker threads, so one
identity (or all of them together) must not be able to take every thread and starve unary calls."""

import threading

from ledger.errors import LedgerError

STREAMS_PER_IDENTITY_MAX = 8
STREAMS_TOTAL_MAX = 24          # of the server's 64 worker threads: 40 always remain for unary calls


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

    def release(self, identity: str) -> None:
        with self._lock:
            self._open[identity] -= 1
            if not self._open[identity]:
                del self._open[identity]
