"""The one adapter between grpc.aio and the servicers (services/api/calls.py), over a real loopback server: a
plain sync unary method runs in the call pool, a coroutine method in the loop, a plain sync generator still
streams (each step in the pool), and a CallContext reports the deadline and whether the caller still waits."""

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from services.api import calls

SERVICE = "adapter.Test"


class Servicer:
    """Records in which thread each method ran."""

    def __init__(self):
        self.threads: dict[str, str] = {}
        self.contexts: list[calls.CallContext] = []

    def SyncUnary(self, request: bytes, context) -> bytes:
        self.threads["SyncUnary"] = threading.current_thread().name
        self.contexts.append(context)
        remaining_s = context.time_remaining()
        return b"%d" % (0 < remaining_s <= 31)   # the client's 30 s, sent as grpc-timeout (which may round up)

    async def AsyncUnary(self, request: bytes, context) -> bytes:
        self.threads["AsyncUnary"] = threading.current_thread().name
        return request

    def SyncStream(self, request: bytes, context):
        for n in range(3):
            self.threads[f"SyncStream-{n}"] = threading.current_thread().name
            yield b"%d" % n

    def Slow(self, request: bytes, context) -> bytes:
        self.contexts.append(context)
        deadline_s = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline_s:
            time.sleep(0.05)
        return b"done"


def _handlers(servicer: Servicer):
    def unary(method):
        async def handle(request, context):
            return await calls.run_unary(method, request, calls.CallContext(context))
        return grpc.unary_unary_rpc_method_handler(handle)

    def stream(method):
        async def handle(request, context):
            async for response in calls.iterate_stream(method, request, calls.CallContext(context)):
                yield response
        return grpc.unary_stream_rpc_method_handler(handle)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "SyncUnary": unary(servicer.SyncUnary), "AsyncUnary": unary(servicer.AsyncUnary),
        "Slow": unary(servicer.Slow), "SyncStream": stream(servicer.SyncStream)})


@pytest.fixture
def adapter_server():
    """A grpc.aio server on loopback, its loop in a thread whose default executor is a named call pool."""
    servicer, loop = Servicer(), asyncio.new_event_loop()
    loop.set_default_executor(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="call"))
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()

    async def start():
        server = grpc.aio.server(handlers=[_handlers(servicer)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, channel
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def test_sync_methods_run_in_the_call_pool_coroutines_in_the_loop_and_sync_generators_still_stream(adapter_server):
    """Goal: other helpers' plain sync methods keep working unchanged (in the pool, never on the loop), and the
    deadline reaches them through the CallContext."""
    servicer, channel = adapter_server
    assert channel.unary_unary(f"/{SERVICE}/SyncUnary")(b"", timeout=30) == b"1"
    assert channel.unary_unary(f"/{SERVICE}/AsyncUnary")(b"echo", timeout=30) == b"echo"
    assert list(channel.unary_stream(f"/{SERVICE}/SyncStream")(b"", timeout=30)) == [b"0", b"1", b"2"]
    assert servicer.threads["SyncUnary"].startswith("call")
    assert servicer.threads["AsyncUnary"] == "test-loop"
    assert all(servicer.threads[f"SyncStream-{n}"].startswith("call") for n in range(3))


def test_a_call_whose_deadline_passes_is_no_longer_active_for_the_method_still_running(adapter_server):
    """Goal: a sync method that outlives its caller learns it (is_active false), as the command writer needs to
    skip a command whose caller has gone."""
    servicer, channel = adapter_server
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{SERVICE}/Slow")(b"", timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline_s = time.monotonic() + 30
    while servicer.contexts[-1].is_active() and time.monotonic() < deadline_s:
        time.sleep(0.05)
    assert not servicer.contexts[-1].is_active()


def test_a_call_the_client_cancels_is_no_longer_active_for_the_method_still_running(adapter_server):
    """Goal: a cancel (no deadline at all) reaches the sync method too: the adapter marks its context ended when
    grpc.aio cancels the call's task."""
    servicer, channel = adapter_server
    pending = channel.unary_unary(f"/{SERVICE}/Slow").future(b"")
    deadline_s = time.monotonic() + 30
    while not servicer.contexts and time.monotonic() < deadline_s:
        time.sleep(0.05)
    assert servicer.contexts[-1].time_remaining() is None and servicer.contexts[-1].is_active()
    pending.cancel()
    while servicer.contexts[-1].is_active() and time.monotonic() < deadline_s:
        time.sleep(0.05)
    assert not servicer.contexts[-1].is_active()
