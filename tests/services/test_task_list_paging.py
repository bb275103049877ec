"""Listing tasks pages in SQL: every page is a slice of one order (unit and composite tasks
merged, oldest first, ties by id), and what a page costs does not grow with its offset."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.services import tasks
from delidev.services.common import MAX_OFFSET
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_user, make_workspace

pytestmark = pytest.mark.usefixtures("database")

A = LOCAL_USER
S = m.UnitTaskStatus
C = m.CompositeTaskStatus
BASE = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
# Few instants, so that many tasks share one (ties across and within both tables); a whole
# second next to one a microsecond later (stored text differs in length on SQLite).
INSTANTS = [
    BASE,
    BASE + dt.timedelta(microseconds=1),
    BASE + dt.timedelta(seconds=1),
    BASE + dt.timedelta(seconds=1, microseconds=500_000),
    BASE - dt.timedelta(days=3),
    BASE + dt.timedelta(days=40),
]


@dataclass(frozen=True, slots=True)
class Row:
    """What the test knows of a task it made: the listing is predicted from these alone."""

    id: UUID
    kind: str
    created_at: dt.datetime
    owner: Principal
    workspace_id: UUID
    group_id: UUID
    status: str
    node: bool


@dataclass(frozen=True, slots=True)
class Place:
    owner: Principal
    workspace_id: UUID
    group_id: UUID


async def _place(owner: Principal, workspace: m.Workspace | None = None) -> Place:
    ws = workspace or await make_workspace(owner)
    group = await make_group(ws, [await make_repository(ws, owner)], owner)
    return Place(owner, ws.id, group.id)


async def _tasks(places: list[Place], count: int, seed: int) -> list[Row]:
    """``count`` unit and composite tasks (some of them nodes of a composite) spread over
    ``places``, with created_at drawn from ``INSTANTS`` and ids from ``seed``."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for _ in range(count):
        place = rng.choice(places)
        task_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        created_at = rng.choice(INSTANTS)
        agent = await m.AgentTask.create(ai_agent_type=m.AiAgentType.CLAUDE_CODE)
        parents = [
            r for r in rows if r.kind == "composite" and r.workspace_id == place.workspace_id
        ]
        if rng.random() < 0.4:
            status: str = rng.choice([C.PLANNING, C.IN_PROGRESS, C.DONE])
            await m.CompositeTask.create(
                id=task_id,
                workspace_id=place.workspace_id,
                repository_group_id=place.group_id,
                planning_task_id=agent.id,
                status=status,
                prompt="big",
            )
            await m.CompositeTask.filter(id=task_id).update(created_at=created_at)
            kind, node = "composite", False
        else:
            parent = rng.choice(parents) if parents and rng.random() < 0.3 else None
            status = rng.choice([S.IN_PROGRESS, S.IN_REVIEW, S.DONE])
            await m.UnitTask.create(
                id=task_id,
                workspace_id=place.workspace_id,
                repository_group_id=place.group_id,
                agent_task_id=agent.id,
                composite_task_id=parent.id if parent else None,
                status=status,
                prompt="small",
            )
            await m.UnitTask.filter(id=task_id).update(created_at=created_at)
            kind, node = "unit", parent is not None
        rows.append(
            Row(
                task_id,
                kind,
                created_at,
                place.owner,
                place.workspace_id,
                place.group_id,
                str(status),
                node,
            )
        )
    return rows


def _expected(rows: list[Row], actor: Principal, **where: Any) -> list[UUID]:
    """The listing as the service documents it, worked out from what the test made."""
    kind = where.get("kind")
    unit_status = where.get("unit_status")
    composite_status = where.get("composite_status")

    def listed(row: Row) -> bool:
        if row.owner != actor:
            return False
        if where.get("workspace_id") not in (None, row.workspace_id):
            return False
        if where.get("repository_group_id") not in (None, row.group_id):
            return False
        if kind not in (None, row.kind):
            return False
        if row.kind == "unit":
            return (
                composite_status is None
                and unit_status in (None, row.status)
                and (where.get("include_nodes", False) or not row.node)
            )
        return unit_status is None and composite_status in (None, row.status)

    chosen = [r for r in rows if listed(r)]
    chosen.sort(key=lambda r: (r.created_at, str(r.id)))
    return [r.id for r in chosen]


@dataclass(frozen=True, slots=True)
class World:
    rows: list[Row]
    other: Principal
    first: Place
    second: Place
    elsewhere: Place


async def _world(count: int = 40, seed: int = 1) -> World:
    other = await make_user("other")
    first = await _place(A)
    second = await _place(A, await m.Workspace.get(id=first.workspace_id))
    elsewhere = await _place(A)
    theirs = await _place(other)
    rows = await _tasks([first, second, elsewhere, theirs], count, seed)
    return World(rows, other, first, second, elsewhere)


def _cases(world: World) -> list[tuple[Principal, dict[str, Any]]]:
    return [
        (A, {}),
        (A, {"kind": "unit"}),
        (A, {"kind": "composite"}),
        (A, {"include_nodes": True}),
        (A, {"workspace_id": world.first.workspace_id}),
        (A, {"repository_group_id": world.second.group_id, "include_nodes": True}),
        (A, {"workspace_id": world.elsewhere.workspace_id, "kind": "unit"}),
        (A, {"unit_status": S.IN_REVIEW}),
        (A, {"composite_status": C.PLANNING}),
        (A, {"unit_status": S.DONE, "kind": "composite"}),  # nothing can match
        (world.other, {}),
        (world.other, {"include_nodes": True, "kind": "unit"}),
    ]


async def test_every_page_is_the_slice_of_the_merged_order() -> None:
    world = await _world()
    assert len({r.created_at for r in world.rows}) < len(world.rows)  # ties were made
    for actor, where in _cases(world):
        expected = _expected(world.rows, actor, **where)
        for limit in (None, 1, 2, 3, 7):
            size = limit or 50
            for offset in range(len(expected) + 3):
                page = await tasks.list_tasks(actor=actor, limit=limit, offset=offset, **where)
                got = [t.id for t in page.items]
                assert got == expected[offset : offset + size], (where, limit, offset)
                assert page.total_count == len(expected), (where, limit, offset)
    kinds = {r.id: r.kind for r in world.rows}
    everything = await tasks.list_tasks(actor=A, include_nodes=True, limit=500)
    assert everything.items  # full rows of the right model, loaded as the ORM loads them
    for task in everything.items:
        assert isinstance(task, m.UnitTask if kinds[task.id] == "unit" else m.CompositeTask)
        assert task.prompt == ("small" if kinds[task.id] == "unit" else "big")
        assert task.created_at.tzinfo is not None


@pytest.mark.parametrize("seed", [2, 3, 4])
async def test_pages_read_one_after_another_make_the_whole_list(seed: int) -> None:
    world = await _world(count=25, seed=seed)
    expected = _expected(world.rows, A, include_nodes=True)
    seen: list[UUID] = []
    offset = 0
    while True:
        page = await tasks.list_tasks(actor=A, include_nodes=True, limit=4, offset=offset)
        if not page.items:
            break
        seen += [t.id for t in page.items]
        offset += len(page.items)
    assert seen == expected


@pytest.mark.parametrize("offset", [MAX_OFFSET, 40, 41])
async def test_a_page_past_the_end_is_empty_and_costs_one_count(
    sql_counter: SqlCounter, offset: int
) -> None:
    world = await _world(count=40)
    total = len(_expected(world.rows, A))
    assert total <= 40
    sql_counter.reset()
    page = await tasks.list_tasks(actor=A, limit=1, offset=offset)
    assert (list(page.items), page.total_count) == ([], total)
    assert len(sql_counter.statements) == 1, sql_counter.statements
    assert all('"prompt"' not in s for s in sql_counter.statements)  # no task row was read


async def test_a_page_costs_the_same_statements_wherever_it_starts(
    sql_counter: SqlCounter,
) -> None:
    world = await _world(count=60, seed=5)
    expected = _expected(world.rows, A)
    for offset in (0, len(expected) // 2, len(expected) - 2):
        sql_counter.reset()
        page = await tasks.list_tasks(actor=A, limit=2, offset=offset)
        assert [t.id for t in page.items] == expected[offset : offset + 2]
        # A count, the page's keys, then the rows of each kind on the page, by id.
        kinds = {type(t) for t in page.items}
        assert len(sql_counter.statements) == 2 + len(kinds), sql_counter.statements
        full = [s for s in sql_counter.statements if '"prompt"' in s]
        assert len(full) == len(kinds), sql_counter.statements
        assert all("LIMIT" not in s.upper() and "OFFSET" not in s.upper() for s in full)
