"""AppendLog's quick path (services/workers/quick_append.py) against the general one.

The quick path stores output that follows the log in one transaction (SQLite) or one
statement (PostgreSQL); everything else goes the general way. Both must leave the same
chunks, sizes and answers, publish the same events, and refuse what the general path
refuses. Each scenario runs twice, once with the quick path on and once with it off.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tortoise import connections

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import Conflict, InvalidArgument
from delidev.services import secrets, sessions, tasks, workers
from delidev.services.sessions import LogChunkIn, LogLimits
from delidev.services.workers import quick_append
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def bus() -> AsyncIterator[list[events.Event]]:
    """The events published, in order."""
    b = events.EventBus()
    heard: list[events.Event] = []
    b.subscribe(heard.append)
    token = events.bind(b)
    try:
        yield heard
    finally:
        events.unbind(token)


async def _job(**task: Any) -> workers.Job:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p", **task)
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:54872")).worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    return job


async def _append(
    job: workers.Job,
    chunks: Sequence[tuple[int, str]],
    *,
    lease: str | None = None,
    limits: LogLimits = LogLimits(),  # noqa: B008  # frozen
    store: secrets.SecretStore | None = None,
) -> quick_append.LogPosition:
    assert job.session.worker_id is not None
    return await workers.append_job_log(
        worker_id=job.session.worker_id,
        session_id=job.session.id,
        lease_token=job.lease_token if lease is None else lease,
        chunks=[LogChunkIn(sequence=s, data=d) for s, d in chunks],
        store=store,
        limits=limits,
    )


async def _stored(job: workers.Job) -> dict[str, Any]:
    """What the log left in the database, with ids left out."""
    session = await m.AgentSession.get(id=job.session.id)
    chunks = (
        await m.LogChunk.filter(session_id=job.session.id)
        .order_by("sequence")
        .values_list("sequence", "start_offset", "data")
    )
    read = await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)
    return {
        "size": session.log_size,
        "next": session.log_next_sequence,
        "chunks": chunks,
        "log": read.content,
    }


def _event_view(heard: list[events.Event]) -> list[tuple[str, int, str | None]]:
    return [
        (type(e).__name__, e.log_size, e.text) for e in heard if isinstance(e, events.LogAppended)
    ]


@pytest.fixture
def general_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Turns the quick path off (for the second run of a scenario)."""

    def off() -> None:
        monkeypatch.setattr(quick_append, "applies", lambda _chunks: False)

    return off


TEXTS = st.sampled_from(["a", "line\n", "😀", "中文 ", "e\u0301", "x" * 40])
# A call: chunks numbered one after the other from anywhere near the log's end (what the
# quick path may take), or any numbers at all (repeats, gaps, out of order).
RUN = st.builds(
    lambda start, texts: [(start + i, t) for i, t in enumerate(texts)],
    st.integers(min_value=0, max_value=8),
    st.lists(TEXTS, min_size=1, max_size=3),
)
SCATTERED = st.lists(
    st.tuples(st.integers(min_value=0, max_value=10), TEXTS), min_size=1, max_size=4
)
CALLS = st.lists(st.one_of(RUN, SCATTERED), min_size=1, max_size=8)


@EXAMPLES
@given(calls=CALLS)
async def test_any_sequence_of_calls_leaves_what_the_general_path_leaves(
    calls: list[list[tuple[int, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In order, repeated, ahead of a gap, filling one: the same answers and the same log."""

    async def run() -> tuple[list[Any], dict[str, Any], list[Any]]:
        heard: list[events.Event] = []
        b = events.EventBus()
        b.subscribe(heard.append)
        token = events.bind(b)
        try:
            job = await _job()
            answers = []
            for call in calls:
                try:
                    answers.append(await _append(job, call))
                except InvalidArgument as refused:
                    answers.append(str(refused))
            return answers, await _stored(job), _event_view(heard)
        finally:
            events.unbind(token)

    quick = await run()
    with monkeypatch.context() as patch:
        patch.setattr(quick_append, "applies", lambda _chunks: False)
        general = await run()
    assert quick == general


async def test_plain_output_takes_the_quick_path_and_the_rest_the_general_one(
    sql_counter: SqlCounter, bus: list[events.Event]
) -> None:
    job = await _job()
    await _append(job, [(0, "first\n")])  # the first call learns the run's task
    dialect = connections.get("default").capabilities.dialect
    quick = ["WITH seen AS"] if dialect == "postgres" else [quick_append._RUN_SQLITE]

    sql_counter.reset()
    position = await _append(job, [(1, "second\n"), (2, "third\n")])
    assert position == quick_append.LogPosition(19, 3)
    assert [s.strip()[: len(quick[0])] for s in sql_counter.statements][:1] == quick
    # SQLite: the run read, the waiting chunks looked for, the insert, the update.
    assert len(sql_counter.statements) == (1 if dialect == "postgres" else 4)

    sql_counter.reset()
    await _append(job, [(4, "fifth\n")])  # ahead of a gap: it waits (general path)
    assert len(sql_counter.statements) > (1 if dialect == "postgres" else 4)
    assert (await _stored(job))["size"] == 19

    sql_counter.reset()
    await _append(job, [(3, "fourth\n")])  # a chunk waits: the general path places both
    assert (await _stored(job))["log"] == "first\nsecond\nthird\nfourth\nfifth\n"
    assert (await _append(job, [(5, "sixth\n")])).log_next_sequence == 6
    texts = [e.text for e in bus if isinstance(e, events.LogAppended)]
    assert texts == ["first\n", "second\nthird\n", "fourth\nfifth\n", "sixth\n"]


async def test_a_stale_or_foreign_lease_is_refused_and_stores_nothing() -> None:
    job = await _job()
    other = await _job()
    await _append(job, [(0, "mine\n")])
    before = await _stored(job)
    with pytest.raises(Conflict):
        await _append(job, [(1, "guess\n")], lease="not-the-lease")
    with pytest.raises(Conflict):
        await _append(job, [(1, "empty\n")], lease="")
    with pytest.raises(Conflict):  # another run's lease
        await _append(job, [(1, "theirs\n")], lease=other.lease_token)
    assert await _stored(job) == before
    assert job.session.worker_id is not None
    await workers.report_status(
        worker_id=job.session.worker_id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=m.AgentSessionStatus.SUCCEEDED,
    )
    with pytest.raises(Conflict):  # the run ended: its lease is dead
        await _append(job, [(1, "late\n")])
    assert (await _stored(job))["log"] == "mine\n"


async def test_output_of_a_task_with_secrets_is_always_masked() -> None:
    """The first call takes the general path; secrets that arrive later mask every call."""
    store = secrets.SecretStore()
    value = "s3cr3t-v4lue-0123456789"
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="p", expects_secrets=True
    )
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"API_KEY": value}
    )
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:54872")).worker
    job = await workers.claim_job(worker_id=worker.id, store=store)
    assert job is not None
    b64 = base64.b64encode(value.encode()).decode()
    await _append(job, [(0, "start\n")], store=store)
    await _append(job, [(1, f"key={value}\n"), (2, f"b64={b64}\n")], store=store)
    log = (await _stored(job))["log"]
    assert value not in log
    assert b64 not in log
    assert log.startswith("start\nkey=")


async def test_a_log_over_its_cap_is_cut_by_the_general_path() -> None:
    limits = LogLimits(max_chars=100, chunk_max_chars=20, sequence_window=64)
    job = await _job()
    for seq in range(12):
        await _append(job, [(seq, f"{seq:02d}-" + "y" * 15 + "\n")], limits=limits)
    stored = await _stored(job)
    assert stored["size"] == 12 * 19
    assert "characters of output dropped here" in stored["log"]
    assert stored["log"].endswith("11-" + "y" * 15 + "\n")


async def test_bad_chunks_are_refused_before_either_path(general_only: Any) -> None:
    job = await _job()
    await _append(job, [(0, "ok\n")])
    for bad in ([(1, "nul\x00")], [(-1, "negative")], [(1, "z" * 30)]):
        with pytest.raises(InvalidArgument):
            await _append(job, bad, limits=LogLimits(chunk_max_chars=20))
    assert (await _stored(job))["log"] == "ok\n"


async def test_two_calls_racing_for_the_same_chunks_store_them_once() -> None:
    """A worker that retries a call still in flight: both answer, the chunk is stored once
    (on PostgreSQL the second waits for the first's row lock and then matches nothing)."""
    job = await _job()
    await _append(job, [(0, "a\n")])
    results = await asyncio.gather(
        *(_append(job, [(1, "b\n"), (2, "c\n")]) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, quick_append.LogPosition) for r in results), results
    stored = await _stored(job)
    assert stored["log"] == "a\nb\nc\n"
    assert [c[0] for c in stored["chunks"]] == [0, 1, 2]


def test_the_local_text_of_an_event_never_leaves_the_process() -> None:
    event = events.LogAppended("s", 10, "secret-free but large text")
    payload = events.encode(event, "origin")
    assert "large text" not in payload
    decoded = events.decode(payload)
    assert decoded is not None
    assert isinstance(decoded[0], events.LogAppended)
    assert (decoded[0].session_id, decoded[0].log_size, decoded[0].text) == ("s", 10, None)
