"""The one place where domain errors become Connect errors.

Every domain error maps to one Connect code, and the specification's numeric code
travels as a ``delidev.v1.ErrorInfo`` detail. Any other exception is logged here
and reaches the client as a bare ``internal`` error: no text, no trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from connectrpc_otel import OpenTelemetryInterceptor
from opentelemetry.trace import TracerProvider

from delidev import db_outage, errors, metrics, request_context, tracing
from delidev.connect.gen.delidev.v1.common_pb import ErrorInfo

log = logging.getLogger(__name__)

REQ = TypeVar("REQ")
RES = TypeVar("RES")

CONNECT_CODES: dict[type[errors.DeliDevError], Code] = {
    errors.DeliDevError: Code.INTERNAL,
    errors.InvalidArgument: Code.INVALID_ARGUMENT,
    errors.Unauthenticated: Code.UNAUTHENTICATED,
    errors.PermissionDenied: Code.PERMISSION_DENIED,
    errors.NotFound: Code.NOT_FOUND,
    errors.AlreadyExists: Code.ALREADY_EXISTS,
    errors.FailedPrecondition: Code.FAILED_PRECONDITION,
    errors.Conflict: Code.ABORTED,
    errors.WorkerUnavailable: Code.UNAVAILABLE,
    errors.Unavailable: Code.UNAVAILABLE,
    errors.Unimplemented: Code.UNIMPLEMENTED,
    errors.Internal: Code.INTERNAL,
}

# For errors raised by the Connect runtime itself (bad body, unknown method...): the domain
# error of the same meaning, whose spec code travels with them. Any other code is internal.
_RUNTIME_ERRORS: dict[Code, type[errors.DeliDevError]] = {
    Code.INVALID_ARGUMENT: errors.InvalidArgument,
    Code.UNIMPLEMENTED: errors.Unimplemented,
    Code.UNAUTHENTICATED: errors.Unauthenticated,
    Code.PERMISSION_DENIED: errors.PermissionDenied,
    Code.NOT_FOUND: errors.NotFound,
    Code.UNAVAILABLE: errors.WorkerUnavailable,
    Code.FAILED_PRECONDITION: errors.FailedPrecondition,
    Code.ABORTED: errors.Conflict,
}


def connect_code(error_type: type[errors.DeliDevError]) -> Code:
    """The Connect code of a domain error class (a subclass maps like its nearest parent)."""
    for cls in error_type.__mro__:
        if cls in CONNECT_CODES:
            return CONNECT_CODES[cls]
    return Code.INTERNAL


def to_connect_error(exc: BaseException, method: str) -> ConnectError:
    if isinstance(exc, errors.DeliDevError):
        code = connect_code(type(exc))
        return ConnectError(
            code, exc.message, details=[ErrorInfo(delidev_code=exc.code, field=exc.field or "")]
        )
    if isinstance(exc, ConnectError):
        if exc.details:
            return exc
        message = exc.message
        if exc.code == Code.UNIMPLEMENTED:
            message = f"{method} is not implemented yet"
        return ConnectError(
            exc.code,
            message,
            details=[ErrorInfo(delidev_code=_RUNTIME_ERRORS.get(exc.code, errors.Internal).code)],
        )
    if db_outage.is_outage(exc):
        return to_connect_error(db_outage.refused(exc, method), method)
    log.error("unexpected error in %s", method, exc_info=exc)
    return ConnectError(
        Code.INTERNAL, "internal error", details=[ErrorInfo(delidev_code=errors.Internal.code)]
    )


class ErrorInterceptor:
    """Maps domain errors and masks unexpected ones, for unary and streaming methods."""

    async def intercept_unary(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], Awaitable[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> RES:
        try:
            return await call_next(request, ctx)
        except Exception as exc:
            raise _noted(to_connect_error(exc, _method_name(ctx))) from None

    async def intercept_server_stream(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], AsyncIterator[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[RES]:
        try:
            async for item in call_next(request, ctx):
                yield item
        except Exception as exc:
            raise _noted(to_connect_error(exc, _method_name(ctx))) from None


def _noted(error: ConnectError) -> ConnectError:
    request_context.set_code(error.code.value)  # for the log (delidev/request_context.py)
    return error


class MetricsInterceptor:
    """Times each call (``rpc_server_call_duration_seconds`` by service, method and Connect
    code); outside ``ErrorInterceptor``, so it sees the code the client gets."""

    async def intercept_unary(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], Awaitable[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> RES:
        started = time.perf_counter()
        code = "ok"
        try:
            return await call_next(request, ctx)
        except ConnectError as exc:
            code = exc.code.value
            raise
        except BaseException:
            code = Code.INTERNAL.value  # cancelled or not mapped: the call did not succeed
            raise
        finally:
            _record(ctx, code, started)

    async def intercept_server_stream(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], AsyncIterator[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[RES]:
        started = time.perf_counter()
        code = "ok"
        try:
            async for item in call_next(request, ctx):
                yield item
        except ConnectError as exc:
            code = exc.code.value
            raise
        except BaseException:
            code = Code.CANCELED.value  # the client went away (or the server closes)
            raise
        finally:
            _record(ctx, code, started)


def _record(ctx: RequestContext[Any, Any], code: str, started: float) -> None:
    request_context.set_rpc_timed()
    metrics.rpc_call(
        ctx.method.service_name,
        ctx.method.name,
        code,
        time.perf_counter() - started,
    )


def _method_name(ctx: RequestContext[Any, Any]) -> str:
    return f"{ctx.method.service_name}/{ctx.method.name}"


class TracingInterceptor:
    """A span per call, with ``connectrpc-otel``'s names and attributes (the RPC semantic
    conventions); outermost, so it sees the code the client gets. Only installed when tracing
    is on (``delidev/tracing.py``).

    ``connectrpc-otel``'s own interceptor is a metadata interceptor (``on_start``/``on_end``),
    and a Connect app with one of those loses our unary fast path (``fast_unary``): this one
    drives the same two steps from the unary and stream hooks, which the fast path runs. A call
    in a request the sampler dropped passes straight through."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        # Its meter is the API's global one, a no-op here (metrics are MetricsInterceptor's).
        self._otel = OpenTelemetryInterceptor(tracer_provider=tracer_provider)

    async def intercept_unary(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], Awaitable[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> RES:
        if tracing.unsampled():
            return await call_next(request, ctx)
        token = self._otel.on_start_sync(ctx)
        error: Exception | None = None
        try:
            return await call_next(request, ctx)
        except Exception as exc:
            error = exc
            raise
        finally:
            self._otel.on_end_sync(token, ctx, error)

    async def intercept_server_stream(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], AsyncIterator[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[RES]:
        if tracing.unsampled():
            async for item in call_next(request, ctx):
                yield item
            return
        token = self._otel.on_start_sync(ctx)
        error: Exception | None = None
        try:
            async for item in call_next(request, ctx):
                yield item
        except Exception as exc:
            error = exc
            raise
        finally:
            self._otel.on_end_sync(token, ctx, error)
