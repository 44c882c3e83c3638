"""One server interceptor: authenticate, check the method -> roles table, parse, map every failure to a status.

handler_call_details carries no auth context, so the check wraps the handler itself and runs when
the call arrives (grpc.md §3). The request arrives as raw bytes and is parsed only after the caller is
authenticated and authorised: garbage from a caller who may not call the method is PERMISSION_DENIED,
garbage from one who may is INVALID_ARGUMENT. LedgerError -> services/api/status.py's table; a storage
failure or any other fault -> UNAVAILABLE with ErrorInfo and an incident id, never INTERNAL/UNKNOWN and
never internal text. Health and reflection are open to any authenticated TLS peer.

The server is grpc.aio: authentication, parsing and the status mapping run in the event loop; the servicer's
method runs through the one adapter in services/api/calls.py (a sync method in the executor, a stream as an
async generator), so an open stream holds no thread. Streams count against per-identity and total caps.
"""

import asyncio
import logging
import time

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2
from grpc_status import rpc_status

from ledger.errors import InvariantBroken, LedgerError, RequestInvalid, Violation
from services.api import auth
from services.api import calls
from services.api.faults import FaultLog
from services.api.status import fault_status, rich_status
from services.api.streams import StreamSlots
from services.store.signing import replay_alarm

log = logging.getLogger("reserve_ledger.calls")
OWN_PREFIXES = (auth.SERVICE, auth.AUDIT_SERVICE, auth.ALERT_SERVICE)


def _parsed(parse, raw: bytes):
    try:
        return parse(raw)
    except (DecodeError, ValueError, TypeError) as error:
        raise RequestInvalid([Violation("request", "REQUEST_UNDECODABLE",
                                        f"not a valid protobuf message of this method's request type ({error})")
                              ]) from None


class _Guard:
    """Authenticates, authorises and parses one call, and turns whatever it raises into a status."""

    def __init__(self, handler, method: str, dev_mode: bool, faults: FaultLog, observe, streams, slots):
        self.handler, self.method, self.dev_mode, self.faults = handler, method, dev_mode, faults
        self.observe, self.streams, self.slots = observe, streams, slots

    def admit(self, raw: bytes, context):
        """(caller, request) once the caller is authenticated, authorised and the request parsed."""
        caller = auth.caller_of(context, self.dev_mode)
        auth.check_role(self.method, caller)
        return caller, _parsed(self.handler.request_deserializer, raw)

    def status_of(self, error: Exception):
        if isinstance(error, InvariantBroken):  # the stored log breaks a rule: the integrity alarm's answer
            error = replay_alarm(error)
        if isinstance(error, LedgerError):
            log.info("%s refused: %s", self.method, error)
            return rich_status(error)
        return fault_status(error, self.faults.record(self.method, error))

    async def unary(self, raw: bytes, context):
        outcome, started_s = "OK", time.perf_counter()
        try:
            call = calls.CallContext(context)
            return await calls.run_unary(self.handler.unary_unary, self.admit(raw, call)[1], call)
        except asyncio.CancelledError:  # the caller went away (cancel, deadline) or the server stopped
            outcome = "CANCELLED"
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes a documented status below
            status = self.status_of(error)
            outcome = code_pb2.Code.Name(status.code)
        finally:
            self.observe(self.method, outcome, time.perf_counter() - started_s)
        await context.abort_with_status(rpc_status.to_status(status))

    async def stream(self, raw: bytes, context):
        try:
            call = calls.CallContext(context)
            caller, request = self.admit(raw, call)
            self.slots.acquire(caller.identity)
            self.streams(+1)
            try:
                async for response in calls.iterate_stream(self.handler.unary_stream, request, call):
                    yield response
            finally:
                self.streams(-1)
                self.slots.release(caller.identity)
            return
        except Exception as error:  # noqa: BLE001 - every failure becomes a documented status below
            status = self.status_of(error)
        await context.abort_with_status(rpc_status.to_status(status))


class LedgerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, dev_mode: bool, faults: FaultLog | None = None,
                 observe=lambda method, outcome, seconds: None, streams=lambda change: None,
                 slots: StreamSlots | None = None):
        """`observe(method, outcome, seconds)` hears how each unary call ended, `streams(±1)` of each stream
        opening and closing (metrics); `slots` holds the stream caps."""
        self._dev_mode = dev_mode
        self.faults = faults or FaultLog()
        self._observe, self._streams = observe, streams
        self.slots = slots or StreamSlots()
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}   # method -> its wrapped handler (built once)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(OWN_PREFIXES):
            return handler
        guarded = self._guard(handler, method)
        self._guarded[method] = guarded
        return guarded

    def _guard(self, handler, method: str):
        """The method's handler wrapped by a _Guard (which keeps no per-call state, so one serves every call)."""
        guard = _Guard(handler, method, self._dev_mode, self.faults, self._observe, self._streams, self.slots)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                guard.unary, request_deserializer=None, response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                guard.stream, request_deserializer=None, response_serializer=handler.response_serializer)
        return handler
