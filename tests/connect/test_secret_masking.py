"""Secret masking through the real client path: a worker sends output over WorkerService in
any chunking, and no read (GetLog, StreamLog, GraphQL ``log``), stored chunk or reported text
ever holds a value or its base64 forms; every read is a prefix of the final log."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import secrets_pb, session_pb, task_pb, worker_pb
from delidev.connect.gen.delidev.v1.secrets_connect import SecretsServiceClient
from delidev.connect.gen.delidev.v1.session_connect import SessionServiceClient
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import secrets, tasks
from delidev.settings import Settings
from tests.clients import GraphQLTaskApi, connect_codecs
from tests.factories import make_group, make_repository, make_workspace

S = task_pb.AgentSessionStatus


@dataclass
class Clients:
    workers: WorkerServiceClient
    secrets: SecretsServiceClient
    sessions: SessionServiceClient
    graphql: GraphQLTaskApi


@pytest.fixture
async def clients(app: Any) -> AsyncIterator[Clients]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    codec = connect_codecs()["json"]
    made = Clients(
        workers=WorkerServiceClient("http://test", http_client=http, codec=codec),
        secrets=SecretsServiceClient("http://test", http_client=http, codec=codec),
        sessions=SessionServiceClient("http://test", http_client=http, codec=codec),
        graphql=GraphQLTaskApi(app),
    )
    yield made
    for client in (made.workers, made.secrets, made.sessions, made.graphql):
        await client.close()


def _leaks(value: str) -> set[str]:
    """The value, and base64 (both alphabets) of it at any byte offset in a longer string:
    the characters whose bits all come from the value."""
    raw = value.encode()
    shown = {value}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            blob = encode(b"\xc3" * shift + raw + b"\x3c").decode()
            start, stop = 8 * shift, 8 * (shift + len(raw))
            shown.add("".join(c for j, c in enumerate(blob) if start <= 6 * j <= stop - 6))
    return {f for f in shown if len(f) >= secrets.MIN_MASKED_LENGTH}


def _assert_hidden(values: dict[str, str], *texts: str | None) -> None:
    for value in values.values():
        for leak in _leaks(value):
            for text in texts:
                assert leak not in (text or ""), "a secret value shows"


async def _job(clients: Clients, values: dict[str, str]) -> tuple[m.UnitTask, dict[str, str]]:
    """A unit task expecting these secrets, sent by its owner, claimed by a new worker."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="p", expects_secrets=True
    )
    await clients.secrets.send(secrets_pb.SendSecretsRequest(task_id=str(task.id), secrets=values))
    reg = await clients.workers.register(
        worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:54872")
    )
    job = (await clients.workers.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))).job
    assert job is not None
    assert job.task_id == str(task.id)
    return task, {
        "worker_id": reg.worker_id,
        "session_id": job.session_id,
        "lease_token": job.lease_token,
    }


async def _get_log(clients: Clients, session_id: str) -> str:
    read = await clients.sessions.get_log(session_pb.GetLogRequest(session_id=session_id))
    return read.content


async def _stored_chunks(session_id: str) -> str:
    """Every stored row of the log in log order: the placed chunks, then what is held back,
    then the chunks waiting for a gap to close."""
    rows = await m.LogChunk.filter(session_id=session_id)
    rows.sort(key=lambda r: (r.start_offset < 0, r.start_offset, r.sequence))
    return "".join(r.data for r in rows)


_CHARS = st.characters(
    codec="utf-8", exclude_characters="*\x00", categories=["L", "N", "P", "S", "Zs"]
)
_FILLER = st.text(
    alphabet=st.one_of(_CHARS, st.sampled_from("\n=:/+ab\U0001f600\u0301\u4e2d")), max_size=24
)


@st.composite
def _runs(draw: st.DrawFn) -> tuple[dict[str, str], list[list[tuple[int, str]]]]:
    """Secrets, and a run's output showing them (plain, base64 at any offset) cut into
    random chunks, sent in random batches, a batch's chunks in any order."""
    values = draw(
        st.dictionaries(
            st.sampled_from(["API_KEY", "TOKEN"]),
            st.text(alphabet=_CHARS, min_size=secrets.MIN_MASKED_LENGTH, max_size=32),
            min_size=1,
            max_size=2,
        )
    )
    shown = st.sampled_from(sorted(values.values()))
    encoded = st.builds(
        lambda encode, before, value, after: encode(before + value.encode() + after).decode(),
        st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]),
        st.binary(max_size=3),
        shown,
        st.binary(max_size=3),
    )
    text = "".join(draw(st.lists(st.one_of(_FILLER, shown, encoded), min_size=1, max_size=6)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=12)))
    chunks = list(enumerate(text[i:j] for i, j in itertools.pairwise([0, *cuts, len(text)])))
    ends = sorted(draw(st.sets(st.integers(1, len(chunks)), max_size=4)) | {len(chunks)})
    batches = [chunks[i:j] for i, j in itertools.pairwise([0, *ends])]
    return values, [draw(st.permutations(b)) for b in batches]


@given(run=_runs())
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.usefixtures("database")
async def test_no_read_of_a_log_shows_a_value_whatever_the_chunking(
    clients: Clients, run: tuple[dict[str, str], list[list[tuple[int, str]]]]
) -> None:
    values, batches = run
    task, lease = await _job(clients, values)
    session_id = lease["session_id"]
    reads = []
    for batch in batches:
        for sequence, data in batch:  # one call per chunk: a batch arrives out of order
            await clients.workers.append_log(
                worker_pb.AppendLogRequest(
                    **lease, chunks=[worker_pb.LogChunk(sequence=sequence, data=data)]
                )
            )
        reads.append(await _get_log(clients, session_id))
        _assert_hidden(values, reads[-1], await _stored_chunks(session_id))
    secret = next(iter(values.values()))
    await clients.workers.report_status(
        worker_pb.ReportStatusRequest(
            **lease,
            status=S.SUCCEEDED,
            base_commit=f"{secret}",
            end_commit=base64.b64encode(b"x" + secret.encode()).decode(),
        )
    )
    final = await _get_log(clients, session_id)
    content, _ = await clients.graphql.get_log(session_id)
    streamed = "".join(
        [
            x.data
            async for x in clients.sessions.stream_log(
                session_pb.StreamLogRequest(session_id=session_id)
            )
        ]
    )
    stored = await m.AgentSession.get(id=session_id)
    unit = await m.UnitTask.get(id=task.id)
    _assert_hidden(
        values,
        final,
        content,
        streamed,
        await _stored_chunks(session_id),
        stored.output_log,
        unit.base_commit,
        unit.end_commit,
    )
    assert content == streamed == final == (stored.output_log or "")
    # Nothing once read changes afterwards: what a follower got is what is stored.
    assert all(final.startswith(r) for r in reads)


@pytest.mark.usefixtures("database")
async def test_a_live_follower_gets_the_log_as_stored_when_a_value_spans_many_chunks(
    clients: Clients,
) -> None:
    value = "sk-follow-9d2c4e1a7b"
    _, lease = await _job(clients, {"TOKEN": value})
    session_id = lease["session_id"]
    text = f"export TOKEN={value}\nagain {value[:7]}"
    pieces = [text[:15], text[15:17], text[17:20], text[20:]]  # middles shorter than the value
    received: list[tuple[int, str]] = []

    async def follow() -> None:
        request = session_pb.StreamLogRequest(session_id=session_id)
        async for message in clients.sessions.stream_log(request):
            received.append((message.offset, message.data))

    follower = asyncio.create_task(follow())
    reads = []
    for sequence, piece in enumerate(pieces):
        await clients.workers.append_log(
            worker_pb.AppendLogRequest(
                **lease, chunks=[worker_pb.LogChunk(sequence=sequence, data=piece)]
            )
        )
        reads.append(await _get_log(clients, session_id))
    # The end that could begin the value again waits, and is placed when the run ends.
    assert reads[-1] == f"export TOKEN={secrets.MASK}\nagain "
    await clients.workers.report_status(worker_pb.ReportStatusRequest(**lease, status=S.SUCCEEDED))
    await asyncio.wait_for(follower, 10)
    expected = f"export TOKEN={secrets.MASK}\nagain {value[:7]}"
    assert "".join(d for _, d in received) == expected
    assert await _get_log(clients, session_id) == expected
    assert (await m.AgentSession.get(id=session_id)).output_log == expected
    assert all(expected.startswith(r) for r in reads)
    offsets = [o for o, _ in received]
    assert offsets == sorted(offsets)


# Sending secrets: limits and bad values over the wire ----------------------------------


@pytest.mark.usefixtures("database")
async def test_send_refuses_too_much_and_nul_clearly_and_holds_nothing(
    settings: Settings,
) -> None:
    app = create_app(settings.replace(secrets_max_task_bytes=1000, secrets_max_user_bytes=1500))
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = SecretsServiceClient("http://test", http_client=http, codec=connect_codecs()["json"])
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    first, second = [
        await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
        for _ in range(2)
    ]
    try:
        cases = [
            (first.id, {"BIG": "x" * 1000}, "hold at most 1000 bytes; these would hold 1003"),
            (first.id, {"K": "a\x00b"}, "secret K must not contain NUL"),
            (first.id, {"K": "v" * 999}, None),
            (second.id, {"K": "v" * 600}, "at most 1500 bytes in all (1000 held for other"),
        ]
        for task_id, values, refusal in cases:
            request = secrets_pb.SendSecretsRequest(task_id=str(task_id), secrets=values)
            if refusal is None:
                assert list((await client.send(request)).keys) == ["K"]
                continue
            with pytest.raises(ConnectError) as info:
                await client.send(request)
            assert info.value.code == Code.INVALID_ARGUMENT
            assert refusal in info.value.message
            assert "xxxx" not in info.value.message
        store = app.state.secrets
        assert store.get(first.id) == {"K": "v" * 999}
        assert store.get(second.id) == {}
    finally:
        await client.close()
