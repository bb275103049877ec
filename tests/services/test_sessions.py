from __future__ import annotations

import datetime as dt
import uuid

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import sessions, tasks
from delidev.services.sessions import LogChunkIn
from tests.conftest import SqlCounter
from tests.factories import (
    latest_session,
    make_group,
    make_repository,
    make_workspace,
    start_latest,
)
from tests.loop_watchdog import Watchdog

pytestmark = pytest.mark.usefixtures("database")

A = LOCAL_USER
Q = m.AgentSessionStatus


async def _running() -> tuple[m.UnitTask, m.AgentSession]:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="p")
    return task, await start_latest(task.agent_task_id)


def _chunks(*pairs: tuple[int, str]) -> list[LogChunkIn]:
    return [LogChunkIn(sequence=s, data=d) for s, d in pairs]


async def test_append_and_read_by_offset() -> None:
    _, session = await _running()
    await sessions.append_log(session_id=session.id, chunks=_chunks((0, "hello "), (1, "world\n")))
    stored = await sessions.append_log(session_id=session.id, chunks=_chunks((2, "bye")))
    assert (stored.log_size, stored.log_next_sequence) == (15, 3)
    whole = await sessions.read_log(actor=A, session_id=session.id)
    assert (whole.content, whole.offset, whole.next_offset, whole.complete) == (
        "hello world\nbye",
        0,
        15,
        False,
    )
    part = await sessions.read_log(actor=A, session_id=session.id, offset=3, limit=6)
    assert (part.content, part.next_offset) == ("lo wor", 9)
    tail = await sessions.read_log(actor=A, session_id=session.id, offset=12)
    assert tail.content == "bye"
    beyond = await sessions.read_log(actor=A, session_id=session.id, offset=99)
    assert (beyond.content, beyond.offset) == ("", 15)


async def test_duplicates_and_out_of_order_chunks() -> None:
    _, session = await _running()
    await sessions.append_log(session_id=session.id, chunks=_chunks((2, "c"), (0, "a")))
    partial = await sessions.read_log(actor=A, session_id=session.id)
    assert partial.content == "a"  # chunk 2 waits for chunk 1
    await sessions.append_log(session_id=session.id, chunks=_chunks((0, "a"), (1, "b"), (2, "c")))
    again = await sessions.append_log(session_id=session.id, chunks=_chunks((1, "X"), (3, "d")))
    assert again.log_next_sequence == 4
    assert (await sessions.read_log(actor=A, session_id=session.id)).content == "abcd"
    assert await m.LogChunk.filter(session_id=session.id).count() == 4


async def test_reading_the_tail_of_a_long_log_touches_few_rows(sql_counter: SqlCounter) -> None:
    _, session = await _running()
    for batch in range(20):
        await sessions.append_log(
            session_id=session.id,
            chunks=_chunks(*[(batch * 50 + i, f"line {batch * 50 + i}\n") for i in range(50)]),
        )
    size = (await m.AgentSession.get(id=session.id)).log_size
    sql_counter.reset()
    tail = await sessions.read_log(actor=A, session_id=session.id, offset=size - 9)
    assert tail.content == "line 999\n"
    # session lookups + one seek + one scan; never the 1000 chunks
    assert 0 < len(sql_counter.statements) <= 8


async def test_a_window_read_from_the_start_scans_only_that_window(
    sql_counter: SqlCounter,
) -> None:
    _, session = await _running()
    await sessions.append_log(
        session_id=session.id, chunks=_chunks(*[(i, f"line {i:04}\n") for i in range(500)])
    )
    sql_counter.reset()
    head = await sessions.read_log(actor=A, session_id=session.id, offset=0, limit=20)
    assert head.content == "line 0000\nline 0001\n"
    assert head.next_offset == 20
    middle = await sessions.read_log(actor=A, session_id=session.id, offset=15, limit=12)
    assert middle.content == "0001\nline 00"
    # The scan is bounded above by the window's end, so it cannot fetch the 500 chunks.
    scans = [s for s in sql_counter.statements if "log_chunks" in s and "ORDER BY" in s]
    assert scans
    assert all('"start_offset"<' in s.replace(" ", "") for s in scans)


@pytest.mark.parametrize(
    ("chunks", "field"),
    [(_chunks((-1, "x")), "chunks.sequence"), (_chunks((0, "a\x00b")), "chunks.data")],
)
async def test_bad_chunks(chunks: list[LogChunkIn], field: str) -> None:
    _, session = await _running()
    with pytest.raises(InvalidArgument) as info:
        await sessions.append_log(session_id=session.id, chunks=chunks)
    assert info.value.field == field
    assert await m.LogChunk.all().count() == 0


async def test_no_output_after_the_end_and_output_log_holds_everything() -> None:
    task, session = await _running()
    await sessions.append_log(session_id=session.id, chunks=_chunks((0, "all "), (1, "done")))
    ended = await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    assert ended.output_log == "all done"
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_REVIEW
    with pytest.raises(FailedPrecondition):
        await sessions.append_log(session_id=session.id, chunks=_chunks((2, "late")))
    read = await sessions.read_log(actor=A, session_id=session.id)
    assert read.complete


async def test_failure_is_visible_and_the_task_stays_in_progress() -> None:
    task, session = await _running()
    ended = await sessions.complete_session(
        session_id=session.id, status=Q.FAILED, error="agent crashed", failure_kind="agent_crashed"
    )
    assert (ended.status, ended.error) == (Q.FAILED, "agent crashed")
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_PROGRESS
    with pytest.raises(FailedPrecondition):
        await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)


async def test_stop_a_queued_session_at_once() -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="p")
    queued = await latest_session(task.agent_task_id)
    stopped = await sessions.stop_session(actor=A, session_id=queued.id)
    assert (stopped.status, stopped.stop_requested) == (Q.STOPPED, True)
    with pytest.raises(FailedPrecondition):
        await sessions.stop_session(actor=A, session_id=queued.id)


async def test_stop_a_running_session_flags_it_until_the_worker_confirms() -> None:
    _, session = await _running()
    request = await sessions.create_tty_request(
        session_id=session.id,
        prompt="Continue?",
        input_type=m.TtyInputType.CONFIRM,
        expires_in=dt.timedelta(minutes=5),
    )
    flagged = await sessions.stop_session(actor=A, session_id=session.id)
    assert (flagged.status, flagged.stop_requested) == (Q.RUNNING, True)
    confirmed = await sessions.complete_session(session_id=session.id, status=Q.STOPPED)
    assert confirmed.status == Q.STOPPED
    assert (await m.TtyInputRequest.get(id=request.id)).status == m.TtyInputStatus.CANCELLED


async def test_sessions_of_other_users_are_not_found() -> None:
    _, session = await _running()
    stranger = Principal(kind="user", user_id=uuid.uuid4())
    with pytest.raises(NotFound):
        await sessions.read_log(actor=stranger, session_id=session.id)
    with pytest.raises(NotFound):
        await sessions.stop_session(actor=stranger, session_id=session.id)


# TTY ---------------------------------------------------------------------------------------


async def _ask(
    session: m.AgentSession,
    kind: m.TtyInputType,
    options: list[str] | None = None,
    minutes: float = 5,
) -> m.TtyInputRequest:
    return await sessions.create_tty_request(
        session_id=session.id,
        prompt="Question?",
        input_type=kind,
        options=options or [],
        expires_in=dt.timedelta(minutes=minutes),
    )


async def test_tty_answer_once() -> None:
    task, session = await _running()
    request = await _ask(session, m.TtyInputType.SELECT, ["a", "b"])
    assert (request.task_id, request.status) == (task.id, m.TtyInputStatus.PENDING)
    pending = await sessions.list_tty_requests(
        actor=A, task_id=task.id, status=m.TtyInputStatus.PENDING
    )
    assert [r.id for r in pending.items] == [request.id]
    by_workspace = await sessions.list_tty_requests(actor=A, workspace_id=task.workspace_id)
    assert by_workspace.total_count == 1
    with pytest.raises(InvalidArgument):
        await sessions.submit_tty_input(actor=A, request_id=request.id, response="c")
    answered = await sessions.submit_tty_input(actor=A, request_id=request.id, response="b")
    assert (answered.status, answered.response) == (m.TtyInputStatus.RESPONDED, "b")
    with pytest.raises(FailedPrecondition) as info:
        await sessions.submit_tty_input(actor=A, request_id=request.id, response="a")
    assert "responded" in info.value.message
    assert (await m.TtyInputRequest.get(id=request.id)).response == "b"


async def test_password_answers_are_never_shown() -> None:
    _, session = await _running()
    request = await _ask(session, m.TtyInputType.PASSWORD)
    answered = await sessions.submit_tty_input(actor=A, request_id=request.id, response=" s3cret ")
    assert sessions.visible_response(answered) is None
    assert answered.response == " s3cret "  # kept verbatim for the worker
    text = await _ask(session, m.TtyInputType.TEXT)
    await sessions.submit_tty_input(actor=A, request_id=text.id, response="plain")
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    # The run is over: nobody needs the password any more, so it is erased.
    assert (await m.TtyInputRequest.get(id=request.id)).response is None
    assert (await m.TtyInputRequest.get(id=request.id)).status == m.TtyInputStatus.RESPONDED
    assert (await m.TtyInputRequest.get(id=text.id)).response == "plain"


@pytest.mark.parametrize(
    ("kind", "options", "field"),
    [(m.TtyInputType.SELECT, [], "options"), (m.TtyInputType.TEXT, ["x"], "options")],
)
async def test_bad_questions(kind: m.TtyInputType, options: list[str], field: str) -> None:
    _, session = await _running()
    with pytest.raises(InvalidArgument) as info:
        await _ask(session, kind, options)
    assert info.value.field == field


async def test_confirm_answers_are_normalised_and_questions_time_out() -> None:
    _, session = await _running()
    confirm = await _ask(session, m.TtyInputType.CONFIRM)
    assert (
        await sessions.submit_tty_input(actor=A, request_id=confirm.id, response="Y")
    ).response == "yes"
    late = await _ask(session, m.TtyInputType.TEXT, minutes=1)
    expired = await sessions.expire_tty_requests(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    assert expired == 1
    assert (await m.TtyInputRequest.get(id=late.id)).status == m.TtyInputStatus.TIMEOUT
    with pytest.raises(FailedPrecondition):
        await sessions.submit_tty_input(actor=A, request_id=late.id, response="x")


async def test_session_and_task_changes_advance_updated_at() -> None:
    long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    task, session = await _running()
    await m.AgentSession.filter(id=session.id).update(updated_at=long_ago)
    await sessions.append_log(session_id=session.id, chunks=_chunks((0, "x")))
    assert (await m.AgentSession.get(id=session.id)).updated_at > long_ago

    await m.AgentSession.filter(id=session.id).update(updated_at=long_ago)
    await m.UnitTask.filter(id=task.id).update(updated_at=long_ago)
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    assert (await m.AgentSession.get(id=session.id)).updated_at > long_ago
    assert (await m.UnitTask.get(id=task.id)).updated_at > long_ago


async def test_a_stop_that_loses_the_race_with_the_final_report_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (audit of user-operation races): the run's final report landed between
    Stop's read and its update; Stop answered ok with a run that had succeeded (or failed
    and been retried), not stopped. The report is made to land right after Stop's read."""
    from delidev.services.sessions import lifecycle

    _, session = await _running()
    read = lifecycle.get_session

    async def read_then_the_report_lands(**kwargs: object) -> m.AgentSession:
        seen = await read(**kwargs)  # type: ignore[arg-type]
        await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
        return seen

    monkeypatch.setattr(lifecycle, "get_session", read_then_the_report_lands)
    with pytest.raises(FailedPrecondition, match="already ended"):
        await sessions.stop_session(actor=A, session_id=session.id)
    ended = await m.AgentSession.get(id=session.id)
    assert (ended.status, ended.stop_requested) == (Q.SUCCEEDED, False)


async def test_thousands_of_questions_time_out_without_holding_the_event_loop(
    loop_watchdog: Watchdog,
) -> None:
    """They are closed and announced 500 at a time, other tasks running between batches.
    Regression: 5,000 expired questions were read, closed and announced at once, holding the
    event loop for ~0.15 s (every sweep runs this, and so does ListTtyInputRequests)."""
    count = 5_000
    task, session = await _running()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    await m.TtyInputRequest.bulk_create(
        [
            m.TtyInputRequest(
                task_id=task.id,
                workspace_id=task.workspace_id,
                session_id=session.id,
                prompt=f"question {i}?",
                input_type=m.TtyInputType.TEXT,
                expires_at=past,
            )
            for i in range(count)
        ],
        batch_size=1_000,
    )
    answered = await _ask(session, m.TtyInputType.TEXT, minutes=10)
    bus = events.EventBus()
    heard: list[events.Event] = []
    bus.subscribe(heard.append)
    token = events.bind(bus)
    try:
        loop_watchdog.take()
        with loop_watchdog.armed():
            assert await sessions.expire_tty_requests() == count
        assert loop_watchdog.take() == []
    finally:
        events.unbind(token)
    assert len({e.request_id for e in heard if isinstance(e, events.TtyChanged)}) == count
    assert await m.TtyInputRequest.filter(status=m.TtyInputStatus.TIMEOUT).count() == count
    assert (await m.TtyInputRequest.get(id=answered.id)).status == m.TtyInputStatus.PENDING
