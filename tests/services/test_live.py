"""Events and live views: the bus, after-commit publishing, log following, task updates."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import FailedPrecondition, NotFound, Unauthenticated
from delidev.services import auth, live, sessions, tasks
from delidev.services.common import transaction
from delidev.settings import Settings
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_workspace, start_latest
from tests.waiting import until

pytestmark = pytest.mark.usefixtures("database")
Q = m.AgentSessionStatus
SETTINGS = Settings(jwt_secret="k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd")


async def _running() -> m.AgentSession:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    return await start_latest(task.agent_task_id)


async def _append(session: m.AgentSession, sequence: int, data: str) -> None:
    await sessions.append_log(
        session_id=session.id, chunks=[sessions.LogChunkIn(sequence=sequence, data=data)]
    )


async def _collect(stream: AsyncIterator[live.LogPiece]) -> list[live.LogPiece]:
    return [piece async for piece in stream]


def _follow_into(stream: AsyncIterator[live.LogPiece], pieces: list[live.LogPiece]) -> Any:
    """Follows ``stream`` in a task that appends each piece to ``pieces`` as it comes."""

    async def run() -> None:
        async for piece in stream:
            pieces.append(piece)

    return asyncio.ensure_future(run())


def _joined(feeds: live.LogFeeds, session_id: uuid.UUID, followers: int) -> bool:
    feed = feeds._feeds.get(session_id)
    return feed is not None and feed.followers == followers


# The bus ---------------------------------------------------------------------------------


async def test_watchers_hear_their_keys_only_and_overflow_is_flagged(bus: Any) -> None:
    mine = bus.watch(("session", "a"))
    other = bus.watch(("session", "b"))
    small = bus.watch(("session", "a"), buffer=2)
    for size in (1, 2, 3):
        bus.publish(events.LogAppended(session_id="a", log_size=size))
    assert [e.log_size for e in mine.drain()] == [1, 2, 3]
    assert other.drain() == []
    assert small.overflowed
    assert len(small.drain()) == 2
    for w in (mine, other, small):
        w.close()
    assert bus.watcher_count() == 0


async def test_events_wait_for_the_commit_and_vanish_with_a_rollback(bus: Any) -> None:
    watch = bus.watch(("jobs",))
    async with transaction():
        events.publish(events.JobQueued())
        assert not watch.changed.is_set()  # not before the commit
    assert len(watch.drain()) == 1

    async def fail() -> None:
        async with transaction():
            events.publish(events.JobQueued())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fail()
    assert watch.drain() == []


def test_a_replica_knows_its_own_payloads_by_their_first_bytes() -> None:
    """The listener skips its own notifications without decoding them: every payload starts
    with its origin, and no other origin's payload starts the same way."""
    event = events.SessionChanged(session_id="s" * 36, status="running")
    mine = events.encode(event, "abc123")
    assert mine.startswith(events.own_prefix("abc123"))
    assert not events.encode(event, "abc1234").startswith(events.own_prefix("abc123"))
    assert not events.encode(event, "abc12").startswith(events.own_prefix("abc123"))
    assert events.decode(mine) == (event, "abc123")


def test_wire_format_round_trips_and_stays_small() -> None:
    event = events.TtyChanged(request_id="r" * 36, session_id="s" * 36, workspace_id="w" * 36)
    payload = events.encode(event, "origin")
    assert len(payload) < 300
    assert events.decode(payload) == (event, "origin")
    assert events.decode('{"t": "FromTheFuture", "o": "x"}') is None
    assert events.decode("not json") is None


@pytest.mark.postgres_only
async def test_postgres_bus_crosses_processes_and_survives_a_killed_listener(
    settings: Settings,
) -> None:
    from delidev import db

    dsn = db.asyncpg_dsn(settings)
    a, b = events.PostgresEventBus(dsn), events.PostgresEventBus(dsn)
    await a.start()
    await b.start()
    try:
        watch = b.watch(("session", "s1"))
        a.publish(events.LogAppended(session_id="s1", log_size=5))
        assert await watch.wait(5)
        assert watch.drain() == [events.LogAppended(session_id="s1", log_size=5)]
        own = a.watch(("session", "s1"))
        a.publish(events.LogAppended(session_id="s1", log_size=6))
        assert await watch.wait(5)
        # Its own NOTIFY is not delivered a second time: nothing arrives within this time
        # (the wait is the behaviour under test; b has it already, a's copy would be as fast).
        await asyncio.sleep(0.2)
        assert len(own.drain()) == 1

        # Kill b's listening connection: it reconnects and tells its watchers to resync.
        watch.drain()
        conn = await asyncpg.connect(dsn)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'delidev-events-listener'"
            )
        finally:
            await conn.close()
        assert killed >= 1
        assert await watch.wait(15)
        assert any(isinstance(e, events.Resync) for e in watch.drain())
        await asyncio.wait_for(b.listening.wait(), 10)
        a.publish(events.LogAppended(session_id="s1", log_size=7))
        assert await watch.wait(5)
        assert events.LogAppended(session_id="s1", log_size=7) in watch.drain()
    finally:
        await a.stop()
        await b.stop()


# Following a log -------------------------------------------------------------------------


async def test_replay_then_follow_then_end(bus: Any) -> None:
    session = await _running()
    await _append(session, 0, "one\n")
    feeds = live.LogFeeds(bus)
    pieces: list[live.LogPiece] = []
    follower = _follow_into(feeds.follow(actor=LOCAL_USER, session_id=session.id), pieces)
    await until(lambda: len(pieces) == 1, what="the replay")
    await _append(session, 1, "two\n")
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    await asyncio.wait_for(follower, 5)
    assert "".join(p.data for p in pieces) == "one\ntwo\n"
    assert [p.offset for p in pieces if p.data] == [0, 4]
    assert pieces[-1].final
    assert pieces[-1].status == Q.SUCCEEDED
    assert len(feeds) == 0  # the shared reader went with its last follower


async def test_output_placed_here_reaches_followers_without_reading_storage(
    bus: Any, sql_counter: SqlCounter
) -> None:
    """The append's event carries the text it placed: the feed pushes it as it is."""
    session = await _running()
    await _append(session, 0, "one\n")
    feeds = live.LogFeeds(bus)
    pieces: list[live.LogPiece] = []
    sql_counter.reset()  # the feed's task, started below, is counted too
    follower = _follow_into(feeds.follow(actor=LOCAL_USER, session_id=session.id), pieces)
    try:
        await until(lambda: len(pieces) == 1, what="the replay")
        await _append(session, 1, "two\n")
        sql_counter.statements.clear()
        await until(lambda: len(pieces) == 2, what="the live piece")
        assert sql_counter.statements == []
        assert (pieces[1].offset, pieces[1].data, pieces[1].next_offset) == (4, "two\n", 8)
    finally:
        follower.cancel()


async def test_output_announced_without_its_text_or_after_a_gap_is_read_from_storage(
    bus: Any,
) -> None:
    """Another replica's event (no text), or one whose text does not start where the feed
    ends (an event lost before it): the feed reads storage and misses nothing."""
    session = await _running()
    feeds = live.LogFeeds(bus)
    pieces: list[live.LogPiece] = []
    follower = _follow_into(feeds.follow(actor=LOCAL_USER, session_id=session.id), pieces)
    try:
        await until(lambda: _joined(feeds, session.id, 1), what="the follower")
        elsewhere = events.bind(events.EventBus())  # as if appended through another replica
        await _append(session, 0, "one\n")
        events.unbind(elsewhere)
        bus.publish(events.LogAppended(session_id=str(session.id), log_size=4))
        await until(lambda: "".join(p.data for p in pieces) == "one\n", what="the read")
        elsewhere = events.bind(events.EventBus())  # its event is lost
        await _append(session, 1, "two\n")
        events.unbind(elsewhere)
        await _append(session, 2, "three\n")  # its text starts past the feed's end
        await until(lambda: "".join(p.data for p in pieces) == "one\ntwo\nthree\n", what="the gap")
    finally:
        follower.cancel()


async def test_resuming_from_any_offset_gives_each_character_once(bus: Any) -> None:
    session = await _running()
    text = "".join(f"line {i}\n" for i in range(50))
    await _append(session, 0, text[:100])
    feeds = live.LogFeeds(bus)
    seen = ""
    stream = feeds.follow(actor=LOCAL_USER, session_id=session.id)
    first = await anext(stream)
    seen += first.data
    await stream.aclose()  # the client drops off after the first message
    await _append(session, 1, text[100:])
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    rest = await _collect(
        feeds.follow(actor=LOCAL_USER, session_id=session.id, from_offset=len(seen))
    )
    assert seen + "".join(p.data for p in rest) == text


async def test_many_followers_each_get_the_whole_log(bus: Any) -> None:
    session = await _running()
    feeds = live.LogFeeds(bus)
    followers = [
        asyncio.create_task(_collect(feeds.follow(actor=LOCAL_USER, session_id=session.id)))
        for _ in range(200)
    ]
    try:
        # Every follower joins (each checks access first).
        await until(lambda: _joined(feeds, session.id, 200), within=30, what="200 followers")
        assert len(feeds) == 1  # one reader for all of them
        assert feeds._feeds[session.id].followers == 200
        lines = [f"{i:05}\n" for i in range(300)]
        for i in range(0, 300, 10):
            await _append(session, i // 10, "".join(lines[i : i + 10]))
        await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
        results = await asyncio.wait_for(asyncio.gather(*followers), 30)
    finally:
        for follower in followers:
            follower.cancel()
    for pieces in results:
        assert "".join(p.data for p in pieces) == "".join(lines)


async def test_a_follower_that_never_reads_slows_nobody(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "WINDOW_CHARS", 1000)  # a small window, to fall out of it
    session = await _running()
    feeds = live.LogFeeds(bus)
    sleeper = feeds.follow(actor=LOCAL_USER, session_id=session.id)
    reader = asyncio.create_task(_collect(feeds.follow(actor=LOCAL_USER, session_id=session.id)))
    await until(lambda: _joined(feeds, session.id, 1), what="the reader")
    text = "".join(f"{i:09}\n" for i in range(1000))  # 10,000 characters
    for i in range(0, 1000, 50):
        await _append(session, i // 50, text[i * 10 : (i + 50) * 10])
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    pieces = await asyncio.wait_for(reader, 10)
    assert "".join(p.data for p in pieces) == text
    # The one that slept catches up from storage, missing nothing.
    late = await _collect(sleeper)
    assert "".join(p.data for p in late) == text


async def test_following_a_deleted_or_unknown_session(bus: Any) -> None:
    session = await _running()
    feeds = live.LogFeeds(bus)
    with pytest.raises(NotFound):
        await _collect(feeds.follow(actor=LOCAL_USER, session_id=uuid.uuid4()))
    follower = asyncio.create_task(_collect(feeds.follow(actor=LOCAL_USER, session_id=session.id)))
    await until(lambda: _joined(feeds, session.id, 1), what="the follower")
    task = await m.UnitTask.get(agent_task_id=session.agent_task_id)
    await tasks.delete_task(actor=LOCAL_USER, task_id=task.id)
    with pytest.raises(NotFound):
        await asyncio.wait_for(follower, 5)


# Task, TTY and worker updates -------------------------------------------------------------


async def test_task_updates_follow_a_task_through_its_life(bus: Any) -> None:
    session = await _running()
    task = await m.UnitTask.get(agent_task_id=session.agent_task_id)
    seen: list[live.TaskUpdate] = []

    async def watch() -> None:
        async for update in live.task_updates(actor=LOCAL_USER, bus=bus, task_id=task.id):
            seen.append(update)

    def statuses() -> list[m.UnitTaskStatus]:
        return [u.task.status for u in seen if isinstance(u.task, m.UnitTask)]

    watcher = asyncio.create_task(watch())
    await until(lambda: bus.watcher_count() == 1)
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    await until(lambda: m.UnitTaskStatus.IN_REVIEW in statuses())
    await tasks.approve_task(actor=LOCAL_USER, task_id=task.id)
    await until(lambda: m.UnitTaskStatus.APPROVED in statuses())
    watcher.cancel()
    assert statuses()[-1] == m.UnitTaskStatus.APPROVED


async def test_workspace_task_updates_and_deletion(bus: Any) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    seen: list[live.TaskUpdate] = []

    async def watch() -> None:
        async for update in live.task_updates(actor=LOCAL_USER, bus=bus, workspace_id=ws.id):
            seen.append(update)

    watcher = asyncio.create_task(watch())
    await until(lambda: bus.watcher_count() == 1)
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="x")
    await until(lambda: len(seen) >= 1)
    await tasks.delete_task(actor=LOCAL_USER, task_id=task.id)
    # Nothing more arrives for it: the next update is the next task's (updates keep order).
    later = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="y")
    await until(lambda: len(seen) >= 3)
    watcher.cancel()
    assert [u.task_id for u in seen] == [task.id, task.id, later.id]
    assert seen[0].task is not None
    assert seen[1].task is None


async def test_a_subscriber_that_falls_behind_is_closed_with_a_reason(bus: Any) -> None:
    ws = await make_workspace()
    stream = live.task_updates(actor=LOCAL_USER, bus=bus, workspace_id=ws.id)
    first = asyncio.ensure_future(anext(stream))
    await until(lambda: bus.watcher_count() == 1)
    for _ in range(events.WATCH_BUFFER + 10):
        bus.publish(events.TaskChanged(task_id=str(uuid.uuid4()), workspace_id=str(ws.id)))
    with pytest.raises(FailedPrecondition) as info:
        await asyncio.wait_for(first, 5)
    assert "fell too far behind" in info.value.message


async def test_tty_requests_are_announced(bus: Any) -> None:
    session = await _running()
    task = await m.UnitTask.get(agent_task_id=session.agent_task_id)
    stream = live.tty_requests(actor=LOCAL_USER, bus=bus, workspace_id=task.workspace_id)
    nxt = asyncio.ensure_future(anext(stream))
    await until(lambda: bus.watcher_count() == 1)
    asked = await sessions.create_tty_request(
        session_id=session.id,
        prompt="Which branch?",
        input_type=m.TtyInputType.TEXT,
        expires_in=dt.timedelta(minutes=1),
    )
    got = await asyncio.wait_for(nxt, 5)
    assert got.id == asked.id
    await stream.aclose()


async def test_a_follower_loses_access_when_the_session_stops_being_theirs(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "AUTH_RECHECK_S", 0.0)  # check before every piece
    session = await _running()
    feeds = live.LogFeeds(bus)
    pieces: list[live.LogPiece] = []
    follower = _follow_into(feeds.follow(actor=LOCAL_USER, session_id=session.id), pieces)
    await _append(session, 0, "visible\n")
    await until(lambda: any(p.data == "visible\n" for p in pieces), what="the first line")
    # The workspace moves to another owner: the local user may no longer read it.
    task = await m.UnitTask.get(agent_task_id=session.agent_task_id)
    other = await m.User.create(
        email="someone@example.com", name="Someone", oidc_issuer="x", oidc_subject="y"
    )
    await m.Workspace.filter(id=task.workspace_id).update(user_id=other.id)
    await _append(session, 1, "secret\n")
    with pytest.raises(NotFound):
        await asyncio.wait_for(follower, 5)


async def test_followers_of_a_session_share_their_access_rechecks(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hundred followers re-checking every 50 ms would send two thousand queries a second;
    the followers of one feed share one check per user instead."""
    monkeypatch.setattr(live, "AUTH_RECHECK_S", 0.05)
    session = await _running()
    calls: list[uuid.UUID] = []
    real = sessions.get_session

    async def counted(**kwargs: Any) -> m.AgentSession:
        calls.append(kwargs["session_id"])
        return await real(**kwargs)

    monkeypatch.setattr(live.session_service, "get_session", counted)
    feeds = live.LogFeeds(bus)
    followers = [
        asyncio.create_task(_collect(feeds.follow(actor=LOCAL_USER, session_id=session.id)))
        for _ in range(100)
    ]
    try:
        await until(lambda: (f := feeds._feeds.get(session.id)) is not None and f.followers == 100)
        joined = len(calls)  # each follower checks once when it starts
        assert joined >= 100
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(20):
            await _append(session, i, f"line {i}\n")
            # Output arrives over time, so that re-checks fall due while the followers read
            # (the clock the behaviour under test runs by, not a wait for something).
            await asyncio.sleep(0.03)
        await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
        results = await asyncio.wait_for(asyncio.gather(*followers), 30)
        elapsed = loop.time() - started
    finally:
        for follower in followers:
            follower.cancel()
    assert all("".join(p.data for p in pieces).count("\n") == 20 for pieces in results)
    rechecks = len(calls) - joined
    # At most one shared check per half interval, where each follower on its own would
    # have made one per interval (about 100 times as many).
    assert 0 < rechecks <= elapsed / (live.AUTH_RECHECK_S / 2) + 2, (rechecks, elapsed)


async def test_a_follower_whose_token_is_revoked_is_cut_off(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "AUTH_RECHECK_S", 0.0)  # check before every piece
    user = await m.User.create(email="ada@example.com", name="Ada")
    pair = await auth.issue_tokens(settings=SETTINGS, user=user)
    actor = await auth.authenticate(settings=SETTINGS, token=pair.access_token)
    ws = await make_workspace(actor)
    group = await make_group(ws, [await make_repository(ws, actor)], actor)
    task = await tasks.create_unit_task(actor=actor, repository_group_id=group.id, prompt="p")
    session = await start_latest(task.agent_task_id)
    feeds = live.LogFeeds(bus)
    pieces: list[live.LogPiece] = []
    follower = _follow_into(feeds.follow(actor=actor, session_id=session.id), pieces)
    await _append(session, 0, "visible\n")
    await until(lambda: any(p.data == "visible\n" for p in pieces), what="the first line")
    assert not follower.done()
    await auth.logout(settings=SETTINGS, actor=actor)
    await _append(session, 1, "after logout\n")
    with pytest.raises(Unauthenticated, match="revoked"):
        await asyncio.wait_for(follower, 5)


async def test_pushed_followers_get_every_character_once_in_order(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caught-up followers get live output pushed by the feed. Whatever mix of pieces is
    pushed, pushed with a send left pending (a slow reader), or yielded (catch-up, after a
    re-check), each follower sees the log once, in order; one that leaves is pushed
    nothing more."""
    # Re-checks fall due only where the loop below makes them (a clock that jumps).
    monkeypatch.setattr(live, "AUTH_RECHECK_S", 3600.0)
    session = await _running()
    feeds = live.LogFeeds(bus)

    class Follower:
        def __init__(self, slow_every: int) -> None:
            self.received: list[tuple[int, str]] = []
            self.pushed = 0
            self.slow_every = slow_every

        def push(self, piece: live.LogPiece) -> Any:
            self.pushed += 1
            if self.slow_every and self.pushed % self.slow_every == 0:

                async def later() -> None:
                    # The socket's buffer is full for a moment: the slow reader under test.
                    await asyncio.sleep(0.02)
                    self.received.append((piece.offset, piece.data))

                return asyncio.ensure_future(later())
            self.received.append((piece.offset, piece.data))
            return None

        async def run(self) -> None:
            async for piece in feeds.follow(
                actor=LOCAL_USER, session_id=session.id, push=self.push
            ):
                self.received.append((piece.offset, piece.data))

    followers = [Follower(slow_every=k) for k in (0, 0, 1, 2, 3, 7)]
    tasks_ = [asyncio.create_task(f.run()) for f in followers]
    leaver = Follower(slow_every=0)
    leaving = asyncio.create_task(leaver.run())
    await until(lambda: _joined(feeds, session.id, 7))
    lines = [f"line {i:04} " + "x" * (i % 50) + "\n" for i in range(400)]

    def all_have(text: str) -> bool:
        return all("".join(d for _, d in f.received) == text for f in followers)

    for i in range(0, 400, 8):
        due = i % 64 == 0
        if due:  # every follower must re-check its access before it gets this output
            monkeypatch.setattr(live, "AUTH_RECHECK_S", 0.0)
        await _append(session, i // 8, "".join(lines[i : i + 8]))
        if i == 80:
            leaving.cancel()
            pushed_before = leaver.pushed
        if due:
            await until(functools.partial(all_have, "".join(lines[: i + 8])), what="re-checks")
            monkeypatch.setattr(live, "AUTH_RECHECK_S", 3600.0)
        else:
            # Output arrives over time while slow sends are pending: the mix under test.
            await asyncio.sleep(0.01)
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    await asyncio.wait_for(asyncio.gather(*tasks_), 30)
    expected = "".join(lines)
    for f in followers:
        offsets = [o for o, _ in f.received]
        assert offsets == sorted(offsets)
        assert "".join(d for _, d in f.received) == expected
        assert all(
            o == sum(len(d) for _, d in f.received[:n]) for n, (o, _) in enumerate(f.received)
        )
    assert sum(f.pushed for f in followers) > 100  # the push path did the work
    assert leaver.pushed == pushed_before  # nothing after it left


async def test_update_subscriptions_opened_after_logout_are_refused(bus: Any) -> None:
    user = await m.User.create(email="bo@example.com", name="Bo")
    pair = await auth.issue_tokens(settings=SETTINGS, user=user)
    actor = await auth.authenticate(settings=SETTINGS, token=pair.access_token)
    ws = await make_workspace(actor)
    group = await make_group(ws, [await make_repository(ws, actor)], actor)
    task = await tasks.create_unit_task(actor=actor, repository_group_id=group.id, prompt="p")
    await auth.logout(settings=SETTINGS, actor=actor)  # the connection's actor is now stale
    for stream in (
        live.task_updates(actor=actor, bus=bus, task_id=task.id),
        live.task_updates(actor=actor, bus=bus, workspace_id=ws.id),
        live.tty_requests(actor=actor, bus=bus, workspace_id=ws.id),
        live.worker_updates(actor=actor, bus=bus),
    ):
        with pytest.raises(Unauthenticated, match="revoked"):
            await asyncio.wait_for(anext(stream), 5)
