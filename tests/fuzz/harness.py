"""What every fuzz test shares: the world it attacks, the checks on each answer, the budget.

- ``World``: rows created through the API before the run. The *protected* rows are never named
  to the fuzzer (single-user mode) or belong to another user (multi-user mode, where the fuzzer
  is also handed their ids); their snapshot, read through the API, must not change. The
  *playground* rows belong to the fuzzer's principal, and their ids are among the values it
  tries, so inputs reach the services and not only the id parser.
- ``Checker``: one answer (HTTP status, body, the log lines written meanwhile) against the
  rules: no 5xx, no traceback, file path, SQL or secret, bounded error messages, no log line
  at ERROR or with a traceback, no forged (multi-line) or unbounded log line.
- ``run_examples``: runs one Hypothesis property in a worker thread, each example's request
  on the event loop (generation stays off the loop, so the loop watchdog measures only the
  server), and returns the failure report instead of raising, so one run lists every method
  that fails.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from hypothesis import HealthCheck, Phase, given
from hypothesis import example as hypothesis_example
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.loop_watchdog import Watchdog

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXAMPLES_PER_TARGET = int(os.environ.get("DELIDEV_FUZZ_EXAMPLES", "16"))
"""Inputs per Connect method and codec (and per GraphQL operation kind, times ``GRAPHQL_SCALE``);
the whole suite stays within a few minutes per database on two cores. Raise it to explore."""
GRAPHQL_SCALE = 8
SHRINK = os.environ.get("DELIDEV_FUZZ_SHRINK", "") == "1"
MAX_ERROR_BODY = 4096
"""An error answer longer than this echoes request values unbounded."""
MAX_LOG_LINE = 2048

SECRET_VALUE = "fz-secret-7Qd9LmX2pRt5VwZ8"
JWT_SECRET = "Zq8Xw3Nv6Tb1Lm4Pr7Hs0Jc5Kd2Gf9Ya"
OIDC_CLIENT_SECRET = "oc-Wm5Rt8Yq2Lp7Zx4Nv1"
REGISTRATION_TOKEN = "rg-Tk3Hq9Bv6Mx2Cw8Ps5"

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s+File \"", re.MULTILINE)
FILE_PATH = re.compile(r"(/[\w.-]+)+\.py\b|site-packages|/work/|/usr/lib/python")
SQL = re.compile(
    r"\bSELECT\b.+\bFROM\b|\bINSERT INTO\b|\bUPDATE\b.+\bSET\b|\bDELETE FROM\b|"
    r"sqlite3\.|asyncpg\.|tortoise\.|IntegrityError|OperationalError|syntax error at or near",
    re.IGNORECASE | re.DOTALL,
)

TRANSPORT_ARTIFACTS = (anyio.ClosedResourceError,)
"""Raised into the app only by the in-process WebSocket transport (httpx-ws closes its
queues when the test closes the socket while the server still sends); a real server sees
a disconnect instead."""

COUNTS: Counter[str] = Counter()
"""Inputs sent per kind over the whole session (printed at the end: the lead needs it)."""
_COUNTS_LOCK = threading.Lock()


def count(kind: str, n: int = 1) -> None:
    with _COUNTS_LOCK:
        COUNTS[kind] += n


def budget(max_examples: int) -> hypothesis_settings:
    """``fuzz_settings`` with another number of inputs."""
    return hypothesis_settings(fuzz_settings(), max_examples=max_examples)


def fuzz_settings() -> hypothesis_settings:
    """Bounded, reproducible: ``derandomize`` in CI (``CI=true``); ``--hypothesis-seed``
    explores locally. No deadline (the machine is noisy) and no example database, so a run
    depends only on the code and the seed."""
    return hypothesis_settings(
        max_examples=EXAMPLES_PER_TARGET,
        derandomize=IN_CI,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=True,
    )


class Finding(AssertionError):
    """One rule broken by one input."""


_KINDS: dict[str, type[Finding]] = {}


def finding(kind: str, message: str) -> Finding:
    """A ``Finding`` of a class of its own per ``kind``: Hypothesis tells bugs apart by
    exception type and line, so each kind of failure is shrunk and reported on its own
    instead of the first one hiding the rest."""
    kind = re.sub(r"\W+", "_", kind)[:80]
    if kind not in _KINDS:
        _KINDS[kind] = type(f"Finding_{kind}", (Finding,), {})
    return _KINDS[kind](message)


@dataclass
class Secrets:
    values: set[str] = field(default_factory=set)

    def add(self, *values: str | None) -> None:
        self.values.update(v for v in values if v and len(v) >= 8)


class LogTap(logging.Handler):
    """Every log record of the app at INFO and above, while installed."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        taken, self.records = self.records, []
        return taken

    @contextmanager
    def installed(self) -> Iterator[LogTap]:
        root = logging.getLogger()
        level = root.level
        root.addHandler(self)
        root.setLevel(logging.INFO)
        try:
            yield self
        finally:
            root.removeHandler(self)
            root.setLevel(level)


@dataclass
class Checker:
    secrets: Secrets
    logs: LogTap
    watchdog: Watchdog
    allowed_5xx: frozenset[str] = frozenset()

    def begin(self) -> None:
        """Forgets what earlier inputs left behind (their findings are reported already)."""
        self.logs.take()
        self.watchdog.take()

    def answer(self, what: str, status: int, body: bytes) -> None:
        """Raises ``Finding`` for the first rule the answer breaks (each from its own line,
        so Hypothesis shrinks and reports each kind of failure separately)."""
        text = body.decode("utf-8", "replace")
        code = _error_code(text)
        if status >= 500 and code not in self.allowed_5xx:
            raise finding(
                f"http-{status}-{code}", f"{what}: HTTP {status} {code or ''}: {_clip(text)}"
            )
        if TRACEBACK.search(text):
            raise finding("traceback", f"{what}: traceback in the answer: {_clip(text)}")
        if FILE_PATH.search(text):
            raise finding("path", f"{what}: file path in the answer: {_clip(text)}")
        if status >= 400 and SQL.search(text):
            raise finding("sql", f"{what}: SQL or database error text in the answer: {_clip(text)}")
        for secret in self.secrets.values:
            if secret in text:
                raise finding("secret", f"{what}: a secret ({secret[:4]}…) in the answer")
        if status >= 400 and len(body) > MAX_ERROR_BODY:
            raise finding(
                "long-error", f"{what}: error answer of {len(body)} bytes echoes the input"
            )
        self.server_side(what)

    def server_side(self, what: str) -> None:
        """The log lines written and the loop stalls seen since the last check."""
        for record in self.logs.take():
            if record.exc_info and isinstance(record.exc_info[1], TRANSPORT_ARTIFACTS):
                continue
            line = self.logs.format(record)
            message = record.getMessage()
            if record.exc_info or record.levelno >= logging.ERROR:
                raise finding(
                    f"log-{record.levelname}-{record.name}-{_origin(record)}",
                    f"{what}: logged {record.levelname} {_clip(line, 600)}",
                )
            if "\n" in message or "\r" in message:
                raise finding(
                    "log-multiline", f"{what}: multi-line (forgeable) log line {_clip(line)}"
                )
            if len(message) > MAX_LOG_LINE:
                raise finding(
                    "log-long", f"{what}: log line of {len(message)} characters (unbounded)"
                )
            for secret in self.secrets.values:
                if secret in line:
                    raise finding("log-secret", f"{what}: a secret ({secret[:4]}…) in a log line")
        stalls = self.watchdog.take()
        if stalls:
            raise finding("loop-stall", f"{what}: {stalls[0]}")


def _origin(record: logging.LogRecord) -> str:
    """Where the logged exception was raised (file and line), to tell failures apart."""
    if not record.exc_info or record.exc_info[2] is None:
        return ""
    last = traceback.extract_tb(record.exc_info[2])[-1]
    return f"{type(record.exc_info[1]).__name__}-{Path(last.filename).name}-{last.lineno}"


def raised(what: str, exc: BaseException) -> Finding:
    """The app raised through the in-process transport (a real server answers 500)."""
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f"{Path(last.filename).name}:{last.lineno}" if last else ""
    return finding(
        f"raised-{type(exc).__name__}-{where}",
        f"{what}: the app raised {type(exc).__name__} at {where}: {_clip(str(exc))}",
    )


def _error_code(text: str) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return ""
    if isinstance(payload, dict) and isinstance(payload.get("code"), str):
        return str(payload["code"])
    return ""


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def show(value: Any, limit: int = 200) -> str:
    """An input, short enough for a report."""
    return _clip(repr(value), limit)


async def run_examples(
    name: str,
    strategy: st.SearchStrategy[Any],
    send: Callable[[Any], Coroutine[Any, Any, None]],
    settings: hypothesis_settings | None = None,
    explicit: Sequence[Any] = (),
) -> str | None:
    """Runs ``send`` on Hypothesis examples of ``strategy`` (after the ``explicit`` ones);
    the failure report or None.

    By default every example of the budget runs and each kind of finding is reported once,
    with the shortest input that showed it: Hypothesis stops generating soon after a first
    failure, and on code with several bugs the first would hide the others. With
    ``DELIDEV_FUZZ_SHRINK=1`` a finding fails the example instead, and Hypothesis shrinks it
    to a minimal input (to study one failure)."""
    loop = asyncio.get_running_loop()
    found: dict[str, tuple[int, str]] = {}

    def example(value: Any) -> None:
        try:
            asyncio.run_coroutine_threadsafe(send(value), loop).result()
        except Finding as exc:
            if SHRINK:
                raise
            kind = type(exc).__name__
            size = len(repr(value))
            if kind not in found or size < found[kind][0]:
                found[kind] = (size, f"{kind}: {_clip(str(exc), 800)}")

    prop = given(strategy)(example)
    for value in reversed(explicit):
        prop = hypothesis_example(value)(prop)
    prop = (settings or fuzz_settings())(prop)

    def run() -> str | None:
        try:
            prop()
        except BaseException as exc:  # the report of a failing property is the result
            return f"{name}: {_describe(exc)}"
        if found:
            return f"{name}:\n" + "\n".join(f"  {report}" for _, report in found.values())
        return None

    return await asyncio.to_thread(run)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join(_describe(e) for e in exc.exceptions)
    notes = [n for n in getattr(exc, "__notes__", []) if "Falsifying" in n or "value=" in n]
    if not isinstance(exc, Finding):  # a fault of the suite itself: show where
        notes += traceback.format_tb(exc.__traceback__)[-2:]
    return f"{type(exc).__name__}: {_clip(str(exc), 800)}" + "".join(
        f"\n    {_clip(n, 800)}" for n in notes
    )


# The world ----------------------------------------------------------------------------


@dataclass
class Principal:
    headers: dict[str, str]


@dataclass
class Rows:
    workspace: str = ""
    repository: str = ""
    group: str = ""
    todo: str = ""
    tasks: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [self.workspace, self.repository, self.group, self.todo, *self.tasks, *self.sessions]


_names = itertools.count(1)


class Api:
    """Connect JSON calls (the world's own set-up and snapshots, not fuzz inputs)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __call__(
        self, method: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        response = await self.http.post(
            f"/delidev.v1.{method}",
            content=json.dumps(body),
            headers={"content-type": "application/json", **(headers or {})},
        )
        assert response.status_code == 200, f"{method}: {response.status_code} {response.text}"
        result: dict[str, Any] = response.json()
        return result


async def seed(
    api: Api,
    owner: Principal,
    *,
    worker_headers: dict[str, str],
    secrets: Secrets,
    finish: bool,
) -> Rows:
    """A workspace with a repository, a group, a todo, a unit and a composite task whose
    sessions a worker claimed (and, with ``finish``, completed, so their logs end)."""
    h = owner.headers
    n = next(_names)
    rows = Rows()
    rows.workspace = (await api("WorkspaceService/Create", {"name": f"fz-ws-{n}"}, h))["workspace"][
        "id"
    ]
    rows.repository = (
        await api(
            "RepositoryService/Add",
            {"workspaceId": rows.workspace, "remoteUrl": f"https://github.com/fz/r{n}.git"},
            h,
        )
    )["repository"]["id"]
    rows.group = (
        await api(
            "RepositoryGroupService/Create",
            {"workspaceId": rows.workspace, "repositoryIds": [rows.repository], "name": f"g{n}"},
            h,
        )
    )["group"]["id"]
    rows.todo = (
        await api(
            "TodoService/Create",
            {
                "repositoryId": rows.repository,
                "issueTriage": {
                    "issueUrl": f"https://github.com/fz/r{n}/issues/1",
                    "issueTitle": "fuzz",
                },
            },
            h,
        )
    )["item"]["id"]
    unit = await api(
        "TaskService/CreateUnit", {"repositoryGroupId": rows.group, "prompt": "fuzz me"}, h
    )
    composite = await api(
        "TaskService/CreateComposite", {"repositoryGroupId": rows.group, "prompt": "plan me"}, h
    )
    rows.tasks = [unit["task"]["unitTask"]["id"], composite["task"]["compositeTask"]["id"]]
    for task in rows.tasks:
        await api(
            "SecretsService/Send", {"taskId": task, "secrets": {"FUZZ_TOKEN": SECRET_VALUE}}, h
        )
    registered = await api(
        "WorkerService/Register",
        {"name": f"fz-worker-{n}", "endpointUrl": "http://127.0.0.1:9"},
        worker_headers,
    )
    worker = {**worker_headers}
    if registered.get("credential"):
        worker["authorization"] = f"Bearer {registered['credential']}"
        secrets.add(registered["credential"])
    for _ in rows.tasks:
        job = (
            await api(
                "WorkerService/GetTask", {"workerId": registered["workerId"], "waitMs": 0}, worker
            )
        )["job"]
        lease = {
            "workerId": registered["workerId"],
            "sessionId": job["sessionId"],
            "leaseToken": job["leaseToken"],
        }
        secrets.add(job["leaseToken"])
        rows.sessions.append(job["sessionId"])
        await api(
            "WorkerService/AppendLog",
            {**lease, "chunks": [{"sequence": 0, "data": f"log of {n}: {SECRET_VALUE} end\n"}]},
            worker,
        )
        if finish:
            done = (
                {
                    "status": "AGENT_SESSION_STATUS_FAILED",
                    "error": "fuzz: no plan",
                    "failureKind": "FAILURE_KIND_OTHER",
                }
                if job.get("kind") == "JOB_KIND_PLANNING"
                else {"status": "AGENT_SESSION_STATUS_SUCCEEDED"}
            )
            await api("WorkerService/ReportStatus", {**lease, **done}, worker)
    return rows


async def snapshot(api: Api, owner: Principal, rows: Rows) -> dict[str, Any]:
    """Everything the API shows about ``rows`` (compared before and after a run)."""
    h = owner.headers
    shot: dict[str, Any] = {
        "workspace": await api("WorkspaceService/Get", {"workspaceId": rows.workspace}, h),
        "repositories": await api("RepositoryService/List", {"workspaceId": rows.workspace}, h),
        "groups": await api("RepositoryGroupService/List", {"workspaceId": rows.workspace}, h),
        "todos": await api("TodoService/List", {"workspaceId": rows.workspace}, h),
        "tasks": await api("TaskService/List", {"workspaceId": rows.workspace}, h),
    }
    for task in rows.tasks:
        shot[f"task {task}"] = await api("TaskService/Get", {"taskId": task}, h)
    for session in rows.sessions:
        shot[f"session {session}"] = await api("SessionService/Get", {"sessionId": session}, h)
        shot[f"log {session}"] = await api("SessionService/GetLog", {"sessionId": session}, h)
    return shot


def fresh_id() -> str:
    return str(uuid.uuid4())
