"""Prometheus metrics: what the server does, for the people who run it (``GET /metrics``).

The counters, gauges and histograms are prometheus-client's. The services and transports
record through the small functions below (``task_created``, ``session_finished``...), so
the metric names and labels live in this module only.

- **Several uvicorn worker processes:** start them with ``PROMETHEUS_MULTIPROC_DIR`` set
  to an empty directory (prometheus-client's multiprocess mode). Each process then keeps
  its values in files there, and a scrape of any process sums them; live gauges count
  only processes that are alive (``livesum``).
- **Several replicas:** each exposes its own process-local metrics (the scraper labels them
  by instance). The gauges read from the database — jobs queued by the reason they wait,
  the oldest queued job's age, workers by status, pending TTY questions — are the same on
  every replica: ``DatabaseGauges`` reads them with one bounded statement per scrape,
  cached for a second, and a collector made for the scrape serves them.

Names follow Prometheus conventions in the ``delidev_`` namespace; the RPC and HTTP
durations follow the OpenTelemetry semantic conventions (``rpc.server.call.duration``,
``http.server.request.duration``) as the OpenTelemetry Prometheus exporter names them.
Every label takes values from a closed set (codes, kinds, statuses, known routes) or is
bounded here (GraphQL operation names), so no client can grow the series without bound.

Hand-written: the snapshot of the database gauges (no library reads our tables) and the
bounding of labels. The Connect interceptor and the GraphQL extension that time calls
record into the histograms here: connectrpc-otel and Strawberry's OpenTelemetry extension
report through the OpenTelemetry SDK, whose Prometheus exporter cannot sum several
processes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from tortoise import connections

from delidev import db_outage

log = logging.getLogger(__name__)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DatabaseGauges",
    "exposition",
]

# Seconds: a queued job waits from milliseconds (an idle fleet) to hours (a busy one); a
# call takes from a millisecond to a long poll's 30 s.
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

TASKS_CREATED = Counter(
    "delidev_tasks_created_total", "Tasks created, by kind (unit or composite).", ["kind"]
)
AUTO_FIX_QUEUED = Counter(
    "delidev_auto_fix_runs_queued_total",
    "Auto-fix runs queued on a unit task's pull request, by trigger (review_comments or"
    " check_failed).",
    ["trigger"],
)
SESSIONS_FINISHED = Counter(
    "delidev_sessions_finished_total",
    "Agent runs (sessions) that ended, by job kind and outcome.",
    ["kind", "outcome"],
)
QUEUED_TO_ASSIGNED = Histogram(
    "delidev_job_queued_to_assigned_seconds",
    "Time from a job being queued to a worker claiming it.",
    buckets=_WAIT_BUCKETS,
)
REASSIGNMENTS = Counter(
    "delidev_job_reassignments_total",
    "Jobs taken back from a lost worker and queued again.",
)
LOG_BYTES = Counter("delidev_log_bytes_ingested_total", "Bytes of agent output stored (UTF-8).")
LIVE_FOLLOWERS = Gauge(
    "delidev_live_log_followers",
    "Live log followers attached now (Connect StreamLog and GraphQL sessionLog).",
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS_OPEN = Gauge(
    "delidev_graphql_subscriptions_open",
    "GraphQL operations running over WebSocket now, by protocol.",
    ["protocol"],
    multiprocess_mode="livesum",
)
RPC_DURATION = Histogram(
    "rpc_server_call_duration_seconds",
    "Duration of Connect calls handled (OpenTelemetry rpc.server.call.duration).",
    ["rpc_system", "rpc_service", "rpc_method", "rpc_response_status_code"],
    buckets=_CALL_BUCKETS,
)
GRAPHQL_DURATION = Histogram(
    "delidev_graphql_operation_duration_seconds",
    "Duration of GraphQL queries and mutations over HTTP, by operation type, name and"
    " outcome (subscriptions are counted open in delidev_graphql_subscriptions_open).",
    ["operation_type", "operation_name", "outcome"],
    buckets=_CALL_BUCKETS,
)
HTTP_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP requests (OpenTelemetry http.server.request.duration).",
    ["http_request_method", "http_route", "http_response_status_code"],
    buckets=_CALL_BUCKETS,
)

USAGE_TOKENS = Counter(
    "delidev_usage_tokens_total",
    "Tokens runs reported using, by agent type, model and kind (input, output, cache_read,"
    " cache_write).",
    ["agent_type", "model", "kind"],
)
USAGE_COST = Counter(
    "delidev_usage_cost_usd_total",
    "Money runs reported spending (USD), by agent type and model.",
    ["agent_type", "model"],
)
# Model names come from workers: at most this many distinct ones get a label of their own
# per process, the rest are counted as "other", so no worker can grow the series unbounded.
MAX_MODEL_LABELS = 50
_MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@-]{1,64}")
_models_seen: set[str] = set()


# -- recording (called by the services and transports) ----------------------------------------


def model_label(model: str) -> str:
    """``model`` as a label value: itself while few models were seen, else ``other``."""
    if not _MODEL_NAME.fullmatch(model):
        return "other"
    if model in _models_seen:
        return model
    if len(_models_seen) >= MAX_MODEL_LABELS:
        return "other"
    _models_seen.add(model)
    return model


def usage_reported(agent_type: str, model: str, tokens: dict[str, int], cost_micros: int) -> None:
    label = model_label(model)
    for kind, count in tokens.items():
        if count > 0:
            USAGE_TOKENS.labels(agent_type=agent_type, model=label, kind=kind).inc(count)
    if cost_micros > 0:
        USAGE_COST.labels(agent_type=agent_type, model=label).inc(cost_micros / 1_000_000)


WEBHOOK_DELIVERIES = Counter(
    "delidev_webhook_deliveries_total",
    "Webhook deliveries received, by provider, event (known ones; others are 'other') and"
    " outcome (processed, ignored, duplicate, or why it was refused).",
    ["provider", "event", "outcome"],
)
_WEBHOOK_PROVIDERS = frozenset({"github", "gitlab"})
_WEBHOOK_EVENTS = frozenset(
    {
        "ping",
        "issues",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "check_run",
        "check_suite",
        "Issue Hook",
        "Confidential Issue Hook",
        "Merge Request Hook",
        "Note Hook",
        "Confidential Note Hook",
        "Pipeline Hook",
    }
)
_WEBHOOK_OUTCOMES = frozenset(
    {
        "processed",
        "ignored",
        "duplicate",
        "not_found",
        "unauthenticated",
        "invalid",
        "unsupported_media_type",
        "too_large",
        "error",
    }
)


def webhook_delivery(provider: str, event: str | None, outcome: str) -> None:
    """Counts a delivery; labels outside their closed sets are 'other'."""
    WEBHOOK_DELIVERIES.labels(
        provider=provider if provider in _WEBHOOK_PROVIDERS else "other",
        event=event if event in _WEBHOOK_EVENTS else "other",
        outcome=outcome if outcome in _WEBHOOK_OUTCOMES else "other",
    ).inc()


def task_created(kind: str, count: int = 1) -> None:
    if count > 0:
        TASKS_CREATED.labels(kind=kind).inc(count)


def auto_fix_queued(trigger: str) -> None:
    AUTO_FIX_QUEUED.labels(trigger=trigger).inc()


def session_finished(kind: str, outcome: str, count: int = 1) -> None:
    if count > 0:
        SESSIONS_FINISHED.labels(kind=kind, outcome=outcome).inc(count)


def job_claimed(queued_at: dt.datetime | None, claimed_at: dt.datetime) -> None:
    if queued_at is not None:
        QUEUED_TO_ASSIGNED.observe(max(0.0, (claimed_at - queued_at).total_seconds()))


def jobs_reassigned(count: int) -> None:
    if count > 0:
        REASSIGNMENTS.inc(count)


def log_ingested(text_bytes: int) -> None:
    if text_bytes > 0:
        LOG_BYTES.inc(text_bytes)


def follower_attached() -> None:
    LIVE_FOLLOWERS.inc()


def follower_detached() -> None:
    LIVE_FOLLOWERS.dec()


def subscription_opened(protocol: str) -> None:
    SUBSCRIPTIONS_OPEN.labels(protocol=protocol).inc()


def subscription_closed(protocol: str) -> None:
    SUBSCRIPTIONS_OPEN.labels(protocol=protocol).dec()


# Label children by their label values: ``labels()`` costs several microseconds a call, a
# dict lookup a fraction of one (the keys come from closed sets, so the caches are bounded).
_rpc_series: dict[tuple[str, str, str], Any] = {}
_http_series: dict[tuple[str, str, int], Any] = {}


def rpc_call(service: str, method: str, code: str, seconds: float) -> None:
    key = (service, method, code)
    series = _rpc_series.get(key)
    if series is None:
        series = _rpc_series[key] = RPC_DURATION.labels(
            rpc_system="connect_rpc", rpc_service=service, rpc_method=method,
            rpc_response_status_code=code,
        )  # fmt: skip
    series.observe(seconds)


# GraphQL operation names come from clients: kept only when short and plain, and at most
# this many distinct ones per process (later ones are counted as "other"). A name takes one
# of these places only from an operation that succeeded for an authenticated caller: an
# anonymous client (multi-user mode) or failing documents cannot take them all before the
# dashboards' own operations are seen.
_MAX_OPERATION_NAMES = 200
_OPERATION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_operation_names: set[str] = set()
_OPERATION_TYPES = frozenset({"query", "mutation", "subscription"})


def operation_label(name: object, *, may_add: bool = True) -> str:
    """A bounded label for a client-chosen operation name (whatever the client sent); a name
    not seen before is "other" unless ``may_add`` (and places are left)."""
    if name is None or name == "":
        return "anonymous"
    if not isinstance(name, str):
        return "other"
    if name in _operation_names:
        return name
    if not may_add or len(_operation_names) >= _MAX_OPERATION_NAMES:
        return "other"
    if not _OPERATION_NAME.fullmatch(name):
        return "other"
    _operation_names.add(name)
    return name


def graphql_operation(
    operation_type: str, name: str | None, ok: bool, seconds: float, *, authenticated: bool
) -> None:
    """Times one operation; ``authenticated``: a caller was authenticated for it."""
    kind = operation_type if operation_type in _OPERATION_TYPES else "unknown"
    GRAPHQL_DURATION.labels(
        operation_type=kind, operation_name=operation_label(name, may_add=ok and authenticated),
        outcome="ok" if ok else "error",
    ).observe(seconds)  # fmt: skip


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in _HTTP_METHODS else "_OTHER"
    key = (method, route, status)
    series = _http_series.get(key)
    if series is None:
        series = _http_series[key] = HTTP_DURATION.labels(
            http_request_method=method, http_route=route, http_response_status_code=str(status)
        )
    series.observe(seconds)


# -- gauges read from the database ------------------------------------------------------------

# One statement, bounded: each branch is a grouped count over an indexed status, so the
# rows returned are a handful (reasons, statuses), whatever the queue's length.
_SNAPSHOT = """
SELECT 'job' AS family, COALESCE(wait_reason, 'queued') AS label, COUNT(*) AS n,
       MIN(created_at) AS oldest
FROM agent_sessions WHERE status = 'queued' GROUP BY COALESCE(wait_reason, 'queued')
UNION ALL
SELECT 'worker', status, COUNT(*), NULL FROM workers GROUP BY status
UNION ALL
SELECT 'draining', 'draining', COUNT(*), NULL FROM workers WHERE draining
UNION ALL
SELECT 'tty', 'pending', COUNT(*), NULL FROM tty_input_requests WHERE status = 'pending'
"""
_WORKER_STATUSES = ("idle", "busy", "unhealthy")


@dataclass
class _Snapshot:
    queued: dict[str, int] = field(default_factory=dict)
    oldest: dt.datetime | None = None
    workers: dict[str, int] = field(default_factory=dict)
    draining: int = 0
    tty_pending: int = 0
    taken_at: float = 0.0


def _as_time(value: object) -> dt.datetime | None:
    if value is None:
        return None
    # SQLite returns the stored text.
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# How long a scrape waits for the database's gauges (Prometheus's own default timeout is
# 10 s): past it the scrape says ``delidev_database_up 0`` and serves the rest.
GAUGES_TIMEOUT_S = 5.0


class DatabaseGauges:
    """The gauges that come from the database, read at most once per ``max_age`` seconds
    (concurrent scrapes share one read)."""

    def __init__(self, max_age: float = 1.0, timeout: float = GAUGES_TIMEOUT_S) -> None:
        self.max_age = max_age
        self._snapshot: _Snapshot | None = None
        # A scrape must not hang on a database that does not answer (the rest is served).
        self._probe: db_outage.Probe[list[dict[str, Any]]] = db_outage.Probe(timeout)

    async def read(self) -> _Snapshot:
        """Raises: TimeoutError (no answer within the timeout), or the driver's error.
        Concurrent scrapes share the pending read (the probe's), each waiting at most the
        timeout: no lock is held while the database is asked."""
        known = self._snapshot
        if known is not None and time.monotonic() - known.taken_at < self.max_age:
            return known
        rows = await self._probe.run(
            lambda: connections.get("default").execute_query_dict(_SNAPSHOT)
        )
        snapshot = _Snapshot(taken_at=time.monotonic())
        for row in rows:
            family, label, count = row["family"], str(row["label"]), int(row["n"])
            if family == "job":
                snapshot.queued[label] = count
                oldest = _as_time(row["oldest"])
                if oldest is not None and (snapshot.oldest is None or oldest < snapshot.oldest):
                    snapshot.oldest = oldest
            elif family == "worker":
                snapshot.workers[label] = count
            elif family == "draining":
                snapshot.draining = count
            elif family == "tty":
                snapshot.tty_pending = count
        self._snapshot = snapshot
        return snapshot


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: _Snapshot, reasons: Iterable[str], now: dt.datetime) -> None:
        self._snapshot = snapshot
        self._reasons = tuple(reasons)
        self._now = now

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        queued = GaugeMetricFamily(
            "delidev_jobs_queued", "Jobs queued now, by the reason they wait.", labels=["reason"]
        )
        for reason in sorted({*self._reasons, *snap.queued}):
            queued.add_metric([reason], snap.queued.get(reason, 0))
        yield queued
        age = 0.0 if snap.oldest is None else (self._now - snap.oldest).total_seconds()
        yield GaugeMetricFamily(
            "delidev_oldest_queued_job_age_seconds",
            "Age of the oldest queued job (0 when none is queued).",
            value=max(0.0, age),
        )
        workers = GaugeMetricFamily(
            "delidev_workers", "Registered workers, by status.", labels=["status"]
        )
        for status in sorted({*_WORKER_STATUSES, *snap.workers}):
            workers.add_metric([status], snap.workers.get(status, 0))
        yield workers
        yield GaugeMetricFamily(
            "delidev_workers_draining", "Workers marked draining.", value=snap.draining
        )
        yield GaugeMetricFamily(
            "delidev_tty_requests_pending",
            "TTY questions from agents waiting for an answer.",
            value=snap.tty_pending,
        )


def process_exiting() -> None:
    """In multiprocess mode, this process's live gauges stop counting (uvicorn has no hook
    for it, so each worker process says so as its app shuts down)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _process_registry() -> CollectorRegistry:
    """This process's metrics, or (multiprocess mode) every live process's, summed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


async def exposition(gauges: DatabaseGauges, reasons: Iterable[str]) -> bytes:
    """The Prometheus text of every metric: the process's (or processes') and the database
    gauges (``reasons``: every wait reason, so each appears even at zero). With the database
    unreachable, the rest is served and ``delidev_database_up`` says 0."""
    registry = CollectorRegistry(auto_describe=False)
    try:
        snapshot = await gauges.read()
    except Exception as error:
        # The driver's text may name the host: only the kind of failure is logged.
        log.warning("metrics: the database gauges could not be read (%s)", type(error).__name__)
        up = 0
    else:
        registry.register(_SnapshotCollector(snapshot, reasons, dt.datetime.now(dt.UTC)))
        up = 1
    registry.register(
        _Constant("delidev_database_up", "1 when the last scrape read the database.", up)
    )
    return generate_latest(_process_registry()) + generate_latest(registry)


class _Constant(Collector):
    def __init__(self, name: str, documentation: str, value: float) -> None:
        self._family = GaugeMetricFamily(name, documentation, value=value)

    def collect(self) -> Iterator[Metric]:
        yield self._family
