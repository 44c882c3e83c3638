"""The log's size as the event loop knows it, so that idle follow streams wait without threads or queries each.

One LogTail per server. A follow stream with nothing to send awaits `wait_beyond(position, timeout_s)`; the
tail wakes it when the log grows past that position. The log's size is learnt by one poller task (one
`log_size()` query in the executor every `poll_s`, only while some stream waits: it sees events another
replica appended) and at once after each local commit (`poke()`, from the command writer's thread). So a
thousand idle streams cost one small query per poll interval, not a thousand.
"""

import asyncio
from typing import AsyncIterator, Callable

POLL_S = 0.2


class LogTail:
    def __init__(self, read_size: Callable[[], int], poll_s: float = POLL_S):
        """`read_size()` is the store's log size (a blocking query, run in the executor)."""
        self._read_size = read_size
        self._poll_s = poll_s
        self.size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grown: asyncio.Event | None = None
        self._poked: asyncio.Event | None = None
        self._waiting = 0
        self._poller: asyncio.Task | None = None

    def _bind(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._grown, self._poked = asyncio.Event(), asyncio.Event()

    async def wait_beyond(self, position: int, timeout_s: float) -> bool:
        """True as soon as the log holds an event at `position` (it may already); False after `timeout_s`."""
        self._bind()
        deadline_s = self._loop.time() + timeout_s
        while self.size <= position:
            remaining_s = deadline_s - self._loop.time()
            if remaining_s <= 0:
                return False
            self._waiting += 1
            self._start_poller()
            try:
                await asyncio.wait_for(self._grown.wait(), remaining_s)
            except TimeoutError:
                return self.size > position
            finally:
                self._waiting -= 1
        return True

    async def follow(self, start: int, read: Callable[[int], tuple[list, int]], heartbeat_s: float,
                     retry_s: float) -> AsyncIterator[tuple[list, int]]:
        """The loop of every follow stream: `read(position)` (blocking, run in the executor) returns the items to
        send and the position after what it read; yields (items, next position) for each batch, and ([], position)
        as a heartbeat after `heartbeat_s` with nothing new. Runs until the call's task is cancelled."""
        position = start
        while True:
            items, next_position = await asyncio.to_thread(read, position)
            moved, position = next_position > position, next_position
            if items:
                yield items, position
                continue
            if moved:  # it read past entries this stream does not send: read on
                continue
            if self.size > position:  # the tail saw more than the read did: read again soon, never spin
                await asyncio.sleep(retry_s)
            while not await self.wait_beyond(position, heartbeat_s):
                yield [], position

    def poke(self) -> None:
        """The log may have grown (a local commit): re-read its size now. Safe from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._poked.set)

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = self._loop.create_task(self._poll())

    async def _poll(self) -> None:
        """Runs while any stream waits; each round reads the size once and wakes the streams it concerns."""
        while self._waiting:
            self._poked.clear()
            try:
                size = await asyncio.to_thread(self._read_size)
            except Exception:  # noqa: BLE001 - a failed read is retried next round; streams keep their heartbeats
                size = self.size
            if size > self.size:
                self.size = size
                self._grown.set()
                self._grown = asyncio.Event()
            try:
                await asyncio.wait_for(self._poked.wait(), self._poll_s)
            except TimeoutError:
                pass
