"""The ONE table from domain errors to gRPC status codes, and the rich error details sent with them."""

import sqlite3

import grpc
import psycopg
from eventsourcing.persistence import PersistenceError
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ledger import errors
from services.api.streams import StreamLimitReached
from services.store.signing import LogIntegrityAlarm
from services.store.writer import CallerGone

DOMAIN = "reserve-ledger"

STATUS_BY_ERROR: dict[type, grpc.StatusCode] = {
    errors.RequestInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PositionBeyondLog: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TreeSizeBeyondLog: grpc.StatusCode.OUT_OF_RANGE,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.RuleViolated: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SupplyCapExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.TurnoverLimitExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RoleNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    errors.IdentityMissing: grpc.StatusCode.UNAUTHENTICATED,
    errors.ConcurrencyRetriesExhausted: grpc.StatusCode.ABORTED,
    CallerGone: grpc.StatusCode.CANCELLED,
    StreamLimitReached: grpc.StatusCode.RESOURCE_EXHAUSTED,
    LogIntegrityAlarm: grpc.StatusCode.FAILED_PRECONDITION,  # not transient: an operator must look first
}


def status_code_for(error: errors.LedgerError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INVALID_ARGUMENT if error.field else grpc.StatusCode.FAILED_PRECONDITION


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(error: errors.LedgerError) -> status_pb2.Status:
    """google.rpc.Status with ErrorInfo always, BadRequest for field errors, PreconditionFailure for rules."""
    code = status_code_for(error)
    details = [_packed(error_details_pb2.ErrorInfo(reason=error.reason[:63], domain=DOMAIN))]
    if isinstance(error, errors.RequestInvalid):
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description, reason=v.rule)
            for v in error.violations])))
    elif error.field and code == grpc.StatusCode.INVALID_ARGUMENT:
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=str(error),
                                                        reason=error.reason)])))
    elif code == grpc.StatusCode.FAILED_PRECONDITION:
        details.append(_packed(error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(type=error.reason, subject=error.field or "",
                                                            description=str(error))])))
    elif error.field:
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=str(error),
                                                        reason=error.reason)])))
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=str(error), details=details)


# Failures of the environment, not of the request: the caller may retry the same call (same request_id).
STORE_FAILURES = (PersistenceError, sqlite3.Error, psycopg.Error, OSError)
RETRY_DELAY_S = 1


def fault_status(error: BaseException, incident: str) -> status_pb2.Status:
    """UNAVAILABLE for any failure that is not the caller's: no internal text, an incident id to quote."""
    store = isinstance(error, STORE_FAILURES)
    reason = "STORE_UNAVAILABLE" if store else "SERVICE_FAULT"
    message = (f"the ledger's storage cannot complete the call right now (incident {incident}); retry with the "
               "same request_id (a command already recorded is answered from the log, never recorded twice)" if store else
               f"the service could not complete the call (incident {incident}); retry with the same request_id")
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata={"incident": incident})),
               _packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_DELAY_S)))]
    return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=details)
