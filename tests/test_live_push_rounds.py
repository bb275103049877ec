"""A log feed's push round cut short: every follower it holds is parked again or released,
and none loses or repeats a character. (A push that raises is covered end to end in
``tests/e2e/test_live_push.py``; a cancelled round cannot be caused from outside.)"""

from __future__ import annotations

import asyncio

import pytest

from delidev import events
from delidev.auth.principal import LOCAL_USER
from delidev.services import live, sessions, tasks
from tests.factories import make_group, make_repository, make_workspace, start_latest
from tests.waiting import until

pytestmark = pytest.mark.usefixtures("database")


async def test_a_cancelled_round_releases_the_followers_it_had_not_reached(
    bus: events.EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "PUSH_BATCH", 1)  # the round lets other tasks run after each push
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    session = await start_latest(task.agent_task_id)
    feeds = live.LogFeeds(bus)
    received: list[list[tuple[int, str]]] = [[] for _ in range(5)]

    def pusher(n: int) -> live.Push:
        def push(piece: live.LogPiece) -> None:
            received[n].append((piece.offset, piece.data))
            if n == 1:  # the round is cancelled while it is under way (as at shutdown)
                current = asyncio.current_task()
                assert current is not None
                current.cancel()

        return push

    async def follow(n: int) -> None:
        async for piece in feeds.follow(actor=LOCAL_USER, session_id=session.id, push=pusher(n)):
            received[n].append((piece.offset, piece.data))

    followers = [asyncio.create_task(follow(n)) for n in range(5)]
    try:
        await until(lambda: (f := feeds._feeds.get(session.id)) is not None and len(f.pushed) == 5)
        feed = feeds._feeds[session.id]
        await sessions.append_log(
            session_id=session.id, chunks=[sessions.LogChunkIn(sequence=0, data="hello\n")]
        )
        await until(lambda: feed.task is not None and feed.task.done())
        # Those pushed to before the cut got the piece once; the others read it themselves.
        await until(lambda: all(r == [(0, "hello\n")] for r in received))
        # ... and no repeat comes after it: nothing arrives within this time (the wait is the
        # behaviour under test: the round's feed is gone, nothing else could mark an end).
        await asyncio.sleep(0.05)
        assert all(r == [(0, "hello\n")] for r in received), received
    finally:
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
