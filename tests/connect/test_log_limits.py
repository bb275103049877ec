"""The log limits of the settings reach AppendLog: a chunk too far ahead or too large is
refused with invalid_argument naming the field, and a log over the cap is cut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import events
from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import common_pb, session_pb, worker_pb
from delidev.connect.gen.delidev.v1.session_connect import SessionServiceClient
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import sessions, tasks
from delidev.settings import Settings, SettingsError
from tests.clients import connect_codecs
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture(params=["json", "binary"])
async def clients(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[tuple[Any, Any]]:
    app = create_app(
        settings.replace(log_max_chars=40, log_chunk_max_chars=10, log_sequence_window=4)
    )
    token = events.bind(app.state.events)
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    codec = connect_codecs()[request.param]
    workers = WorkerServiceClient("http://test", http_client=http, codec=codec)
    readers = SessionServiceClient("http://test", http_client=http, codec=codec)
    try:
        yield workers, readers
    finally:
        await workers.close()
        await readers.close()
        events.unbind(token)


async def _claimed(workers: Any) -> tuple[str, worker_pb.Job]:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    reg = await workers.register(
        worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:1")
    )
    job = (await workers.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))).job
    assert job is not None
    return reg.worker_id, job


def _append(worker_id: str, job: worker_pb.Job, *chunks: tuple[int, str]) -> Any:
    return worker_pb.AppendLogRequest(
        worker_id=worker_id,
        session_id=job.session_id,
        lease_token=job.lease_token,
        chunks=[worker_pb.LogChunk(sequence=s, data=d) for s, d in chunks],
    )


def _field(error: ConnectError) -> str:
    (info,) = [d.value(common_pb.ErrorInfo) for d in error.details]
    return info.field


@pytest.mark.parametrize(
    ("chunk", "field", "says"),
    [
        ((10**12, "x"), "chunks.sequence", "chunk sequence 1000000000000 is too far ahead"),
        ((4, "x"), "chunks.sequence", "at most 4 ahead"),
        ((0, "😀" * 11), "chunks.data", "at most 10 characters (got 11)"),
    ],
)
async def test_refused_chunks_name_the_problem_and_store_nothing(
    clients: tuple[Any, Any], chunk: tuple[int, str], field: str, says: str
) -> None:
    workers, _ = clients
    worker_id, job = await _claimed(workers)
    with pytest.raises(ConnectError) as info:
        await workers.append_log(_append(worker_id, job, chunk))
    assert info.value.code == Code.INVALID_ARGUMENT
    assert says in info.value.message
    assert _field(info.value) == field
    assert await m.LogChunk.filter(session_id=job.session_id).count() == 0


async def test_a_log_over_the_cap_is_cut_with_a_marker(clients: tuple[Any, Any]) -> None:
    workers, readers = clients
    worker_id, job = await _claimed(workers)
    lines = [f"{i:02} 中文\n" for i in range(12)]  # 6 code points each
    for i in range(0, 12, 3):
        reply = await workers.append_log(
            _append(worker_id, job, *[(s, lines[s]) for s in range(i, i + 3)])
        )
    assert (reply.next_sequence, reply.log_size) == (12, 72)
    log = await readers.get_log(session_pb.GetLogRequest(session_id=job.session_id))
    marker = sessions.cut_marker(72 - 18 - 18, newline=False)
    assert log.content == "".join(lines[:3]) + marker + "".join(lines[-3:])
    assert log.next_offset == 72


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DELIDEV_LOG_MAX_CHARS": "100", "DELIDEV_LOG_CHUNK_MAX_CHARS": "60"}, "MAX_CHARS"),
        ({"DELIDEV_LOG_SEQUENCE_WINDOW": "0"}, "DELIDEV_LOG_SEQUENCE_WINDOW"),
        ({"DELIDEV_LOG_MAX_CHARS": "lots"}, "DELIDEV_LOG_MAX_CHARS"),
    ],
)
def test_bad_log_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_log_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DELIDEV_LOG_MAX_CHARS": "1000",
            "DELIDEV_LOG_CHUNK_MAX_CHARS": "100",
            "DELIDEV_LOG_SEQUENCE_WINDOW": "7",
        }
    )
    assert sessions.LogLimits.of(settings) == sessions.LogLimits(
        max_chars=1000, chunk_max_chars=100, sequence_window=7
    )
