"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables ask for it.

``from_environ`` decides, once per app (``create_app``): tracing is on when
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``; ``none`` is off) or an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``. The SDK reads the rest itself from the process
environment: the sampler (``OTEL_TRACES_SAMPLER``/``_ARG``), the exporter's endpoint, headers
and timeout, ``OTEL_RESOURCE_ATTRIBUTES``. The OTLP exporter speaks ``http/protobuf`` (the
protocol the specification makes the default); the gRPC exporter is not installed, and asking
for it fails at start-up rather than sending to the wrong port. The service is called
``delidev-server`` unless ``OTEL_SERVICE_NAME`` (or ``service.name`` in the resource
attributes) says otherwise.

When off nothing is installed: no middleware, no interceptor, no extension, no patched
database driver; the background loops hold the API's no-op tracer.

A request the sampler drops costs little: ``Sampled`` asks the sampler first (when its answer
cannot depend on a trace id not yet drawn: a parent's decision, or a fixed root sampler such as
``always_off``), and a dropped request skips the ASGI instrumentation (which builds every
attribute before it asks) and runs under a non-recording span that keeps the trace id and
propagates it, with instrumentation suppressed: the interceptor, the GraphQL extension and the
statement wrappers see it and step aside. When on, the app's
``Tracing`` carries its own ``TracerProvider``, handed to every instrumentation explicitly
(the global provider is left alone, so that tests can run several apps in one process):

- each HTTP request and WebSocket: ``opentelemetry-instrumentation-asgi``'s middleware, which
  continues a client's W3C ``traceparent`` and gives the request's log lines the trace id;
- each Connect call: ``connect.interceptors.TracingInterceptor`` (``connectrpc-otel``'s spans);
- each GraphQL operation: Strawberry's ``OpenTelemetryExtension``;
- each database statement: ``opentelemetry-instrumentation-asyncpg`` on PostgreSQL, and on
  SQLite the small wrapper below around Tortoise's client (there is no instrumentation for
  aiosqlite);
- each background pass (``background.py``).

A queued run stores the ``traceparent`` of the request that queued it (``current_traceparent``)
and the worker gets it with the job, so that its spans continue the same trace.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, ParentBased, Sampler
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from delidev import request_context
from delidev.request_context import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "delidev-server"
# Requests that would only add noise to a trace store: probes and scrapes (regular
# expressions searched in the URL, as OTEL_PYTHON_ASGI_EXCLUDED_URLS, which replaces them).
DEFAULT_EXCLUDED_URLS = "/healthz,/readyz,/metrics"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


@dataclass
class Tracing:
    """The tracing of one app: its provider, and what it patched (undone by ``shutdown``)."""

    provider: TracerProvider
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def tracer(self, name: str) -> trace.Tracer:
        return self.provider.get_tracer(name)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware that starts each request's span (place it inside
        ``RequestContext``, whose log record it fills with the trace id)."""
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        middleware: ASGIApp = OpenTelemetryMiddleware(
            app,
            excluded_urls=os.environ.get("OTEL_PYTHON_ASGI_EXCLUDED_URLS", DEFAULT_EXCLUDED_URLS),
            server_request_hook=_note_trace_id,
            default_span_details=_span_details,
            tracer_provider=self.provider,
            meter_provider=NoOpMeterProvider(),  # metrics are prometheus-client's
            # Not a span per ASGI message: a long stream would make thousands.
            exclude_spans=["receive", "send"],
        )
        return Sampled(app, middleware, self.provider)

    def trace_database(self, *, postgres: bool) -> None:
        """Spans for database statements, until ``shutdown``."""
        if postgres:
            from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

            instrumentor = AsyncPGInstrumentor()
            instrumentor.instrument(tracer_provider=self.provider)
            self._undo.append(instrumentor.uninstrument)
        else:
            self._undo.append(_trace_sqlite(self.tracer("delidev.sqlite")))

    def shutdown(self) -> None:
        """Undoes the patches and flushes the spans still held (blocks up to the exporter's
        timeout: call it off the event loop)."""
        while self._undo:
            self._undo.pop()()
        self.provider.shutdown()


_KNOWN_PATHS = frozenset({"/graphql", "/healthz", "/readyz", "/metrics"})


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The request span's name: the method and a route from a closed set (a known path, or
    a Connect service with ``{method}``: the Connect span under it names the method), never
    the raw path, which a client could vary without end."""
    from delidev.connect.routes import connect_route

    path = str(scope.get("path", ""))
    method = str(scope.get("method", "")) if scope.get("type") == "http" else "WEBSOCKET"
    if path in _KNOWN_PATHS:
        return f"{method} {path}", {}
    route = connect_route(path)
    if route is not None:
        return f"{method} {route}", {}
    return method or "HTTP", {}


def from_environ(
    environ: Mapping[str, str] = os.environ, *, service_name: str = DEFAULT_SERVICE_NAME
) -> Tracing | None:
    """The tracing ``environ`` asks for, or None (see the module docstring); ``service_name``
    unless the environment names the service.

    Raises:
        ValueError: an exporter or OTLP protocol that is not available here.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = environ.get("OTEL_TRACES_EXPORTER")
    endpoint = any(environ.get(e) for e in _ENDPOINTS)
    if names is None and not endpoint:
        return None
    chosen = [_exporter(n.strip(), environ) for n in (names or "otlp").split(",") if n.strip()]
    exporters = [e for e in chosen if e is not None]
    if not exporters:
        return None
    # The sampler as OTEL_TRACES_SAMPLER says (default: parent-based, always on).
    provider = TracerProvider(resource=resource(service_name))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)


def resource(default_name: str = DEFAULT_SERVICE_NAME) -> Resource:
    detected = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: default_name}))
    return detected


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER: {name!r} is not available (use otlp or console)")
    protocol = next((environ[p] for p in _PROTOCOLS if environ.get(p)), "http/protobuf")
    if protocol != "http/protobuf":
        raise ValueError(
            f"OTLP protocol {protocol!r} is not available here: use http/protobuf (port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class Sampled:
    """Sends a request the sampler keeps (or may keep) through ``traced``, and one it drops
    straight to ``app`` under a non-recording span (see the module docstring)."""

    def __init__(self, app: ASGIApp, traced: ASGIApp, provider: TracerProvider) -> None:
        self._app = app
        self._traced = traced
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._propagator = TraceContextTextMapPropagator()
        self._root_dropped = _drops_every_root(self._sampler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._traced(scope, receive, send)
            return
        parent = _remote_parent(self._propagator, scope)
        parent_context = None
        if parent is None:
            dropped = self._root_dropped
            trace_id = self._ids.generate_trace_id() if dropped else 0
        else:
            parent_context = parent.get_span_context()
            trace_id = parent_context.trace_id
            decision = self._sampler.should_sample(
                trace.set_span_in_context(parent), trace_id, "request"
            )
            dropped = decision.decision == Decision.DROP
        if not dropped:
            await self._traced(scope, receive, send)
            return
        span = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id,
                self._ids.generate_span_id(),
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
                trace_state=parent_context.trace_state if parent_context else None,
            )
        )
        request_context.set_trace_id(format(trace_id, "032x"))
        unsampled = otel_context.set_value(
            otel_context._SUPPRESS_INSTRUMENTATION_KEY,  # the key instrumentations read
            True,
            trace.set_span_in_context(span),
        )
        token = otel_context.attach(unsampled)
        try:
            await self._app(scope, receive, send)
        finally:
            otel_context.detach(token)


def _remote_parent(propagator: TraceContextTextMapPropagator, scope: Scope) -> trace.Span | None:
    for name, value in scope["headers"]:
        if name == b"traceparent":
            extracted = propagator.extract({"traceparent": value.decode("latin-1")})
            span = trace.get_current_span(extracted)
            return span if span.get_span_context().is_valid else None
    return None


def _drops_every_root(sampler: Sampler) -> bool:
    """Whether ``sampler`` drops every request without a parent, whatever its trace id."""
    if isinstance(sampler, ParentBased):
        sampler = sampler._root  # its root sampler (no public accessor)
    return sampler is ALWAYS_OFF


def unsampled() -> bool:
    """Whether the current work belongs to a request the sampler dropped (``Sampled``): the
    instrumentations step aside then."""
    return otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY) is True


def _note_trace_id(span: trace.Span, scope: dict[str, Any]) -> None:
    context = span.get_span_context()
    if context.is_valid:
        request_context.set_trace_id(format(context.trace_id, "032x"))


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None outside any (tracing off)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


# Tortoise's SQLite client methods that send a statement; each takes the SQL first.
_SQLITE_METHODS = (
    "execute_insert",
    "execute_many",
    "execute_query",
    "execute_query_dict",
    "execute_script",
)


def _trace_sqlite(tracer: trace.Tracer) -> Callable[[], None]:
    """Wraps Tortoise's SQLite client so that each statement gets a span (a ``CLIENT`` span
    with the database semantic conventions' ``db.system.name`` and ``db.query.text``, as the
    asyncpg instrumentation gives on PostgreSQL); returns what undoes it."""
    from tortoise.backends.sqlite.client import SqliteClient, SqliteTransactionWrapper

    originals: dict[tuple[type[Any], str], Any] = {
        (SqliteClient, name): SqliteClient.__dict__[name] for name in _SQLITE_METHODS
    }
    # A transaction's client has its own (the others it inherits).
    originals[SqliteTransactionWrapper, "execute_many"] = SqliteTransactionWrapper.execute_many

    def traced(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def statement(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if unsampled():
                return await method(self, query, *args, **kwargs)
            operation = query.lstrip().split(None, 1)[0].upper() if query.strip() else "SQL"
            with tracer.start_as_current_span(
                operation,
                kind=trace.SpanKind.CLIENT,
                attributes={"db.system.name": "sqlite", "db.query.text": query},
            ):
                return await method(self, query, *args, **kwargs)

        return statement

    for (owner, name), method in originals.items():
        setattr(owner, name, traced(method))

    def undo() -> None:
        for (owner, name), method in originals.items():
            setattr(owner, name, method)

    return undo
