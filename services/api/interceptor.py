"""One server interceptor: authenticate, check the method -> roles table, map LedgerError -> status.

handler_call_details carries no auth context, so the check wraps the handler itself and runs when
the call arrives (grpc.md §3). Health and reflection are open to any authenticated TLS peer.
"""

import logging

import grpc
from grpc_status import rpc_status

from ledger.errors import LedgerError
from services.api import auth
from services.api.status import rich_status

log = logging.getLogger("reserve_ledger.calls")
OWN_PREFIXES = (auth.SERVICE, auth.AUDIT_SERVICE)


def _abort(context, error: LedgerError):
    context.abort_with_status(rpc_status.to_status(rich_status(error)))


def _guarded_unary(behavior, method: str, dev_mode: bool):
    def handler(request, context):
        try:
            caller = auth.caller_of(context, dev_mode)
            auth.check_role(method, caller)
            return behavior(request, context)
        except LedgerError as error:
            log.info("%s refused: %s", method, error)
            _abort(context, error)
    return handler


def _guarded_stream(behavior, method: str, dev_mode: bool):
    def handler(request, context):
        try:
            caller = auth.caller_of(context, dev_mode)
            auth.check_role(method, caller)
            yield from behavior(request, context)
        except LedgerError as error:
            log.info("%s refused: %s", method, error)
            _abort(context, error)
    return handler


class LedgerInterceptor(grpc.ServerInterceptor):
    def __init__(self, dev_mode: bool):
        self._dev_mode = dev_mode

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(OWN_PREFIXES):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guarded_unary(handler.unary_unary, method, self._dev_mode),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guarded_stream(handler.unary_stream, method, self._dev_mode),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        return handler
