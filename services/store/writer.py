"""Group commit: one writer thread decides and commits every queued command in one transaction.

gRPC handler threads submit (command, caller) and wait; the writer takes everything queued (up to
COMMAND_BATCH_MAX) and hands it to ReserveLedger.execute, which appends all events in one transaction,
then completes every waiter. One fsync serves many concurrent commands; a command is answered only
after its transaction committed. Commands whose caller has gone (deadline, cancel) before their turn
are skipped, so nothing is recorded for a call that has already failed. While `refusal()` names an error
(a log integrity alarm), every command is answered with it and nothing is decided.
"""

import queue
import threading
from concurrent.futures import Future
from typing import Callable

from ledger.application import Outcome, ReserveLedger
from ledger.commands import Caller, Command
from ledger.errors import LedgerError
from ledger.limits import COMMAND_BATCH_MAX

_STOP = object()


class CallerGone(LedgerError):
    """The caller cancelled or ran out of deadline before the command's turn; nothing was recorded."""


class CommandWriter:
    def __init__(self, ledger: ReserveLedger, clock_us: Callable[[], int],
                 on_batch: Callable[[int, BaseException | None], None] = lambda size, error: None,
                 refusal: Callable[[], LedgerError | None] = lambda: None):
        """`on_batch(size, error)` hears of every group commit: its size and the failure, if any;
        `refusal()` names a reason to refuse every command now (an integrity alarm), or None."""
        self._ledger = ledger
        self._refusal = refusal
        self._on_batch = on_batch
        self._clock_us = clock_us
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="command-writer", daemon=True)
        self._thread.start()

    def submit(self, command: Command, caller: Caller, is_active: Callable[[], bool] = lambda: True) -> Future:
        future: Future = Future()
        self._queue.put((command, caller, is_active, future))
        return future

    def execute(self, command: Command, caller: Caller, is_active: Callable[[], bool] = lambda: True,
                timeout_s: float | None = None) -> Outcome:
        return self.submit(command, caller, is_active).result(timeout=timeout_s)

    def stop(self) -> None:
        """Finish what is queued, then stop (the writer loop runs until told to stop)."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < COMMAND_BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in batch)
            self._execute([item for item in batch if item is not _STOP])
            if stopping:
                return

    def _execute(self, batch: list) -> None:
        live = []
        for command, caller, is_active, future in batch:
            if is_active():
                live.append((command, caller, future))
            else:
                future.set_result(CallerGone("the call ended before its command was recorded"))
        refusal = self._refusal() if live else None
        if refusal is not None:
            for _, _, future in live:
                future.set_result(refusal)
            return
        if not live:
            return
        try:
            outcomes = self._ledger.execute([(c, who) for c, who, _ in live], self._clock_us())
        except BaseException as error:  # storage failure: every waiter learns it, nothing is acknowledged
            for _, _, future in live:
                future.set_exception(error)
            self._on_batch(len(live), error)
            return
        self._on_batch(len(live), None)
        for (_, _, future), outcome in zip(live, outcomes, strict=True):
            future.set_result(outcome)
