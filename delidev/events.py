"""Events: what changed, told to whoever waits for it, after the change is committed.

Services call ``publish(...)`` once their transaction has committed. The bus of the app that
serves the current request is found through a context variable that the app binds for each
request and background task (``bind``), so services need no extra parameter, and tests that
call services without an app publish into nothing.

Events carry ids and sizes only. Readers never trust more than that: they re-read the
database (with the caller's permissions), so a lost or duplicated event costs latency, never
correctness. One exception stays inside the process that committed it: ``LogAppended`` hands
the text it placed to this process's log feeds, which already checked their followers'
access, so that live output is not read back from the database it was just written to. Two buses:

- ``EventBus``: in-process (SQLite mode: one server process);
- ``PostgresEventBus``: the same, plus PostgreSQL LISTEN/NOTIFY so that every replica hears
  what any replica published. One dedicated connection listens, another sends; after the
  listener's connection ends it reconnects at once (notifications sent meanwhile are lost),
  then every watcher is woken with ``Resync``, to re-read what it follows or, when it cannot
  re-read exactly, to end with a reason its client acts on.

Watchers subscribe by key (``("session", id)``, ``("workspace", id)``, ...). Delivering to a
watcher never blocks the publisher: it appends to a bounded buffer and sets a flag. A
watcher that lets its buffer overflow is marked ``overflowed`` and must resynchronise from
storage (or give up with a clear reason).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "delidev_events"
LISTENER_NAME = "delidev-events-listener"  # application_name of the listening connection
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; ours are ids and numbers.
MAX_PAYLOAD_BYTES = 7900
WATCH_BUFFER = 1024
# Metadata of an event field that stays in this process (``encode`` leaves it out).
LOCAL = "local"

Key = tuple[Hashable, ...]


@dataclass(frozen=True, slots=True)
class JobQueued:
    """A session was queued: waiting workers should try to claim."""

    def keys(self) -> list[Key]:
        return [("jobs",)]


@dataclass(frozen=True, slots=True)
class SecretsArrived:
    """Secrets for a task arrived: a job waiting for them may now be handed out."""

    task_id: str

    def keys(self) -> list[Key]:
        return [("jobs",)]


@dataclass(frozen=True, slots=True)
class SecretsRelayed:
    """One part of a sealed message between the replicas' secret stores
    (``services.secret_relay``): nobody watches it, the relay listens."""

    sender: str
    message: str
    part: int
    parts: int
    data: str

    def keys(self) -> list[Key]:
        return []


@dataclass(frozen=True, slots=True)
class LogAppended:
    """A session's log grew to ``log_size``. ``text``, when set, is the text placed last,
    ending at ``log_size``: it is for this process's log feeds only (they add it to their
    window without reading storage again, see services/live.py) and is never sent to other
    replicas, whose feeds read storage."""

    session_id: str
    log_size: int
    text: str | None = field(default=None, compare=False, metadata={LOCAL: True})

    def keys(self) -> list[Key]:
        return [("session", self.session_id)]


@dataclass(frozen=True, slots=True)
class SessionChanged:
    session_id: str
    status: str

    def keys(self) -> list[Key]:
        return [("session", self.session_id)]


@dataclass(frozen=True, slots=True)
class TaskChanged:
    """A task, one of its sessions, or one of its composite nodes changed (or it is gone)."""

    task_id: str
    workspace_id: str

    def keys(self) -> list[Key]:
        return [("task", self.task_id), ("workspace-tasks", self.workspace_id)]


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A workspace's spending reached its warning threshold for the period."""

    workspace_id: str
    spent_micros: int
    budget_micros: int

    def keys(self) -> list[Key]:
        return [("workspace-budget", self.workspace_id)]


@dataclass(frozen=True, slots=True)
class TtyChanged:
    """A TTY question was asked, answered, timed out or cancelled."""

    request_id: str
    session_id: str
    workspace_id: str

    def keys(self) -> list[Key]:
        return [("tty", self.request_id), ("workspace-tty", self.workspace_id)]


@dataclass(frozen=True, slots=True)
class WorkerChanged:
    worker_id: str

    def keys(self) -> list[Key]:
        return [("workers",), ("worker", self.worker_id)]


@dataclass(frozen=True, slots=True)
class WorkspaceDeleted:
    """A workspace is gone (after each of its tasks was announced): its subscriptions end."""

    workspace_id: str

    def keys(self) -> list[Key]:
        return [("workspace-tasks", self.workspace_id), ("workspace-tty", self.workspace_id)]


@dataclass(frozen=True, slots=True)
class Resync:
    """Events may have been lost (this replica's listener reconnected, or another replica
    could not send everything it published): re-read what you follow."""

    def keys(self) -> list[Key]:
        return []


Event = (
    JobQueued
    | BudgetWarning
    | SecretsArrived
    | SecretsRelayed
    | LogAppended
    | SessionChanged
    | TaskChanged
    | TtyChanged
    | WorkerChanged
    | WorkspaceDeleted
    | Resync
)
_TYPES: dict[str, type[Any]] = {
    t.__name__: t
    for t in (
        JobQueued,
        BudgetWarning,
        SecretsArrived,
        SecretsRelayed,
        LogAppended,
        SessionChanged,
        TaskChanged,
        TtyChanged,
        WorkerChanged,
        WorkspaceDeleted,
        Resync,
    )
}


def encode(event: Event, origin: str) -> str:
    """The NOTIFY payload: the origin first (``own_prefix``), then the kind and the fields
    that leave the process. Events are flat (ids, sizes, strings), so no deep copy."""
    names = _WIRE_FIELDS.get(type(event))
    if names is None:
        names = _WIRE_FIELDS[type(event)] = tuple(
            f.name for f in fields(event) if not f.metadata.get(LOCAL)
        )
    data = {name: getattr(event, name) for name in names}
    return json.dumps({"o": origin, "t": type(event).__name__, **data})


def own_prefix(origin: str) -> str:
    """How every payload ``encode`` writes for ``origin`` starts: a replica skips its own
    notifications by this prefix, without decoding them."""
    return json.dumps({"o": origin})[:-1]


_WIRE_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def decode(payload: str) -> tuple[Event, str] | None:
    """The event and its origin, or None for a payload this version does not know."""
    try:
        data = json.loads(payload)
        kind = _TYPES[data.pop("t")]
        origin = str(data.pop("o"))
        names = {f.name for f in fields(kind)}
        return kind(**{k: v for k, v in data.items() if k in names}), origin
    except (ValueError, KeyError, TypeError):
        return None


class Watch:
    """Events for some keys, buffered up to ``WATCH_BUFFER``; ``changed`` is set on arrival."""

    def __init__(self, bus: EventBus, keys: Iterable[Key], buffer: int = WATCH_BUFFER) -> None:
        self._bus = bus
        self.keys = list(keys)
        self.events: collections.deque[Event] = collections.deque()
        self._buffer = buffer
        self.overflowed = False
        self.changed = asyncio.Event()
        self.delivered_at = 0.0  # time.monotonic() of the latest event

    def deliver(self, event: Event) -> None:
        self.delivered_at = time.monotonic()
        if len(self.events) >= self._buffer:
            self.overflowed = True
        else:
            self.events.append(event)
        self.changed.set()

    def drain(self) -> list[Event]:
        items = list(self.events)
        self.events.clear()
        self.changed.clear()
        return items

    async def wait(self, seconds: float | None = None) -> bool:
        """Waits for an event (or a resync); False after ``seconds`` without one."""
        if self.changed.is_set():
            return True
        try:
            await asyncio.wait_for(self.changed.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._bus._unwatch(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class EventBus:
    """In-process bus: publishers call ``publish``; listeners and watchers hear at once."""

    remote: ClassVar[bool] = False

    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []
        self._watches: dict[Key, set[Watch]] = collections.defaultdict(set)
        self.origin = uuid.uuid4().hex[:12]

    # Subscribing ---------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """A listener hears every event; it must not block."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def watch(self, *keys: Key, buffer: int = WATCH_BUFFER) -> Watch:
        w = Watch(self, keys, buffer)
        for key in w.keys:
            self._watches[key].add(w)
        return w

    def _unwatch(self, w: Watch) -> None:
        for key in w.keys:
            watchers = self._watches.get(key)
            if watchers is not None:
                watchers.discard(w)
                if not watchers:
                    del self._watches[key]

    def watcher_count(self) -> int:
        return len({id(w) for ws in self._watches.values() for w in ws})

    # Publishing -----------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one broken listener must not starve the others
                log.exception("event listener failed on %s", type(event).__name__)
        if isinstance(event, Resync):
            for w in {w for ws in self._watches.values() for w in ws}:
                w.deliver(event)
            return
        seen: set[int] = set()
        for key in event.keys():  # noqa: SIM118 (events are not mappings)
            for w in list(self._watches.get(key, ())):
                if id(w) not in seen:
                    seen.add(id(w))
                    w.deliver(event)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class PostgresEventBus(EventBus):
    """``EventBus`` that also travels through PostgreSQL LISTEN/NOTIFY to other replicas."""

    remote = True
    BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
    PROBE_S = 1.0  # how often an idle listening connection is probed

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        self._outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=100_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._dropped = False  # the outbox overflowed: the others must resynchronise
        self.listening = asyncio.Event()
        self._lost = asyncio.Event()  # the listening connection ended: reconnect now
        self.reconnects = 0
        self._own = own_prefix(self.origin)

    def publish(self, event: Event) -> None:
        self.deliver(event)  # here at once; other replicas through NOTIFY
        payload = encode(event, self.origin)
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            log.error("event %s too large for NOTIFY; not sent", type(event).__name__)
            return
        try:
            self._outbox.put_nowait(payload)
        except asyncio.QueueFull:
            # The other replicas get a Resync once the outbox drains: their readers re-read
            # storage, so nothing is lost but latency.
            if not self._dropped:
                log.warning("event outbox full; other replicas will be told to resynchronise")
            self._dropped = True

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="delidev-events-listen"),
            asyncio.create_task(self._send_forever(), name="delidev-events-send"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), 10)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        text = str(payload)
        if text.startswith(self._own):
            return  # this replica's own event, delivered here when it was published
        decoded = decode(text)
        if decoded is None:
            log.warning("ignoring an event this version does not understand")
            return
        event, origin = decoded
        if origin != self.origin:
            self.deliver(event)

    def _on_terminate(self, _conn: object) -> None:
        self.listening.clear()
        self._lost.set()

    async def _listen_forever(self) -> None:
        attempt = 0
        connected_before = False
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings={"application_name": LISTENER_NAME}
                )
                try:
                    self._lost.clear()
                    conn.add_termination_listener(self._on_terminate)
                    await conn.add_listener(CHANNEL, self._on_notify)
                    self._listener = conn
                    if connected_before:
                        self.reconnects += 1
                        log.info("event listener reconnected")
                        self.deliver(Resync())  # what was sent meanwhile is lost
                    connected_before = True
                    attempt = 0
                    self.listening.set()
                    while not conn.is_closed():
                        # A connection the server ends (or asyncpg sees close) wakes this
                        # at once; the probe finds a socket that died without a word.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._lost.wait(), self.PROBE_S)
                        if self._lost.is_set() or conn.is_closed():
                            break
                        await asyncio.wait_for(conn.execute("SELECT 1"), 5)
                finally:
                    self.listening.clear()
                    self._listener = None
                    await _close(conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("event listener lost its connection: %s", type(e).__name__)
            else:
                log.warning("event listener lost its connection")
            # The first attempt after a working connection ends goes at once: every moment
            # without a listener is a moment of lost events. Failures back off.
            if attempt:
                await asyncio.sleep(self.BACKOFF_S[min(attempt - 1, len(self.BACKOFF_S) - 1)])
            attempt += 1

    async def _send_forever(self) -> None:
        conn: asyncpg.Connection | None = None
        attempt = 0
        try:
            while True:
                payload = await self._outbox.get()
                batch = [payload]
                while not self._outbox.empty() and len(batch) < 256:
                    batch.append(self._outbox.get_nowait())
                if self._dropped:  # published after what was dropped: the re-read sees it
                    self._dropped = False
                    batch.append(encode(Resync(), self.origin))
                while True:
                    try:
                        if conn is None or conn.is_closed():
                            conn = await asyncpg.connect(self._dsn)
                        # One statement for the batch, in order (volatile functions in
                        # the select list run after the sort).
                        await conn.execute(_NOTIFY_BATCH, CHANNEL, batch)
                        attempt = 0
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        log.warning("could not send events: %s", type(e).__name__)
                        if conn is not None:
                            await _close(conn)
                        conn = None
                        delay = self.BACKOFF_S[min(attempt, len(self.BACKOFF_S) - 1)]
                        attempt += 1
                        await asyncio.sleep(delay)
        finally:
            if conn is not None:
                await _close(conn)


_NOTIFY_BATCH = (
    "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n"
)


async def _close(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await conn.close(timeout=2)
    if not conn.is_closed():
        conn.terminate()


_current: ContextVar[EventBus | None] = ContextVar("delidev_event_bus", default=None)
_pending: ContextVar[list[Event] | None] = ContextVar("delidev_pending_events", default=None)


@contextlib.asynccontextmanager
async def after_commit() -> AsyncIterator[None]:
    """Holds what is published inside until the block ends without an error, then publishes
    it; on an error it is dropped. Wrap a transaction in it (``services.common.transaction``)
    so that nobody hears of a change before it is committed. Nested blocks join the outer."""
    if _pending.get() is not None:
        yield
        return
    held: list[Event] = []
    token = _pending.set(held)
    try:
        yield
    finally:
        _pending.reset(token)
    if len(held) <= PUBLISH_BATCH:
        for event in held:
            _publish_now(event)
        return
    # Many (a cascade): in batches, other tasks running between them, by a task of their
    # own, which a cancelled caller cannot cut short (the change is committed: every event
    # of it must go out).
    task = asyncio.ensure_future(_publish_in_batches(held))
    _PUBLISHING.add(task)
    task.add_done_callback(_PUBLISHING.discard)
    await asyncio.shield(task)


PUBLISH_BATCH = 500
"""Events of one commit published in one go; more are published in batches of this size."""
_PUBLISHING: set[asyncio.Future[None]] = set()


async def _publish_in_batches(held: list[Event]) -> None:
    for start in range(0, len(held), PUBLISH_BATCH):
        if start:
            await asyncio.sleep(0)
        for event in held[start : start + PUBLISH_BATCH]:
            _publish_now(event)


def bind(bus: EventBus) -> Token[EventBus | None]:
    return _current.set(bus)


def unbind(token: Token[EventBus | None]) -> None:
    _current.reset(token)


def current() -> EventBus | None:
    return _current.get()


def publish(event: Event) -> None:
    held = _pending.get()
    if held is not None:
        held.append(event)
    else:
        _publish_now(event)


def _publish_now(event: Event) -> None:
    bus = _current.get()
    if bus is not None:
        bus.publish(event)
