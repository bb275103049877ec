"""Tracing (issue 12): spans received by the SDK's in-memory exporter, and their parentage from a
client's ``traceparent`` through the HTTP request, the Connect call and the database statements;
the GraphQL operation; a background pass; the trace a job carries to the worker that claims it
(and the reference worker continuing it); and nothing at all when no ``OTEL_*`` is set."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import events, tracing, worker_sim
from delidev import models as m
from delidev.app import create_app
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.settings import Settings
from tests.conftest import BACKEND
from tests.factories import make_group, make_repository, make_workspace

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
CONNECT_JSON = {"content-type": "application/json", "traceparent": TRACEPARENT}

# The process's global provider: only the reference worker (which uses the OTel API, as a
# worker program would) reports to it, and an app without tracing must not.
GLOBAL_SPANS = InMemorySpanExporter()
_global = TracerProvider()
_global.add_span_processor(SimpleSpanProcessor(GLOBAL_SPANS))
trace.set_tracer_provider(_global)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(spans: InMemorySpanExporter) -> Iterator[tracing.Tracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    setup = tracing.Tracing(provider)
    # The lifespan does this in a server; the test fixtures open the database themselves.
    setup.trace_database(postgres=BACKEND == "postgres")
    yield setup
    setup.shutdown()


@pytest.fixture
async def traced_app(settings: Settings, database: Any, traced: tracing.Tracing) -> Any:
    app = create_app(settings, traced)
    token = events.bind(app.state.events)
    yield app
    events.unbind(token)


@pytest.fixture
async def http(traced_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=traced_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
async def group_id(database: Any) -> str:
    ws = await make_workspace()
    return str((await make_group(ws, [await make_repository(ws)])).id)


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


def _parent(span: ReadableSpan) -> str | None:
    return None if span.parent is None else _hex(span.parent.span_id)


def _one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, f"{what}: {[s.name for s in found]}"
    return found[0]


def _under(span: ReadableSpan, ancestor: ReadableSpan, every: list[ReadableSpan]) -> bool:
    """Whether ``ancestor`` is ``span``'s parent, grandparent..."""
    by_id = {_hex(s.context.span_id): s for s in every}
    parent = _parent(span)
    while parent is not None:
        if parent == _hex(ancestor.context.span_id):
            return True
        above = by_id.get(parent)
        parent = None if above is None else _parent(above)
    return False


def _statements(every: list[ReadableSpan]) -> list[ReadableSpan]:
    return [
        s for s in every if any(k in (s.attributes or {}) for k in ("db.system", "db.system.name"))
    ]


async def _create_unit(http: httpx.AsyncClient, group_id: str) -> None:
    answer = await http.post(
        "/delidev.v1.TaskService/CreateUnit",
        json={"repositoryGroupId": group_id, "prompt": "Do it"},
        headers=CONNECT_JSON,
    )
    assert answer.status_code == 200, answer.text


async def test_client_trace_continues_through_http_connect_and_database(
    http: httpx.AsyncClient, spans: InMemorySpanExporter, group_id: str
) -> None:
    spans.clear()  # the statements that made the group
    await _create_unit(http, group_id)
    every = list(spans.get_finished_spans())
    assert {format(s.context.trace_id, "032x") for s in every} == {TRACE_ID}
    server = _one([s for s in every if s.kind == trace.SpanKind.SERVER and s.parent and
                   s.parent.is_remote], "HTTP server span")  # fmt: skip
    assert _parent(server) == CLIENT_SPAN
    assert server.name == "POST /delidev.v1.TaskService/{method}"  # never the raw path
    call = _one([s for s in every if s.name == "delidev.v1.TaskService/CreateUnit"], "Connect")
    assert _parent(call) == _hex(server.context.span_id)
    assert (call.attributes or {})["rpc.method"] == "delidev.v1.TaskService/CreateUnit"
    statements = _statements(every)
    assert statements, "no database statement span"
    assert all(_under(s, call, every) for s in statements)
    assert any("INSERT" in str((s.attributes or {}).get("db.query.text", s.name)) or
               s.name.startswith("INSERT") for s in statements)  # fmt: skip


async def test_a_failed_call_has_its_code_on_the_span(
    http: httpx.AsyncClient, spans: InMemorySpanExporter, database: Any
) -> None:
    answer = await http.post(
        "/delidev.v1.TaskService/Get", json={"taskId": "nope"}, headers=CONNECT_JSON
    )
    assert answer.status_code != 200
    call = _one(
        [s for s in spans.get_finished_spans() if s.name == "delidev.v1.TaskService/Get"], "call"
    )
    assert (call.attributes or {})["rpc.response.status_code"] == answer.json()["code"]


async def test_graphql_operation_span(
    http: httpx.AsyncClient, spans: InMemorySpanExporter, database: Any
) -> None:
    spans.clear()  # the test set-up's statements
    answer = await http.post(
        "/graphql",
        json={"query": "query Names { workspaces { totalCount } }"},
        headers={"traceparent": TRACEPARENT},
    )
    assert answer.status_code == 200, answer.text
    assert "errors" not in answer.json()
    every = list(spans.get_finished_spans())
    server = _one([s for s in every if _parent(s) == CLIENT_SPAN], "HTTP server span")
    operation = _one([s for s in every if s.name.startswith("GraphQL Query")], "operation")
    assert _parent(operation) == _hex(server.context.span_id)
    statements = _statements(every)
    assert statements
    assert all(_under(s, operation, every) for s in statements)


async def test_background_pass_is_a_span_over_its_statements(
    traced_app: Any, spans: InMemorySpanExporter
) -> None:
    spans.clear()  # the test set-up's statements
    await traced_app.state.sweeper.sweep()
    every = list(spans.get_finished_spans())
    sweep = _one([s for s in every if s.name == "delidev.sweep"], "sweep")
    assert sweep.parent is None
    statements = _statements(every)
    assert statements
    assert all(_under(s, sweep, every) for s in statements)

    await traced_app.state.reconciler.reconcile(set())
    names = [s.name for s in spans.get_finished_spans()]
    assert "delidev.reconcile_waits" in names


async def test_a_claimed_job_carries_the_trace_of_the_request_that_queued_it(
    http: httpx.AsyncClient, traced_app: Any, spans: InMemorySpanExporter, group_id: str
) -> None:
    spans.clear()  # the statements that made the group
    await _create_unit(http, group_id)
    queued_in = {_hex(s.context.span_id) for s in spans.get_finished_spans()}
    spans.clear()
    GLOBAL_SPANS.clear()

    client = WorkerServiceClient(
        "http://test", http_client=Client(ASGITransport(traced_app, http_version=HTTPVersion.HTTP1))
    )
    options = worker_sim.Options(server="http://test", lines=1, lines_per_second=0.0,
                                 chunk_interval=0.0, wait_ms=50)  # fmt: skip
    sim = worker_sim.SimWorker(options, client)
    try:
        await sim.register()
        job = await sim.claim()
        assert job is not None
        version, trace_id, parent, flags = job.traceparent.split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert parent in queued_in  # a span of the CreateUnit request's handling

        await sim.run_job(job)  # the reference worker continues that trace
        run = _one(
            [s for s in GLOBAL_SPANS.get_finished_spans() if s.name.endswith("run_job")], "run"
        )
        assert format(run.context.trace_id, "032x") == TRACE_ID
        assert _parent(run) == parent
        assert sim.stats.succeeded == 1
    finally:
        await sim.close()


async def test_without_otel_variables_nothing_is_installed(
    settings: Settings, database: Any, group_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    app = create_app(settings)
    GLOBAL_SPANS.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        await _create_unit(http, group_id)
        answer = await http.post("/graphql", json={"query": "{ workspaces { totalCount } }"})
        assert answer.status_code == 200
    await app.state.sweeper.sweep()
    assert GLOBAL_SPANS.get_finished_spans() == ()
    layer = app.build_middleware_stack()
    while layer is not None:
        assert not isinstance(layer, OpenTelemetryMiddleware)
        layer = getattr(layer, "app", None)


async def test_a_request_the_sampler_drops_records_nothing_but_propagates(
    settings: Settings, database: Any, group_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    setup = tracing.Tracing(provider)
    setup.trace_database(postgres=BACKEND == "postgres")
    try:
        app = create_app(settings, setup)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            with caplog.at_level(logging.INFO, logger="delidev.access"):
                await _create_unit(http, group_id)
                answer = await http.post(
                    "/graphql",
                    json={"query": "{ workspaces { totalCount } }"},
                    headers={"traceparent": TRACEPARENT},
                )
                assert answer.status_code == 200
        assert spans.get_finished_spans() == ()
        logged = [getattr(r, "trace_id", None) for r in caplog.records]
        assert logged == [TRACE_ID, TRACE_ID]
        (run,) = await m.AgentSession.all()
        assert run.traceparent is not None
        version, trace_id, span_id, flags = run.traceparent.split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "00")  # not sampled, same trace
        assert span_id != CLIENT_SPAN
    finally:
        setup.shutdown()


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_on_only_when_otel_variables_ask(environ: dict[str, str], on: bool) -> None:
    setup = tracing.from_environ(environ)
    assert (setup is not None) == on
    if setup is not None:
        setup.shutdown()


def test_service_name_and_sampler_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    setup = tracing.from_environ({"OTEL_TRACES_EXPORTER": "console"})
    assert setup is not None
    assert setup.provider.resource.attributes["service.name"] == "delidev-server"
    setup.shutdown()

    monkeypatch.setenv("OTEL_SERVICE_NAME", "hub-eu")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    setup = tracing.from_environ({"OTEL_TRACES_EXPORTER": "console"})
    assert setup is not None
    assert setup.provider.resource.attributes["service.name"] == "hub-eu"
    assert setup.provider.sampler is ALWAYS_OFF
    setup.shutdown()


def test_an_unavailable_exporter_or_protocol_fails_at_start() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        tracing.from_environ({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="grpc"):
        tracing.from_environ(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )


async def test_log_lines_carry_the_trace_id_of_the_request_span(
    http: httpx.AsyncClient, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="delidev.access"):
        await http.get("/graphql?query=%7B__typename%7D", headers={"traceparent": TRACEPARENT})
        await http.get("/graphql?query=%7B__typename%7D")  # no traceparent: a trace of its own
    logged = [getattr(r, "trace_id", None) for r in caplog.records if r.name == "delidev.access"]
    servers = [s for s in spans.get_finished_spans() if s.name == "GET /graphql"]
    assert logged == [format(s.context.trace_id, "032x") for s in servers]
    assert logged[0] == TRACE_ID
    assert logged[1] not in (None, TRACE_ID)


@pytest.mark.parametrize(
    ("scope", "name"),
    [
        ({"type": "http", "method": "POST", "path": "/delidev.v1.TaskService/Get"},
         "POST /delidev.v1.TaskService/{method}"),
        ({"type": "http", "method": "POST", "path": "/delidev.v1.NoSuch/Get"}, "POST"),
        ({"type": "http", "method": "GET", "path": "/" + "x" * 5000}, "GET"),
        ({"type": "http", "method": "GET", "path": "/graphql"}, "GET /graphql"),
        ({"type": "websocket", "path": "/graphql"}, "WEBSOCKET /graphql"),
    ],
)  # fmt: skip
def test_request_spans_are_named_from_a_closed_set(scope: dict[str, Any], name: str) -> None:
    assert tracing._span_details(scope)[0] == name
