"""The one table between domain errors and gRPC status codes, used both ways: the call guard
answers a raised error with its status, and clients turn a status back into the same
error."""

import grpc
import psycopg
import sqlalchemy.exc
import structlog

from libs.common import errors

log = structlog.get_logger(__name__)

STATUS_BY_ERROR: dict[type[errors.AgentryError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
ERROR_BY_STATUS = {code: error for error, code in STATUS_BY_ERROR.items()}


def status_for(exc: errors.AgentryError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def from_rpc_error(exc: grpc.aio.AioRpcError) -> Exception:
    """The domain error a client should raise for a failed call."""
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(exc.details() or "deadline exceeded")
    error = ERROR_BY_STATUS.get(code)
    if error is None:
        return errors.Unavailable(f"{code.name.lower()}: {exc.details() or 'no details'}")
    return error(exc.details() or code.name.lower())


async def abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    """Ends a call with the status of a domain error, or INTERNAL (logged with its
    traceback, never shown to the caller) for anything else."""
    if isinstance(exc, errors.AgentryError):
        if isinstance(exc, errors.ResourceExhausted):
            context.set_trailing_metadata((("retry-after", f"{exc.retry_after_s:.3f}"),))
        await context.abort(status_for(exc), str(exc))
    # A value Postgres cannot hold (a NUL in text, a number out of range), from psycopg or
    # wrapped by SQLAlchemy: the caller's input, refused as it is, without the statement.
    data_error = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    if isinstance(data_error, psycopg.DataError):
        reason = str(data_error).splitlines()[0] if str(data_error) else "a value cannot be stored"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
    if isinstance(exc, NotImplementedError):  # a generated base servicer: not built yet
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented yet")
    log.exception("unhandled error in rpc", method=method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
