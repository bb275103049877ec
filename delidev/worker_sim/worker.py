"""One simulated worker: registration, heartbeats, its Watch stream with the long-poll
fallback, and running a job to its report.

Tracing goes through the OpenTelemetry API only: with no SDK installed (``delidev.worker_sim.cli``
installs one when ``OTEL_*`` asks for it) every span is a no-op. A job's run is a span that
continues the trace of the request that queued the job (``Job.traceparent``), and the calls
made during it carry that trace to the server (``connectrpc-otel``'s client interceptor)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc_otel import OpenTelemetryInterceptor
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from protobuf import Oneof

from delidev.connect.gen.delidev.v1 import common_pb, session_pb, task_pb, worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.worker_sim.options import (
    TRANSIENT,
    UNICODE_LINE,
    Options,
    S,
    Stats,
    T,
    directives,
    log,
    plan_yaml,
)
from delidev.worker_sim.usage import Meter, Spent, default_model

_tracer = trace.get_tracer(__name__)  # the API's proxy: the SDK's tracer once one is installed


class Stopped(Exception):
    """The server asked this worker to stop the job it runs."""


class JobLost(Exception):
    """A call about the job was refused (the lease is gone) or kept failing: drop the job."""

    def __init__(self, what: str, reason: str, *, refused: bool) -> None:
        super().__init__(f"{what}: {reason}")
        self.refused = refused


# The questions ``[sim:tty=<kind>]`` asks: input type, prompt, options.
TTY_QUESTIONS: dict[str, tuple[session_pb.TtyInputType, str, list[str]]] = {
    "text": (session_pb.TtyInputType.TEXT, "Which branch should I use?", []),
    "password": (session_pb.TtyInputType.PASSWORD, "Passphrase of the deploy key?", []),
    "select": (session_pb.TtyInputType.SELECT, "Which database?", ["sqlite", "postgres"]),
    "confirm": (session_pb.TtyInputType.CONFIRM, "Push the branch?", []),
}


def _transient(error: Exception) -> bool:
    return not isinstance(error, ConnectError) or error.code in TRANSIENT


def _describe(error: Exception) -> str:
    return error.code.name if isinstance(error, ConnectError) else type(error).__name__


class SimWorker:
    def __init__(self, options: Options, client: WorkerServiceClient | None = None) -> None:
        self.o = options
        self.client = client or WorkerServiceClient(
            options.server.rstrip("/"),
            timeout_ms=60_000,
            interceptors=(OpenTelemetryInterceptor(client=True),),
        )
        self.stats = Stats()
        self.worker_id = ""
        self._credential = ""
        self._interval = 30.0
        self._stop_requested: set[str] = set()
        self._closing = asyncio.Event()
        self._failures = 0  # transient failures in a row, for the back-off
        self._pushed: asyncio.Queue[worker_pb.Job] = asyncio.Queue()
        self._stream_up = asyncio.Event()
        # Set once the first Watch answers or fails: until then no GetTask poll competes with
        # the stream for the worker's first jobs.
        self._stream_settled = asyncio.Event()
        self._seen: set[str] = set()  # sessions taken (a job may be told twice)
        self.draining = False
        self._failure_kinds: dict[str, worker_pb.FailureKind] = {}

    def _headers(self) -> Mapping[str, str]:
        token = self._credential or self.o.registration_token
        return {"authorization": f"Bearer {token}"} if token else {}

    async def register(self) -> None:
        reply = await self.client.register(
            worker_pb.RegisterWorkerRequest(
                name=self.o.name,
                endpoint_url=self.o.endpoint_url,
                agent_types=list(self.o.agent_types),
                labels=list(self.o.labels),
            ),
            headers=self._headers(),
        )
        self.worker_id, self._credential = reply.worker_id, reply.credential
        self._interval = max(reply.heartbeat_interval_ms / 1000, 0.01)
        log.info("%s registered as %s", self.o.name, self.worker_id)

    async def _heartbeats(self, current: dict[str, str]) -> None:
        while not self._closing.is_set():
            try:
                status = worker_pb.WorkerStatus.BUSY if current else worker_pb.WorkerStatus.IDLE
                reply = await self.client.heartbeat(
                    worker_pb.HeartbeatRequest(
                        worker_id=self.worker_id, status=status, session_id=current.get("session")
                    ),
                    headers=self._headers(),
                )
                self._stop_requested.update(reply.stop_session_ids)
                self._drained(reply.draining)
                self._interval = max(reply.heartbeat_interval_ms / 1000, 0.01)
            except ConnectError as e:
                log.warning("heartbeat refused: %s", e.code.name)
            except Exception as e:  # the server may be restarting: keep beating
                log.warning("heartbeat failed: %s", type(e).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._interval)

    async def run(self) -> Stats:
        """Claims and runs jobs until ``stop``, ``max_jobs`` or ``idle_exit``.

        Only the first registration can fail it: after that a refused call ends its job and
        a failing one is retried with back-off.
        """
        await self.register()
        current: dict[str, str] = {}
        beats = asyncio.create_task(self._heartbeats(current))
        stream = None if self.o.poll else asyncio.create_task(self._watch())
        if stream is not None:  # the stream opens with a keep-alive: wait for it, briefly
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stream_settled.wait(), self.o.wait_ms / 1000)
        idle_since = time.monotonic()
        try:
            while not self._closing.is_set():
                if self.o.max_jobs and len(self.stats.sessions) >= self.o.max_jobs:
                    break
                job = await self.next_job()
                if job is None:
                    if self.o.idle_exit and time.monotonic() - idle_since >= self.o.idle_exit:
                        break
                    continue
                current["session"] = job.session_id
                try:
                    await self.run_job(job)
                finally:
                    current.clear()
                idle_since = time.monotonic()
        finally:
            self._closing.set()
            if stream is not None:
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream
            await beats
        return self.stats

    def _drained(self, draining: bool) -> None:
        """Drained: finish the job in hand, then leave (a fleet deploy drains old workers)."""
        if draining and not self.draining:
            log.info("%s is drained: leaving after its job", self.o.name)
            self._closing.set()
        self.draining = draining

    async def next_job(self) -> worker_pb.Job | None:
        """A job pushed on the Watch stream, or (with ``--poll``, or while the stream is
        down) one claimed by long polling GetTask; None when none came within ``wait_ms``."""
        while True:
            polled = self.o.poll or not self._stream_up.is_set()
            if polled:
                job = await self.claim()
            else:
                try:
                    job = await asyncio.wait_for(self._pushed.get(), self.o.wait_ms / 1000)
                except TimeoutError:
                    return None
            if job is None:
                return None
            if job.session_id not in self._seen:  # not one the other way brought already
                self._seen.add(job.session_id)
                if polled:
                    self.stats.polled += 1
                else:
                    self.stats.pushed += 1
                return job

    async def _watch(self) -> None:
        """Keeps a Watch stream open; reconnects with back-off after a failure (jobs are
        claimed by long polling until it is back)."""
        failures = 0
        while not self._closing.is_set():
            try:
                stream = self.client.watch(
                    worker_pb.WatchRequest(worker_id=self.worker_id),
                    headers=self._headers(),
                    timeout_ms=self.o.stream_timeout_ms,
                )
                async for message in stream:
                    self._stream_up.set()
                    self._stream_settled.set()
                    failures = 0
                    match message.event:
                        case Oneof(field="job_assigned", value=worker_pb.Job() as job):
                            self._pushed.put_nowait(job)
                        case Oneof(field="stop_session", value=worker_pb.StopSession() as stop):
                            self._stop_requested.add(stop.session_id)
                        case Oneof(field="drain", value=worker_pb.DrainChanged() as drain):
                            self._drained(drain.draining)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._stream_up.clear()
                self._stream_settled.set()
                if isinstance(e, ConnectError) and e.code == Code.DEADLINE_EXCEEDED:
                    continue  # the stream's own timeout: renew it at once
                failures = min(failures + 1, 30)
                log.warning("%s: watch stream failed: %s", self.o.name, _describe(e))
                delay = min(self.o.retry_max, self.o.retry_base * 2**failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay * random.uniform(0.5, 1.0))
            else:
                self._stream_up.clear()
                self._stream_settled.set()

    async def claim(self) -> worker_pb.Job | None:
        """The next job, or None (none came within ``wait_ms``, or the call failed and the
        back-off is over). A server that no longer knows this worker gets it registered anew."""
        try:
            claimed = await self.client.get_task(
                worker_pb.ClaimJobRequest(worker_id=self.worker_id, wait_ms=self.o.wait_ms),
                headers=self._headers(),
            )
        except Exception as e:
            self.stats.errors += 1
            log.warning("%s: claiming failed: %s", self.o.name, _describe(e))
            await self._back_off()
            if isinstance(e, ConnectError) and e.code in (Code.NOT_FOUND, Code.UNAUTHENTICATED):
                with contextlib.suppress(Exception):
                    await self.register()
            return None
        self._failures = 0
        return claimed.job

    async def _back_off(self) -> None:
        """Waits before the next try: doubling from ``retry_base`` up to ``retry_max``, with
        jitter so that a fleet does not come back in step."""
        delay = min(self.o.retry_max, self.o.retry_base * 2**self._failures)
        self._failures = min(self._failures + 1, 30)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay * random.uniform(0.5, 1.0))

    async def _job_call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One call about a job: transient errors are retried (with back-off) a few times;
        a refusal, or errors that do not pass, raise JobLost."""
        for attempt in range(1, self.o.job_call_attempts + 1):
            try:
                result = await call()
            except Exception as e:
                if not _transient(e):
                    raise JobLost(what, _describe(e), refused=True) from None
                self.stats.errors += 1
                if attempt == self.o.job_call_attempts:
                    raise JobLost(what, _describe(e), refused=False) from None
                log.warning("%s: %s failed (%s), retrying", self.o.name, what, _describe(e))
                await self._back_off()
            else:
                self._failures = 0
                return result
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Finish the current job, then leave."""
        self._closing.set()

    async def close(self, *, unregister: bool = True) -> None:
        self._closing.set()
        if unregister and self.worker_id:
            with contextlib.suppress(Exception):
                await self.client.unregister(
                    worker_pb.UnregisterWorkerRequest(worker_id=self.worker_id),
                    headers=self._headers(),
                )
        await self.client.close()

    def _check_stop(self, job: worker_pb.Job) -> None:
        if job.session_id in self._stop_requested:
            raise Stopped

    async def run_job(self, job: worker_pb.Job) -> None:
        """Runs one job to its report. A job the server took away ends here: it is logged
        and counted, and the worker goes back to claiming."""
        self.stats.sessions.append(job.session_id)
        with _tracer.start_as_current_span(
            "delidev.worker_sim.run_job",
            context=TraceContextTextMapPropagator().extract({"traceparent": job.traceparent}),
            kind=trace.SpanKind.CONSUMER,
            attributes={"delidev.session_id": job.session_id, "delidev.attempt": job.attempt},
        ):
            await self._run_job(job)

    async def _run_job(self, job: worker_pb.Job) -> None:
        try:
            status, error, plan = await self._work(job)
            await self.report(job, status, error=error, plan=plan)
        except JobLost as lost:
            log.warning("%s: job %s ended: %s", self.o.name, job.session_id, lost)
            if lost.refused:
                self.stats.refused += 1
                return
            self.stats.abandoned += 1
            await self._give_up(job, str(lost))

    async def _give_up(self, job: worker_pb.Job, reason: str) -> None:
        """Reports the job failed, trying again with back-off while the server cannot be
        reached (its database may be down for a while), until the report lands, is refused
        or the worker closes. The job is ours on the server until then: given up silently,
        it would stay running there, on a worker that no longer runs it, until its time
        limit (a Watch stream tells a job once)."""
        request = worker_pb.ReportStatusRequest(
            worker_id=self.worker_id,
            session_id=job.session_id,
            lease_token=job.lease_token,
            status=S.FAILED,
            error=f"the worker gave up after errors talking to the server ({reason})",
            failure_kind=worker_pb.FailureKind.OTHER,
        )
        while True:
            try:
                await self.client.report_status(request, headers=self._headers())
            except Exception as e:
                if not _transient(e) or self._closing.is_set():
                    return
                self.stats.errors += 1
                await self._back_off()
            else:
                self._failures = 0
                return

    async def _work(self, job: worker_pb.Job) -> tuple[int, str | None, str | None]:
        """Does the job; returns the status, error and plan to report. Raises: JobLost."""
        rules = directives(job.prompt)
        secrets: dict[str, str] = {}
        if job.has_secrets:
            got = await self._job_call(
                "GetSecrets",
                lambda: self.client.get_secrets(
                    worker_pb.GetSecretsRequest(
                        worker_id=self.worker_id,
                        session_id=job.session_id,
                        lease_token=job.lease_token,
                    ),
                    headers=self._headers(),
                ),
            )
            secrets = dict(got.secrets)
        out = _Output(self, job, self._meter(job, rules.get("usage")))
        status, error, plan = S.SUCCEEDED, None, None
        try:
            await out.write(f"[sim] {self.o.name} starts attempt {job.attempt}\n")
            await out.write(f"[sim] received {len(secrets)} secret(s)\n")
            if "echo-secrets" in rules:
                for key, value in secrets.items():
                    await out.write(f"{key}={value}\n")
            count = int(rules.get("lines") or self.o.lines)
            pause = 1 / self.o.lines_per_second if self.o.lines_per_second > 0 else 0.0
            flavour = UNICODE_LINE if "unicode" in rules else ""
            for i in range(count):
                self._check_stop(job)
                text = f"line {i + 1} of {count}: working on {job.session_id}{flavour}"
                if "ansi" in rules:  # as agents colour their output: a green mark, a bold red one
                    text = f"\x1b[32mok\x1b[0m {text} \x1b[1;31mwarn\x1b[0m"
                await out.write(f"{text}\n")
                if pause:
                    await asyncio.sleep(pause)
            if "tty" in rules:
                answer = await self.ask(job, out, kind=rules["tty"] or "text")
                await out.write(f"[sim] got an answer of {len(answer or '')} characters\n")
            hang = "hang-first" in rules and job.attempt == 1
            await out.report_usage()  # what it used before it waits counts even if it dies
            deadline = time.monotonic() + (float("inf") if hang else float(rules.get("sleep") or 0))
            while time.monotonic() < deadline:
                self._check_stop(job)
                await asyncio.sleep(min(0.05, self._interval))
            self._check_stop(job)
            if job.kind == task_pb.JobKind.PLANNING:
                plan = self.o.plan_text or plan_yaml(int(rules.get("plan") or self.o.plan_tasks))
            elif "oom" in rules:
                status, error = S.FAILED, "the simulated agent's container ran out of memory"
                self._failure_kinds[job.session_id] = worker_pb.FailureKind.OUT_OF_MEMORY
            elif "fail" in rules or random.random() < self.o.fail_rate:
                status, error = S.FAILED, "the simulated agent exited with status 1"
        except Stopped:
            status = S.STOPPED
            await out.write("[sim] stopped on request\n")
        await out.pause()
        return status, error, plan

    def _meter(self, job: worker_pb.Job, directive: str | None) -> Meter | None:
        """How this job reports usage (None: it does not): ``--usage`` options, or the
        job's ``[sim:usage]``, ``[sim:usage=N]`` (every N lines), ``[sim:usage=off]``."""
        every = self.o.usage_every
        if directive == "off" or (directive is None and not self.o.usage):
            return None
        if directive:
            every = int(directive)
        agent_type = common_pb.AiAgentType(job.ai_agent_type).name.lower()
        model = self.o.usage_model or job.ai_agent_model or default_model(agent_type)
        return Meter(
            session_id=job.session_id,
            model=model,
            agent_type=agent_type,
            prompt=job.prompt,
            every=every,
        )

    async def report_usage(self, job: worker_pb.Job, meter: Meter) -> None:
        """Reports what the run used since its last report, if anything. A retry sends the
        same report (the same id): the server counts it once. Raises: JobLost."""
        report = meter.next_report()
        if report is None:
            return
        spent = report.spent
        request = worker_pb.ReportUsageRequest(
            worker_id=self.worker_id,
            session_id=job.session_id,
            lease_token=job.lease_token,
            report_id=report.report_id,
            model=report.model,
            input_tokens=spent.input_tokens,
            output_tokens=spent.output_tokens,
            cache_read_tokens=spent.cache_read_tokens,
            cache_write_tokens=spent.cache_write_tokens,
            cost_micros=spent.cost_micros,
        )
        await self._job_call(
            "ReportUsage", lambda: self.client.report_usage(request, headers=self._headers())
        )
        self.stats.usage[job.session_id] = self.stats.usage.get(job.session_id, Spent()) + spent

    async def ask(self, job: worker_pb.Job, out: _Output, *, kind: str = "text") -> str | None:
        """Asks the question ``kind`` names (text, password, select or confirm) and waits
        for its answer."""
        await out.pause()
        input_type, prompt, options = TTY_QUESTIONS.get(kind, TTY_QUESTIONS["text"])
        asked = await self._job_call(
            "RequestTtyInput",
            lambda: self.client.request_tty_input(
                worker_pb.RequestTtyInputRequest(
                    worker_id=self.worker_id,
                    session_id=job.session_id,
                    lease_token=job.lease_token,
                    prompt=prompt,
                    input_type=input_type,
                    options=options,
                ),
                headers=self._headers(),
            ),
        )
        if asked.request is None:
            return None
        request_id = asked.request.id
        while True:
            self._check_stop(job)
            waited = await self._job_call(
                "WaitTtyInput",
                lambda: self.client.wait_tty_input(
                    worker_pb.WaitTtyInputRequest(
                        worker_id=self.worker_id,
                        session_id=job.session_id,
                        lease_token=job.lease_token,
                        request_id=request_id,
                        wait_ms=min(self.o.tty_answer_wait_ms, 1_000),
                    ),
                    headers=self._headers(),
                ),
            )
            if waited.request is None or waited.request.status != session_pb.TtyInputStatus.PENDING:
                return waited.response

    async def report(
        self, job: worker_pb.Job, status: int, *, error: str | None, plan: str | None
    ) -> None:
        """Raises: JobLost (the report was refused, or kept failing)."""
        await self._job_call(
            "ReportStatus",
            lambda: self.client.report_status(
                worker_pb.ReportStatusRequest(
                    worker_id=self.worker_id,
                    session_id=job.session_id,
                    lease_token=job.lease_token,
                    status=status,  # type: ignore[arg-type]
                    error=error,
                    plan_yaml=plan,
                    failure_kind=self._failure_kinds.pop(job.session_id, None),
                ),
                headers=self._headers(),
            ),
        )
        if status == S.SUCCEEDED:
            self.stats.succeeded += 1
        elif status == S.FAILED:
            self.stats.failed += 1
        else:
            self.stats.stopped += 1


class _Output:
    """Buffers output and ships it in numbered chunks every ``chunk_interval`` seconds;
    with usage on, reports usage every so many lines."""

    def __init__(self, worker: SimWorker, job: worker_pb.Job, meter: Meter | None) -> None:
        self.w, self.job, self.meter = worker, job, meter
        self.buffer: list[str] = []
        self.sequence = 0
        self.last_flush = time.monotonic()

    async def write(self, text: str) -> None:
        self.buffer.append(text)
        self.w.stats.lines += text.count("\n")
        if time.monotonic() - self.last_flush >= self.w.o.chunk_interval:
            await self.flush()
        if self.meter is not None:
            self.meter.wrote(text)
            if self.meter.due:
                await self.w.report_usage(self.job, self.meter)

    async def pause(self) -> None:
        """Before the run waits for an answer or ends: ships the output and reports the
        usage so far."""
        await self.flush()
        await self.report_usage()

    async def report_usage(self) -> None:
        if self.meter is not None:
            await self.w.report_usage(self.job, self.meter)

    async def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        data, self.buffer = "".join(self.buffer), []
        chunk = worker_pb.LogChunk(sequence=self.sequence, data=data)
        self.sequence += 1
        # A retry sends the same sequence number: the server stores a chunk once.
        await self.w._job_call(
            "AppendLog",
            lambda: self.w.client.append_log(
                worker_pb.AppendLogRequest(
                    worker_id=self.w.worker_id,
                    session_id=self.job.session_id,
                    lease_token=self.job.lease_token,
                    chunks=[chunk],
                ),
                headers=self.w._headers(),
            ),
        )
