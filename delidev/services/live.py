"""Live views: a session's log replayed then followed (here), and task, TTY and worker
updates (``services.live_updates``, re-exported here).

Both transports (Connect ``StreamLog``, GraphQL subscriptions) iterate these generators.

Logs: each process keeps one ``_Feed`` per followed session, whatever the number of its
followers. The feed's single reader wakes on the session's events (``LogAppended``,
``SessionChanged``, or a ``Resync`` after events were lost), reads the new output from storage
once, and keeps a bounded window of recent text in memory. Output placed by this process
comes with its event (``LogAppended.text``) and goes into the window without that read: a
line reaches the followers as soon as its AppendLog committed. A follower reads from that window
at its own offset; one that fell behind the window (or asked for older output) reads from
storage until it is back in it. So a follower that does not read slows nobody, and every
follower gets every character once, in order, from any offset.

Each piece carries the offset to resume from (``next_offset``). It is ``offset + len(data)``
except for the marker of a range dropped by the log's size cap (see
services/sessions/output_log.py), which stands for the whole range: the window holds
contiguous text only, so when the feed's read meets a marker the window starts again past
the range, and followers before it get the marker from storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from delidev import db_outage, events, metrics
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import InvalidArgument, NotFound, Unavailable
from delidev.services import auth as auth_service
from delidev.services import prepared
from delidev.services import sessions as session_service
from delidev.services.live_updates import (
    TaskUpdate,
    WorkerUpdate,
    budget_warnings,
    task_updates,
    tty_requests,
    worker_updates,
)
from delidev.services.text_window import TextWindow

__all__ = [
    "AUTH_RECHECK_S",
    "MAX_FROM_OFFSET",
    "PIECE_CHARS",
    "PUSH_BATCH",
    "RECHECK_S",
    "WINDOW_CHARS",
    "LogFeeds",
    "LogPiece",
    "Push",
    "TaskUpdate",
    "WorkerUpdate",
    "budget_warnings",
    "check_from_offset",
    "task_updates",
    "tty_requests",
    "worker_updates",
]

log = logging.getLogger(__name__)

PIECE_CHARS = 64 * 1024
# The largest offset a log may be followed from: int64, StreamLogRequest.from_offset's type.
MAX_FROM_OFFSET = 2**63 - 1
WINDOW_CHARS = 4 * 1024 * 1024
# A follower re-checks storage this often even without events (a safety net, not the clock
# it runs by).
RECHECK_S = 15.0
# A follower's right to read the session is checked at the start and again this often
# (not for every piece: a thousand followers would each query for every chunk). The
# followers of one session in one process share a re-check per user: one query, not one
# per follower.
AUTH_RECHECK_S = 30.0


@dataclass(frozen=True, slots=True)
class LogPiece:
    """``data`` starts at offset ``offset`` of the log (code points) and the next piece at
    ``next_offset``: ``offset + len(data)``, or further when ``data`` is the marker of a
    dropped range. The last piece has ``final`` set."""

    offset: int
    data: str
    status: m.AgentSessionStatus
    next_offset: int
    final: bool = False


# Hands a live piece to a follower's transport at once. Returns None when the piece is
# sent, or an awaitable that finishes sending it (the follower then goes on by itself).
Push = Callable[[LogPiece], "Awaitable[None] | None"]
# How many pushes the feed makes before letting other tasks run.
PUSH_BATCH = 256


def _recheck_due(checked_at: float, now: float) -> bool:
    """Whether a follower whose access was last checked at ``checked_at`` must be checked
    again before it gets more output."""
    return now - checked_at >= AUTH_RECHECK_S


@dataclass(eq=False, slots=True)
class _Pushed:
    """A caught-up follower waiting for the feed to push new output to it."""

    push: Push
    offset: int  # advanced only once ``push`` took the piece
    checked_at: float  # when the follower's access was last checked
    released: asyncio.Future[None]
    pending: Awaitable[None] | None = None
    active: bool = True
    failed: bool = False  # ``push`` raised: the follower goes on without it

    def release(self) -> None:
        self.active = False
        if not self.released.done():
            self.released.set_result(None)


class _Feed:
    def __init__(self, session_id: UUID, watch: events.Watch) -> None:
        self.session_id = session_id
        self.watch = watch
        self.base = 0  # offset of the window's first character
        self.window = TextWindow()
        self.status = m.AgentSessionStatus.QUEUED
        self.final = False
        self.gone = False
        self.followers = 0
        self.advanced = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.pushed: list[_Pushed] = []
        # The latest access check per (user, worker?, token): when it started, its outcome.
        self._checks: dict[
            tuple[UUID | None, bool, str | None], tuple[float, asyncio.Future[Any]]
        ] = {}

    @property
    def end(self) -> int:
        return self.base + len(self.window)

    async def recheck(self, actor: Principal) -> float:
        """Checks again that ``actor`` is still signed in and may read the session, sharing a
        check that started less than half an ``AUTH_RECHECK_S`` ago. Returns when the check
        it relied on started: the next one is due ``AUTH_RECHECK_S`` after that.

        Raises: Unauthenticated, NotFound."""
        loop = asyncio.get_running_loop()
        key = (actor.user_id, actor.is_worker, actor.token_id)
        latest = self._checks.get(key)
        if latest is None or loop.time() - latest[0] >= AUTH_RECHECK_S / 2:
            check = asyncio.ensure_future(self._check(actor))
            latest = (loop.time(), check)
            self._checks[key] = latest
        # Shielded: a follower that goes away does not cancel the others' check.
        await asyncio.shield(latest[1])
        return latest[0]

    async def _check(self, actor: Principal) -> None:
        await auth_service.ensure_still_signed_in(actor=actor)
        await session_service.get_session(actor=actor, session_id=self.session_id)

    def _announce(self) -> None:
        self.advanced.set()
        self.advanced = asyncio.Event()

    def join(self, push: Push, offset: int, checked_at: float) -> _Pushed:
        member = _Pushed(push, offset, checked_at, asyncio.get_running_loop().create_future())
        self.pushed.append(member)
        return member

    async def push_new_output(self) -> None:
        """Pushes what the window holds past each caught-up follower's offset, in order,
        from this one task (no wake-up of a task per follower). A follower whose transport
        could not take a piece at once, whose access is due for a re-check (it is checked
        before it gets more), whose ``push`` raised, or whose session ended goes on by
        itself. Whatever happens to the round, each follower is parked again or released."""
        members, self.pushed = self.pushed, []
        loop = asyncio.get_running_loop()
        pieces: dict[int, LogPiece] = {}  # by offset: followers at one offset share a piece
        pushes = 0
        settled = 0  # members[:settled] are parked again or released
        try:
            end = self.end  # the window grows only in this task (``pump``), not meanwhile
            for member in members:
                try:
                    while (
                        member.active
                        and self.base <= member.offset < end
                        and not _recheck_due(member.checked_at, loop.time())
                    ):
                        piece = self._piece_at(member.offset, pieces)
                        member.pending = member.push(piece)
                        member.offset = piece.next_offset
                        if member.pending is not None:
                            member.release()
                        pushes += 1
                        if pushes % PUSH_BATCH == 0:
                            await asyncio.sleep(0)
                except Exception:
                    log.exception("pushing log output of session %s failed", self.session_id)
                    member.failed = True
                stay = (
                    member.active
                    and not member.failed
                    and member.offset == end
                    and not self.final
                    and not _recheck_due(member.checked_at, loop.time())
                )
                if stay:
                    self.pushed.append(member)
                else:
                    member.release()
                settled += 1
        finally:
            for member in members[settled:]:  # the round was cancelled
                member.release()

    def _piece_at(self, offset: int, pieces: dict[int, LogPiece]) -> LogPiece:
        piece = pieces.get(offset)
        if piece is None:
            start = offset - self.base
            data = self.window.slice(start, start + PIECE_CHARS)
            piece = pieces[offset] = LogPiece(
                offset=offset, data=data, status=self.status, next_offset=offset + len(data)
            )
        return piece

    async def refresh(self) -> None:
        session = await prepared.get_one(m.AgentSession, id=self.session_id)
        if session is None:
            self.gone = self.final = True
            self._announce()
            return
        if not self.ready.is_set():  # start the window at the current end of the log
            self.base = session.log_size
        while self.end < session.log_size:
            read = await session_service.read_stored_log(
                session, offset=self.end, limit=PIECE_CHARS * 16
            )
            if not read.content:
                break
            if read.next_offset - read.offset != len(read.content):
                # The read met the marker of a dropped range: the window holds text only, so
                # it starts again past the range, and followers before it read storage.
                self.window.clear()
                self.base = read.next_offset
                continue
            self.window.append(read.content)
        self._trim()
        self.status = session.status
        self.final = session.status in session_service.FINAL and self.end >= session.log_size
        self.ready.set()
        self._announce()

    def _trim(self) -> None:
        if len(self.window) > WINDOW_CHARS:
            cut = len(self.window) - WINDOW_CHARS // 2
            self.window.drop_front(cut)
            self.base += cut

    def take_placed(self, news: list[events.Event]) -> bool:
        """Adds to the window the text that this process placed, as its ``LogAppended``
        events carry it, when they carry all that is new (they were published after the
        commit, in commit order); returns False when storage must be read instead: another
        replica's or a cut log's event (no text), a gap, a change of status, a resync or
        lost events."""
        if not news or not self.ready.is_set() or self.watch.overflowed:
            return False
        end = self.end
        texts: list[str] = []
        for event in news:
            if not isinstance(event, events.LogAppended) or event.text is None:
                return False
            start = event.log_size - len(event.text)
            if start > end:
                return False
            if event.log_size > end:
                texts.append(event.text[end - start :])
                end = event.log_size
        for text in texts:
            self.window.append(text)
        self._trim()
        self._announce()
        return True

    async def pump(self) -> None:
        while not self.final:
            try:
                await self.watch.wait(RECHECK_S)
                news = self.watch.drain()
                if not self.take_placed(news):
                    self.watch.overflowed = False  # storage has everything the lost events said
                    await self.refresh()
                await self.push_new_output()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                db_outage.log_failure(
                    log,
                    error,
                    "log feed of session %s failed to refresh; retrying",
                    self.session_id,
                )
                await asyncio.sleep(1.0)


def _shutting_down(offset: int) -> Unavailable:
    return Unavailable(f"the server is shutting down: reconnect and resume from offset {offset}")


class LogFeeds:
    """The shared log readers of one process (one per followed session)."""

    def __init__(self, bus: events.EventBus) -> None:
        self._bus = bus
        self._feeds: dict[UUID, _Feed] = {}
        self.closed = False

    def close(self) -> None:
        """The server shuts down: every follower ends with Unavailable at its current
        offset (it resumes from there through another replica), and no new one starts."""
        self.closed = True
        for feed in list(self._feeds.values()):
            members, feed.pushed = feed.pushed, []
            for member in members:  # parked pushed followers go back to their own loop
                member.release()
            feed._announce()

    def __len__(self) -> int:
        return len(self._feeds)

    async def _acquire(self, session_id: UUID) -> _Feed:
        feed = self._feeds.get(session_id)
        if feed is None:
            # Watch first, then read: nothing appended in between can be missed.
            feed = _Feed(session_id, self._bus.watch(("session", str(session_id))))
            self._feeds[session_id] = feed
            try:
                await feed.refresh()
            except BaseException:
                self._drop(feed)
                raise
            feed.task = asyncio.create_task(feed.pump(), name=f"log-feed-{session_id}")
        feed.followers += 1
        metrics.follower_attached()
        try:
            await feed.ready.wait()
        except BaseException:  # cancelled while the feed starts: not a follower after all
            self._release(feed)
            raise
        return feed

    def _release(self, feed: _Feed) -> None:
        feed.followers -= 1
        metrics.follower_detached()
        if feed.followers <= 0:
            self._drop(feed)

    def _drop(self, feed: _Feed) -> None:
        if self._feeds.get(feed.session_id) is feed:
            del self._feeds[feed.session_id]
        feed.watch.close()
        if feed.task is not None:
            feed.task.cancel()

    async def follow(
        self,
        *,
        actor: Principal,
        session_id: UUID,
        from_offset: int = 0,
        push: Push | None = None,
    ) -> AsyncGenerator[LogPiece, None]:
        """The log from ``from_offset``: what is stored, then live output until the session
        ends (a last piece with ``final`` set carries its status). The caller's access is
        checked at the start and every ``AUTH_RECHECK_S`` while it follows (a revoked or
        expired token ends the stream).

        With ``push``, live output is not yielded once the follower has caught up: the
        feed hands each new piece to ``push`` itself, in order, until ``push`` could not
        send one at once (a slow reader), the session ends or access is due for a
        re-check (no piece is pushed before it); the follower then goes on by itself. If
        ``push`` raises, the piece it failed to take is yielded and so is the rest.
        Catch-up and the final piece are always yielded.

        Raises: InvalidArgument, NotFound (also for another user's session),
        Unauthenticated, and whatever ``push``'s pending sends raise.
        """
        check_from_offset(from_offset)
        loop = asyncio.get_running_loop()
        checked_at = loop.time()
        await auth_service.ensure_still_signed_in(actor=actor)
        await session_service.get_session(actor=actor, session_id=session_id)
        if self.closed:
            raise _shutting_down(from_offset)
        feed = await self._acquire(session_id)
        try:
            offset = from_offset
            while True:
                if self.closed:
                    raise _shutting_down(offset)
                if _recheck_due(checked_at, loop.time()):
                    checked_at = await feed.recheck(actor)
                advanced = feed.advanced
                if offset < feed.base:  # behind the window: catch up from storage
                    session = await prepared.get_one(m.AgentSession, id=session_id)
                    if session is None:
                        raise NotFound(f"session {session_id} not found", field="session_id")
                    read = await session_service.read_stored_log(
                        session, offset=offset, limit=PIECE_CHARS
                    )
                    if read.content:
                        yield LogPiece(
                            offset=offset,
                            data=read.content,
                            status=read.status,
                            next_offset=read.next_offset,
                        )
                        offset = read.next_offset
                        continue
                if feed.base <= offset < feed.end:
                    start = offset - feed.base
                    data = feed.window.slice(start, start + PIECE_CHARS)
                    yield LogPiece(
                        offset=offset,
                        data=data,
                        status=feed.status,
                        next_offset=offset + len(data),
                    )
                    offset += len(data)
                    continue
                if feed.gone:
                    raise NotFound(f"session {session_id} was deleted", field="session_id")
                if feed.final and offset >= feed.end:
                    yield LogPiece(
                        offset=offset, data="", status=feed.status, next_offset=offset, final=True
                    )
                    return
                if push is not None and offset == feed.end:
                    # Caught up: the feed pushes the next output straight to the transport.
                    member = feed.join(push, offset, checked_at)
                    try:
                        await member.released
                    finally:
                        member.active = False
                    if member.pending is not None:
                        await member.pending  # the last piece's send; raises its error
                    offset = member.offset
                    if member.failed:
                        push = None  # the rest comes from this generator
                    continue
                await advanced.wait()
        finally:
            self._release(feed)


def check_from_offset(from_offset: int) -> None:
    """The one rule for where a log may be followed from, whatever the transport: an
    offset in code points, 0 up to the largest int64 (the wire type of
    ``StreamLogRequest.from_offset``). An offset past the log's end is allowed: the stream
    waits there (or, for an ended session, ends at once).

    Raises: InvalidArgument.
    """
    if from_offset < 0:
        raise InvalidArgument("from_offset must not be negative", field="from_offset")
    if from_offset > MAX_FROM_OFFSET:
        raise InvalidArgument(f"from_offset must be at most {MAX_FROM_OFFSET}", field="from_offset")
