"""Output that follows the log, stored in one go: the live log's hot path.

A running job ships its output every 100 ms or so, and each AppendLog is the first half of
a live line's way to its followers (bench/bench_live.py). The general path (``jobs.
append_job_log`` → ``sessions.append_log``) checks the lease, then in a transaction locks the
run, reads the chunks waiting for an earlier one, inserts, and updates the run: on SQLite
about sixteen hops to aiosqlite's thread, two milliseconds before a follower can see a line.
Most calls are plain: the chunks come in order, right after the stored log, and nothing is
waiting or held back. For them the same writes are made here in one go:

- SQLite: one function on aiosqlite's thread runs the whole transaction with the standard
  ``sqlite3`` module (BEGIN, read the run, check, INSERT, UPDATE, COMMIT), under the lock
  Tortoise's SQLite client takes for every statement and transaction, so nothing
  interleaves. No public API runs a function on that thread: it uses aiosqlite's
  ``Connection._execute`` (the queue every aiosqlite call goes through) and Tortoise's
  client lock, both pinned in requirements.lock and exercised by every test that appends.
- PostgreSQL: one ``UPDATE … RETURNING`` with a data-modifying CTE.

It is tried first only where it can be exact:

- checked here, before: no secret to mask the output with (the caller's check), every chunk
  valid (``sessions.check_chunks``), and the chunks numbered one after the other;
- checked on the run's row, in the same transaction or statement: it is running under this
  worker's lease; the first chunk is the one the log expects next; no chunk waits for an
  earlier one and no output is held back; the log stays within its cap (a cut is the general
  path's); on PostgreSQL also that the row is the one the statement's snapshot read
  (``updated_at``), so that a call that stored waiting chunks meanwhile makes it match
  nothing.

When any of that fails it returns None and the caller takes the general path, which then
explains a refusal exactly as before. What is stored is the same either way: the chunks at
their offsets, the run's size, next sequence and ``updated_at``; the same ``LogAppended``
event (with the placed text for this process's followers) and metric.
``tests/services/test_quick_append.py`` appends through both paths and compares.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from tortoise import connections
from tortoise.backends.sqlite.client import SqliteClient

from delidev import events, metrics
from delidev.services import common
from delidev.services import sessions as session_service

_RUNNING = "running"


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where a run's log stands after an AppendLog: what the worker is told."""

    log_size: int
    log_next_sequence: int


_APPEND_PG = """
WITH seen AS (
    SELECT updated_at FROM agent_sessions WHERE id = $1
), run AS (
    SELECT s.id, s.log_size FROM agent_sessions s
    WHERE s.id = $1 AND s.status = 'running' AND s.worker_id = $2 AND s.lease_token = $3
      AND s.log_next_sequence = $4 AND s.log_size + $5 <= $6
      AND s.updated_at = (SELECT updated_at FROM seen)
      AND NOT EXISTS (SELECT 1 FROM agent_session_log_chunks c
                      WHERE c.session_id = s.id AND c.start_offset = -1)
    FOR UPDATE
), stored AS (
    INSERT INTO agent_session_log_chunks (id, session_id, sequence, start_offset, data, created_at)
    SELECT c.id, run.id, c.sequence, run.log_size + c.start_offset, c.data, $7
    FROM run, unnest($8::uuid[], $9::bigint[], $10::bigint[], $11::text[])
         AS c(id, sequence, start_offset, data)
)
UPDATE agent_sessions s
SET log_size = run.log_size + $5, log_next_sequence = $4 + $12, updated_at = $7
FROM run WHERE s.id = run.id
RETURNING s.log_size, s.log_next_sequence
"""


_RUN_SQLITE = (
    "SELECT status, worker_id, lease_token, log_size, log_next_sequence "
    "FROM agent_sessions WHERE id = ?"
)
_WAITING_SQLITE = (
    "SELECT 1 FROM agent_session_log_chunks WHERE session_id = ? AND start_offset = -1 LIMIT 1"
)
_INSERT_SQLITE = (
    "INSERT INTO agent_session_log_chunks (id, session_id, sequence, start_offset, data, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_UPDATE_SQLITE = (
    "UPDATE agent_sessions SET log_size = ?, log_next_sequence = ?, updated_at = ? WHERE id = ?"
)


def applies(chunks: Sequence[session_service.LogChunkIn]) -> bool:
    """Whether the quick path may be tried for these (already checked) chunks: numbered one
    after the other, on a database it knows."""
    if not chunks or any(b.sequence != a.sequence + 1 for a, b in itertools.pairwise(chunks)):
        return False
    client = connections.get("default")
    return client.capabilities.dialect == "postgres" or type(client) is SqliteClient


@dataclass(frozen=True, slots=True)
class _Append:
    """One call's output and where it must go."""

    worker_id: UUID
    session_id: UUID
    lease_token: str
    chunks: Sequence[session_service.LogChunkIn]
    added: int  # characters in all the chunks
    max_chars: int
    now: dt.datetime

    def offsets(self) -> list[int]:
        """Each chunk's offset from the end of the stored log."""
        offsets, at = [], 0
        for chunk in self.chunks:
            offsets.append(at)
            at += len(chunk.data)
        return offsets


async def append(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    chunks: Sequence[session_service.LogChunkIn],
    limits: session_service.LogLimits,
) -> LogPosition | None:
    """Stores the chunks after the log in one go; None when that is not possible (see the
    module docstring: the caller takes the general path)."""
    if not lease_token:
        return None
    texts = [c.data for c in chunks]
    call = _Append(
        worker_id=worker_id,
        session_id=session_id,
        lease_token=lease_token,
        chunks=chunks,
        added=sum(map(len, texts)),
        max_chars=limits.max_chars,
        now=common.now(),
    )
    client = connections.get("default")
    if type(client) is SqliteClient:
        position = await _append_sqlite(client, call)
    else:
        position = await _append_pg(client, call)
    if position is None:
        return None
    events.publish(events.LogAppended(str(session_id), position.log_size, "".join(texts)))
    metrics.log_ingested(sum(len(t.encode()) for t in texts))
    return position


async def _append_pg(client: Any, call: _Append) -> LogPosition | None:
    chunks = call.chunks
    rows = await client.execute_query_dict(
        _APPEND_PG,
        [
            call.session_id,
            call.worker_id,
            call.lease_token,
            chunks[0].sequence,
            call.added,
            call.max_chars,
            call.now,
            [uuid.uuid4() for _ in chunks],
            [c.sequence for c in chunks],
            call.offsets(),
            [c.data for c in chunks],
            len(chunks),
        ],
    )
    if not rows:
        return None
    return LogPosition(int(rows[0]["log_size"]), int(rows[0]["log_next_sequence"]))


async def _append_sqlite(client: SqliteClient, call: _Append) -> LogPosition | None:
    connection = client._connection
    if connection is None:
        return None
    ran: list[str] = []
    async with client._lock:  # the lock of every statement and transaction of this client
        result: LogPosition | None = await connection._execute(  # type: ignore[no-untyped-call]
            _store_sqlite, connection._conn, call, ran
        )
    for statement in ran:  # logged as Tortoise logs its own (without the values: the output)
        client.log.debug("%s: (quick append of session %s)", statement, call.session_id)
    return result


def _store_sqlite(db: sqlite3.Connection, call: _Append, ran: list[str]) -> LogPosition | None:
    """On aiosqlite's thread: the whole append in one transaction (the connection is in
    autocommit mode, as Tortoise opens it: BEGIN and COMMIT are explicit). ``ran`` gets the
    statements it sent."""
    session_id, chunks = str(call.session_id), call.chunks

    def execute(sql: str, values: Any) -> sqlite3.Cursor:
        ran.append(sql)
        return db.execute(sql, values)

    if db.in_transaction:  # never ours to touch (Tortoise's transactions hold the lock)
        return None
    db.execute("BEGIN IMMEDIATE")
    try:
        row = execute(_RUN_SQLITE, (session_id,)).fetchone()
        if (
            row is None
            or row[0] != _RUNNING
            or row[1] != str(call.worker_id)
            or row[2] is None
            or not common.same_secret(call.lease_token, row[2])
            or row[4] != chunks[0].sequence
            or row[3] + call.added > call.max_chars
            or execute(_WAITING_SQLITE, (session_id,)).fetchone() is not None
        ):
            db.execute("ROLLBACK")
            return None
        size = int(row[3])
        ran.append(_INSERT_SQLITE)
        db.executemany(
            _INSERT_SQLITE,
            [
                (str(uuid.uuid4()), session_id, c.sequence, size + offset, c.data, call.now)
                for c, offset in zip(chunks, call.offsets(), strict=True)
            ],
        )
        position = LogPosition(size + call.added, chunks[-1].sequence + 1)
        execute(
            _UPDATE_SQLITE, (position.log_size, position.log_next_sequence, call.now, session_id)
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return position
