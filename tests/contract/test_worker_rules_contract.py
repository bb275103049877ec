"""Rules of sign-in and of the worker protocol that once lived in the Connect handlers only,
now in the service layer (services/auth.py, services/workers.py) so any transport gets them:
each is checked at the service (what any transport calls) and on the wire (JSON, binary)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import auth_pb, session_pb, worker_pb
from delidev.connect.gen.delidev.v1.auth_connect import AuthServiceClient
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from delidev.services import auth, tasks, workers
from delidev.settings import Settings
from tests.clients import connect_codecs
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")
MULTI = {
    "database_url": "sqlite://unused",
    "single_user_mode": False,
    "jwt_secret": "Xq7pL2vR9mK4sT8wN3bF6hJ1cD5gZ0yA",
    "oidc_issuer_url": "https://id",
    "oidc_client_id": "c",
    "oidc_client_secret": "s",
}


@dataclass
class Wire:
    workers: WorkerServiceClient
    auth: AuthServiceClient


def _wire(app: Any, codec: str) -> Wire:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    c = connect_codecs()[codec]
    return Wire(
        workers=WorkerServiceClient("http://test", http_client=http, codec=c),
        auth=AuthServiceClient("http://test", http_client=http, codec=c),
    )


@pytest.fixture(params=["json", "binary"])
async def wire(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Wire]:
    w = _wire(app, request.param)
    yield w
    await w.workers.close()
    await w.auth.close()


async def _refused(call: Any) -> ConnectError:
    with pytest.raises(ConnectError) as info:
        await call
    return info.value


# Sign-in in single-user mode --------------------------------------------------------------


async def test_sign_in_is_refused_in_single_user_mode(wire: Wire, settings: Settings) -> None:
    with pytest.raises(FailedPrecondition):
        auth.ensure_sign_in_enabled(settings=settings)
    auth.ensure_sign_in_enabled(settings=Settings(**MULTI))  # type: ignore[arg-type]
    for call in (
        wire.auth.get_login_url(auth_pb.GetLoginUrlRequest(redirect_uri="http://x/cb")),
        wire.auth.handle_callback(auth_pb.HandleCallbackRequest(code="c", state="s")),
    ):
        error = await _refused(call)
        assert error.code == Code.FAILED_PRECONDITION
        assert "single-user mode" in error.message


# Worker registration and credentials ------------------------------------------------------


@pytest.mark.parametrize("codec", ["json", "binary"])
async def test_registration_is_closed_without_a_configured_token(codec: str) -> None:
    settings = Settings(**MULTI)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="DELIDEV_WORKER_REGISTRATION_TOKEN"):
        workers.admit_registration(settings=settings, token="anything")
    w = _wire(create_app(settings), codec)
    request = worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:2")
    error = await _refused(w.workers.register(request, headers={"authorization": "Bearer x"}))
    assert error.code == Code.UNAUTHENTICATED
    assert "DELIDEV_WORKER_REGISTRATION_TOKEN" in error.message
    assert await m.Worker.all().count() == 0
    await w.workers.close()


async def test_registration_token_and_worker_credential_rules_at_the_service() -> None:
    settings = Settings(**MULTI, worker_registration_token="reg")  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        workers.admit_registration(settings=settings, token="")
    with pytest.raises(Unauthenticated):
        workers.admit_registration(settings=settings, token="re")
    workers.admit_registration(settings=settings, token="reg")
    workers.admit_registration(settings=Settings(database_url="sqlite://unused"), token="")
    reg = await workers.register_worker(name="w", endpoint_url="http://127.0.0.1:2")
    wid = reg.worker.id
    with pytest.raises(Unauthenticated, match="credential"):
        await workers.authenticate_caller(settings=settings, worker_id=wid, credential="")
    with pytest.raises(Unauthenticated):
        await workers.authenticate_caller(settings=settings, worker_id=wid, credential="reg")
    await workers.authenticate_caller(settings=settings, worker_id=wid, credential=reg.credential)


async def test_single_user_mode_checks_only_that_the_worker_exists(
    wire: Wire, settings: Settings
) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound):
        await workers.authenticate_caller(settings=settings, worker_id=missing, credential="")
    await workers.authenticate_caller(
        settings=settings, worker_id=missing, credential="", must_exist=False
    )
    request = worker_pb.UnregisterWorkerRequest(worker_id=str(missing))
    assert (await _refused(wire.workers.unregister(request))).code == Code.NOT_FOUND


# TTY timeout default and negative waits ---------------------------------------------------


async def _leased(wire: Wire) -> tuple[str, worker_pb.Job]:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    reg = await wire.workers.register(
        worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:2")
    )
    job = (await wire.workers.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))).job
    assert job is not None
    return reg.worker_id, job


def _ask(worker_id: str, job: worker_pb.Job, timeout_ms: int) -> worker_pb.RequestTtyInputRequest:
    return worker_pb.RequestTtyInputRequest(
        worker_id=worker_id,
        session_id=job.session_id,
        lease_token=job.lease_token,
        prompt="?",
        input_type=session_pb.TtyInputType.TEXT,
        timeout_ms=timeout_ms,
    )


async def test_tty_timeout_left_out_is_the_configured_default(
    wire: Wire, settings: Settings
) -> None:
    default = dt.timedelta(milliseconds=settings.tty_input_timeout_ms)
    assert workers.tty_expiry(settings=settings, timeout_ms=0) == default
    assert workers.tty_expiry(settings=settings, timeout_ms=5) == dt.timedelta(milliseconds=5)
    worker_id, job = await _leased(wire)
    asked = (await wire.workers.request_tty_input(_ask(worker_id, job, 0))).request
    stored = await m.TtyInputRequest.get(id=asked.id)
    assert stored.expires_at is not None
    assert stored.expires_at - stored.created_at == pytest.approx(default, abs=dt.timedelta(1))


async def test_negative_timeouts_and_waits_are_invalid_argument(
    wire: Wire, settings: Settings
) -> None:
    with pytest.raises(InvalidArgument, match="timeout_ms"):
        workers.tty_expiry(settings=settings, timeout_ms=-1)
    worker_id, job = await _leased(wire)
    with pytest.raises(InvalidArgument, match="wait_ms"):
        await workers.claim_job(worker_id=uuid.UUID(worker_id), wait=-dt.timedelta(milliseconds=1))
    error = await _refused(wire.workers.request_tty_input(_ask(worker_id, job, -1)))
    assert (error.code, "timeout_ms" in error.message) == (Code.INVALID_ARGUMENT, True)
    error = await _refused(
        wire.workers.get_task(worker_pb.ClaimJobRequest(worker_id=worker_id, wait_ms=-1))
    )
    assert (error.code, "wait_ms" in error.message) == (Code.INVALID_ARGUMENT, True)
    asked = (await wire.workers.request_tty_input(_ask(worker_id, job, 60_000))).request
    with pytest.raises(InvalidArgument, match="wait_ms"):
        await workers.wait_tty_answer(
            worker_id=uuid.UUID(worker_id),
            session_id=uuid.UUID(job.session_id),
            lease_token=job.lease_token,
            request_id=uuid.UUID(asked.id),
            wait=-dt.timedelta(milliseconds=1),
        )
    error = await _refused(
        wire.workers.wait_tty_input(
            worker_pb.WaitTtyInputRequest(
                worker_id=worker_id,
                session_id=job.session_id,
                lease_token=job.lease_token,
                request_id=asked.id,
                wait_ms=-1,
            )
        )
    )
    assert (error.code, "wait_ms" in error.message) == (Code.INVALID_ARGUMENT, True)
