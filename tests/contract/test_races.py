"""A delete racing a review answer (or another delete), through Connect and GraphQL.

The two calls run concurrently against the app, shifted against each other by a growing
number of event-loop turns, so that each round interleaves their queries differently. Each
call either wins, or loses with not_found / failed_precondition: never internal.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from delidev import models as m
from tests.clients import ApiError, ConnectTaskApi, GraphQLTaskApi, connect_codecs
from tests.factories import finish_latest, make_group, make_repository, make_workspace

ROUNDS = 12
Q = m.AgentSessionStatus
LOSER = {"NOT_FOUND", "FAILED_PRECONDITION"}
# GraphQL reads the task's AgentTask and runs too: the fields a client would show.
TASK_FIELDS = "id ... on UnitTask { status agentTask { id sessions { id } } latestSession { id } }"


@pytest.fixture(params=["connect-json", "graphql"])
async def api(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Any]:
    client: ConnectTaskApi | GraphQLTaskApi
    if request.param == "graphql":
        client = GraphQLTaskApi(app)
    else:
        client = ConnectTaskApi(app, connect_codecs()[request.param.removeprefix("connect-")])
    try:
        yield client
    finally:
        await client.close()


def _answer(api: Any, answer: str, task_id: str) -> Awaitable[Any]:
    if isinstance(api, GraphQLTaskApi):
        mutation, args = {
            "request_changes": ("requestChanges", 'feedback: "more"'),
            "approve": ("approveTask", ""),
            "reject": ("rejectTask", 'reason: "no"'),
            "retry": ("retryTask", ""),
            "delete": ("deleteTask", None),
        }[answer]
        if args is None:
            return api.execute(f"mutation($id: ID!) {{ {mutation}(id: $id) }}", id=task_id)
        call = f"id: $id, {args}" if args else "id: $id"
        return api.execute(
            f"mutation($id: ID!) {{ {mutation}({call}) {{ {TASK_FIELDS} }} }}", id=task_id
        )
    if answer == "request_changes":
        return api.request_changes(task_id, "more")  # type: ignore[no-any-return]
    if answer == "delete":
        return api.delete_task(task_id)  # type: ignore[no-any-return]
    return getattr(api, answer)(task_id)  # type: ignore[no-any-return]


async def _outcome(turns: int, call: Awaitable[Any]) -> str:
    for _ in range(turns):
        await asyncio.sleep(0)
    try:
        await call
    except ApiError as exc:
        return exc.code
    return "OK"


@pytest.mark.parametrize("answer", ["request_changes", "approve", "reject", "retry", "delete"])
async def test_delete_racing_a_review_answer(api: Any, answer: str) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    seen: Counter[tuple[str, str]] = Counter()
    for turns in range(ROUNDS):
        task = await api.create_unit(str(group.id), "p")
        agent_id = (await m.UnitTask.get(id=task["id"])).agent_task_id
        # In review; for a retry, its run failed.
        await finish_latest(agent_id, Q.FAILED if answer == "retry" else Q.SUCCEEDED)
        # Half the rounds start the answer first, half the delete.
        first, second = (turns, 0) if turns % 2 else (0, turns)
        answered, deleted = await asyncio.gather(
            _outcome(first, _answer(api, answer, task["id"])),
            _outcome(second, api.delete_task(task["id"])),
        )
        seen[answered, deleted] += 1
        assert answered in {"OK"} | LOSER, seen
        assert deleted in {"OK"} | LOSER, seen
        assert "OK" in (answered, deleted), seen  # somebody won
        if answer == "delete":
            assert [answered, deleted].count("OK") == 1, seen  # and only one delete did
        assert not await m.UnitTask.exists(id=task["id"])
    assert not await m.AgentTask.exists(), "a delete left AgentTasks behind"
