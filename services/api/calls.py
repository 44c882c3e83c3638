"""How the asyncio server (grpc.aio) runs the servicers: the ONE adapter between the event loop and their code.

Servicer methods are plain sync functions (`def Method(self, request, context)`): the interceptor awaits
`run_unary`, which runs the method in the loop's default executor (a bounded thread pool, sized by
`ServerConfig.call_threads`), so a method holds a thread only while it works. A method may instead be a
coroutine function (`async def`); then it runs in the loop itself and must not block.

Server-streaming methods are async generators (`async def Stream(self, request, context): ... yield`): each
short read runs in the executor (`await asyncio.to_thread(read, ...)`), and between batches and while idle the
generator awaits (a LogTail, or asyncio.sleep), holding no thread. gRPC sends each yielded response before the
generator resumes, so a slow reader costs one response in memory (flow control), never a growing queue.
A plain sync generator still works (each `next()` runs in the executor), but one that sleeps holds a thread
while it sleeps: write new streams as async generators (docs/ARCHITECTURE.md, "Server model").

Every method receives a CallContext, not grpc's own: it is safe to use from any thread.
"""

import asyncio
import inspect
import time
from typing import Any, AsyncIterator, Callable

_END = object()


class CallContext:
    """What a servicer may ask about its call, from any thread: metadata, the peer's certificate (auth_context),
    the deadline (time_remaining) and whether the caller is still waiting (is_active)."""

    def __init__(self, context):
        self._metadata = tuple(context.invocation_metadata() or ())
        self._auth_context = context.auth_context()
        self._peer = context.peer()
        remaining_s = context.time_remaining()
        self._deadline_s = None if remaining_s is None else time.monotonic() + remaining_s
        self._ended = False

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def auth_context(self) -> dict:
        return self._auth_context

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline_s is None else max(0.0, self._deadline_s - time.monotonic())

    def is_active(self) -> bool:
        """False once the caller cancelled or its deadline passed."""
        return not self._ended and (self._deadline_s is None or time.monotonic() < self._deadline_s)

    def end(self) -> None:
        self._ended = True


async def run_unary(method: Callable, request, context: CallContext) -> Any:
    """The response of a unary servicer method: awaited in the loop when it is a coroutine function, else run in
    the executor. A cancelled call marks the context inactive (the method may still be running in its thread:
    the command writer then skips its command)."""
    try:
        if inspect.iscoroutinefunction(method):
            return await method(request, context)
        return await asyncio.get_running_loop().run_in_executor(None, method, request, context)
    except asyncio.CancelledError:
        context.end()
        raise


async def iterate_stream(method: Callable, request, context: CallContext) -> AsyncIterator:
    """The responses of a server-streaming servicer method, whether an async generator or a plain generator."""
    try:
        if inspect.isasyncgenfunction(method):
            async for response in method(request, context):
                yield response
            return
        responses = iter(await asyncio.get_running_loop().run_in_executor(None, method, request, context))
        while (response := await asyncio.get_running_loop().run_in_executor(None, next, responses, _END)) is not _END:
            yield response
    finally:
        context.end()
