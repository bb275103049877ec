"""WorkerService: the whole world of a worker server. Thin: services/workers/ holds the rules.

Credentials: in multi-user mode Register needs the registration token from settings and
every other call the per-worker credential (``Authorization: Bearer …``); in single-user
mode auth is off, but lease checks hold everywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from connectrpc.request import RequestContext

from delidev import events, request_context
from delidev import models as m
from delidev.auth.authenticator import bearer_token
from delidev.connect import convert
from delidev.connect.gen.delidev.v1 import worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerService
from delidev.errors import Internal, InvalidArgument
from delidev.services import secrets as secrets_service
from delidev.services import sessions, usage, workers
from delidev.services.common import now as current_time
from delidev.services.common import parse_id, parse_optional_id
from delidev.services.scheduling.policy import RetryPolicy
from delidev.services.workers import push
from delidev.settings import Settings

Ctx = RequestContext[Any, Any]


def _bearer(ctx: Ctx) -> str:
    """The credential (or registration token) the call carries; empty without one, which
    the service refuses in multi-user mode and ignores in single-user mode."""
    return bearer_token(ctx.request_headers.get("authorization")) or ""


class WorkerHandler(WorkerService):
    def __init__(
        self,
        settings: Settings,
        signal: workers.JobSignal,
        store: secrets_service.SecretStore,
        closing: asyncio.Event | None = None,
    ) -> None:
        self._settings = settings
        self._closing = closing or asyncio.Event()
        self._policy = RetryPolicy.from_settings(settings)
        self._signal = signal
        self._store = store
        self._interval_ms = settings.heartbeat_interval_ms
        self._log_limits = sessions.LogLimits.of(settings)

    async def _worker(self, worker_id: str, ctx: Ctx, *, check: bool = True) -> UUID:
        """The calling worker's id. In single-user mode there is no credential to check;
        with ``check`` the worker must exist (methods that look it up anyway skip that)."""
        wid = parse_id(worker_id, "worker_id")
        await workers.authenticate_caller(
            settings=self._settings, worker_id=wid, credential=_bearer(ctx), must_exist=check
        )
        request_context.set_worker(wid)  # for the log
        return wid

    async def register(
        self, request: worker_pb.RegisterWorkerRequest, ctx: Ctx
    ) -> worker_pb.RegisterWorkerResponse:
        workers.admit_registration(settings=self._settings, token=_bearer(ctx))
        types = [convert.AGENT_TYPE.to_domain(t, "agent_types") for t in request.agent_types]
        if None in types:
            raise InvalidArgument(
                "agent_types must not hold AI_AGENT_TYPE_UNSPECIFIED", field="agent_types"
            )
        reg = await workers.register_worker(
            name=request.name,
            endpoint_url=request.endpoint_url,
            agent_types=[t for t in types if t is not None],
            labels=list(request.labels),
        )
        return worker_pb.RegisterWorkerResponse(
            worker_id=str(reg.worker.id),
            credential=reg.credential,
            heartbeat_interval_ms=self._interval_ms,
            worker=convert.worker_message(reg.worker),
        )

    async def heartbeat(
        self, request: worker_pb.HeartbeatRequest, ctx: Ctx
    ) -> worker_pb.HeartbeatResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        # The status a worker states is not used: the server derives it from the job it holds.
        reply = await workers.heartbeat(
            worker_id=wid,
            session_id=parse_optional_id(
                request.session_id if request.has_field("session_id") else None, "session_id"
            ),
            task_id=parse_optional_id(
                request.current_task_id if request.has_field("current_task_id") else None,
                "current_task_id",
            ),
        )
        return worker_pb.HeartbeatResponse(
            stop_session_ids=[str(s) for s in reply.stop_session_ids],
            heartbeat_interval_ms=self._interval_ms,
            status=convert.WORKER_STATUS.to_proto(reply.worker.status),
            draining=reply.worker.draining,
        )

    async def unregister(
        self, request: worker_pb.UnregisterWorkerRequest, ctx: Ctx
    ) -> worker_pb.UnregisterWorkerResponse:
        wid = await self._worker(request.worker_id, ctx)
        await workers.unregister_worker(worker_id=wid, policy=self._policy)
        return worker_pb.UnregisterWorkerResponse()

    async def get_task(
        self, request: worker_pb.ClaimJobRequest, ctx: Ctx
    ) -> worker_pb.ClaimJobResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        job = await workers.claim_job(
            worker_id=wid,
            wait=dt.timedelta(milliseconds=request.wait_ms),
            signal=self._signal,
            store=self._store,
            max_run_seconds=self._settings.max_run_seconds,
            closing=self._closing,
        )
        return worker_pb.ClaimJobResponse(job=None if job is None else convert.job_message(job))

    async def drain(
        self, request: worker_pb.DrainWorkerRequest, ctx: Ctx
    ) -> worker_pb.DrainWorkerResponse:
        wid = parse_id(request.worker_id, "worker_id")
        await workers.authenticate_drain(
            settings=self._settings, worker_id=wid, credential=_bearer(ctx)
        )
        worker = await workers.set_draining(worker_id=wid, draining=request.draining)
        return worker_pb.DrainWorkerResponse(worker=convert.worker_message(worker))

    async def watch(
        self, request: worker_pb.WatchRequest, ctx: Ctx
    ) -> AsyncIterator[worker_pb.WatchResponse]:
        wid = await self._worker(request.worker_id, ctx)
        bus = events.current()
        if bus is None:  # every request of the app has one bound (app.BindEvents)
            raise Internal("no event bus for the Watch stream")
        # The stream opens with a keep-alive: the worker learns at once that it is heard and
        # stops long polling (it would otherwise claim by GetTask until the first news).
        yield convert.watch_message(push.KeepAlive(server_time=current_time()))
        async for pushed in push.watch_worker(
            worker_id=wid,
            bus=bus,
            signal=self._signal,
            claim=push.default_claim(self._store, self._settings.max_run_seconds),
            keepalive=dt.timedelta(milliseconds=self._settings.watch_keepalive_ms),
            closing=self._closing,
        ):
            yield convert.watch_message(pushed)

    async def report_status(
        self, request: worker_pb.ReportStatusRequest, ctx: Ctx
    ) -> worker_pb.ReportStatusResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        status = convert.SESSION_STATUS.to_domain(request.status, "status")
        if status is None:
            raise InvalidArgument("status is required", field="status")
        session = await workers.report_status(
            worker_id=wid,
            session_id=parse_id(request.session_id, "session_id"),
            lease_token=request.lease_token,
            status=status,
            error=request.error if request.has_field("error") else None,
            failure_kind=convert.FAILURE_KIND.to_domain(request.failure_kind, "failure_kind"),
            plan_yaml=request.plan_yaml if request.has_field("plan_yaml") else None,
            base_commit=request.base_commit if request.has_field("base_commit") else None,
            end_commit=request.end_commit if request.has_field("end_commit") else None,
            store=self._store,
            policy=self._policy,
        )
        return worker_pb.ReportStatusResponse(session=convert.agent_session(session))

    async def append_log(
        self, request: worker_pb.AppendLogRequest, ctx: Ctx
    ) -> worker_pb.AppendLogResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        session = await workers.append_job_log(
            worker_id=wid,
            session_id=parse_id(request.session_id, "session_id"),
            lease_token=request.lease_token,
            chunks=[sessions.LogChunkIn(sequence=c.sequence, data=c.data) for c in request.chunks],
            store=self._store,
            limits=self._log_limits,
        )
        return worker_pb.AppendLogResponse(
            next_sequence=session.log_next_sequence, log_size=session.log_size
        )

    async def report_usage(
        self, request: worker_pb.ReportUsageRequest, ctx: Ctx
    ) -> worker_pb.ReportUsageResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        counted, so_far = await usage.record_usage(
            worker_id=wid,
            session_id=parse_id(request.session_id, "session_id"),
            lease_token=request.lease_token,
            report=usage.UsageReport(
                report_id=request.report_id,
                model=request.model,
                input_tokens=request.input_tokens,
                output_tokens=request.output_tokens,
                cache_read_tokens=request.cache_read_tokens,
                cache_write_tokens=request.cache_write_tokens,
                cost_micros=request.cost_micros,
            ),
        )
        return worker_pb.ReportUsageResponse(counted=counted, session_usage=convert.usage(so_far))

    async def get_secrets(
        self, request: worker_pb.GetSecretsRequest, ctx: Ctx
    ) -> worker_pb.GetSecretsResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        values = await workers.get_job_secrets(
            worker_id=wid,
            session_id=parse_id(request.session_id, "session_id"),
            lease_token=request.lease_token,
            store=self._store,
        )
        return worker_pb.GetSecretsResponse(secrets=values)

    async def request_tty_input(
        self, request: worker_pb.RequestTtyInputRequest, ctx: Ctx
    ) -> worker_pb.RequestTtyInputResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        kind = convert.TTY_TYPE.to_domain(request.input_type, "input_type")
        if kind is None:
            raise InvalidArgument("input_type is required", field="input_type")
        created = await workers.ask_tty_input(
            worker_id=wid,
            session_id=parse_id(request.session_id, "session_id"),
            lease_token=request.lease_token,
            prompt=request.prompt,
            input_type=kind,
            options=list(request.options),
            expires_in=workers.tty_expiry(settings=self._settings, timeout_ms=request.timeout_ms),
            store=self._store,
        )
        return worker_pb.RequestTtyInputResponse(request=convert.tty_request(created))

    async def wait_tty_input(
        self, request: worker_pb.WaitTtyInputRequest, ctx: Ctx
    ) -> worker_pb.WaitTtyInputResponse:
        wid = await self._worker(request.worker_id, ctx, check=False)
        question = await workers.wait_tty_answer(
            worker_id=wid,
            session_id=parse_id(request.session_id, "session_id"),
            lease_token=request.lease_token,
            request_id=parse_id(request.request_id, "request_id"),
            wait=dt.timedelta(milliseconds=request.wait_ms),
        )
        return worker_pb.WaitTtyInputResponse(
            request=convert.tty_request(question),
            response=question.response if question.status == m.TtyInputStatus.RESPONDED else None,
        )
