"""Task and session behaviour through Connect (JSON, binary) and GraphQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from delidev import models as m
from delidev.services import sessions
from tests.clients import ApiError, ConnectTaskApi, GraphQLTaskApi, connect_codecs
from tests.factories import finish_latest, make_group, make_repository, make_workspace, start_latest


@pytest.fixture(params=["connect-json", "connect-binary", "graphql"])
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


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def _agent(task_id: str) -> Any:
    return (await m.UnitTask.get(id=task_id)).agent_task_id


async def test_unit_task_life_cycle(api: Any) -> None:
    group = await _group()
    task = await api.create_unit(str(group.id), "Write docs")
    assert (task["kind"], task["status"], task["latest_session"]["status"]) == (
        "unit",
        "IN_PROGRESS",
        "QUEUED",
    )
    assert await api.list_tasks(str(group.workspace_id)) == ([task["id"]], 1)
    await finish_latest(await _agent(task["id"]))
    assert (await api.get_task(task["id"]))["status"] == "IN_REVIEW"

    changed = await api.request_changes(task["id"], "More examples")
    assert changed["status"] == "IN_PROGRESS"
    assert changed["prompt"].endswith("More examples")
    assert changed["latest_session"]["attempt"] == 2
    await finish_latest(await _agent(task["id"]))
    assert (await api.approve(task["id"]))["status"] == "APPROVED"
    opened = await api.update_status(task["id"], "PR_OPEN", "https://github.com/a/b/pull/3")
    assert (opened["status"], opened["linked_pr_url"]) == (
        "PR_OPEN",
        "https://github.com/a/b/pull/3",
    )
    assert (await api.update_status(task["id"], "DONE"))["status"] == "DONE"
    await api.delete_task(task["id"])
    with pytest.raises(ApiError) as info:
        await api.get_task(task["id"])
    assert (info.value.code, info.value.delidev_code) == ("NOT_FOUND", -32003)


async def test_failure_is_visible_and_retry_queues_a_new_run(api: Any) -> None:
    group = await _group()
    task = await api.create_unit(str(group.id), "Crash")
    with pytest.raises(ApiError) as info:
        await api.retry(task["id"])
    assert info.value.code == "FAILED_PRECONDITION"
    await finish_latest(await _agent(task["id"]), m.AgentSessionStatus.FAILED, error="OOM")
    failed = await api.get_task(task["id"])
    assert failed["status"] == "IN_PROGRESS"
    assert (failed["latest_session"]["status"], failed["latest_session"]["error"]) == (
        "FAILED",
        "OOM",
    )
    retried = await api.retry(task["id"])
    assert (retried["latest_session"]["attempt"], retried["latest_session"]["status"]) == (
        2,
        "QUEUED",
    )


@pytest.mark.parametrize("call", ["approve", "reject", "done", "pr_open"])
async def test_illegal_moves_are_failed_precondition_naming_both_states(
    api: Any, call: str
) -> None:
    group = await _group()
    task = await api.create_unit(str(group.id), "p")
    if call == "approve":
        attempt = api.approve(task["id"])
    elif call == "reject":
        attempt = api.reject(task["id"], "no")
    else:
        attempt = api.update_status(task["id"], call.upper(), "https://x.io/pr/1")
    with pytest.raises(ApiError) as info:
        await attempt
    assert (info.value.code, info.value.delidev_code) == ("FAILED_PRECONDITION", -32005)
    assert "in_progress" in info.value.message
    assert (await api.get_task(task["id"]))["status"] == "IN_PROGRESS"


async def test_bad_ids_and_inputs(api: Any) -> None:
    group = await _group()
    with pytest.raises(ApiError) as info:
        await api.get_task("nope")
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ApiError) as info:
        await api.create_unit(str(group.id), "   ")
    assert (info.value.code, info.value.field) == ("INVALID_ARGUMENT", "prompt")
    assert await m.UnitTask.all().count() == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # A browser follows this to "evil"; Python's parser (and a reader) sees github.com.
        ("https://evil\\@github.com/a/b/pull/3", "backslash"),
        ("https://github.com@evil.test/a/b/pull/3", "user name or password"),
        ("javascript:alert(document.cookie)//https://github.com/a/b/pull/3", "http(s) URL"),
        ("https://github.com/a/b\t/pull/3", "whitespace"),
        ("https://github.com:99999/a/b/pull/3", "invalid port"),
        ("https://g%69thub.com/a/b/pull/3", "host"),
    ],
)
async def test_a_pull_request_link_a_browser_would_read_differently_is_refused(
    api: Any, url: str, says: str
) -> None:
    group = await _group()
    task = await api.create_unit(str(group.id), "Write docs")
    await finish_latest(await _agent(task["id"]))
    await api.approve(task["id"])
    with pytest.raises(ApiError) as info:
        await api.update_status(task["id"], "PR_OPEN", url)
    assert (info.value.code, info.value.field) == ("INVALID_ARGUMENT", "linked_pr_url")
    assert says in info.value.message
    stored = await m.UnitTask.get(id=task["id"])
    assert (stored.status, stored.linked_pr_url) == (m.UnitTaskStatus.APPROVED, None)


async def test_stop_and_tty(api: Any) -> None:
    group = await _group()
    task = await api.create_unit(str(group.id), "p")
    queued = task["latest_session"]["id"]
    assert await api.stop_session(queued) == "STOPPED"
    retried = await api.retry(task["id"])
    session = await start_latest(await _agent(retried["id"]))
    question = await sessions.create_tty_request(
        session_id=session.id,
        prompt="Token?",
        input_type=m.TtyInputType.PASSWORD,
        expires_in=dt.timedelta(minutes=1),
    )
    answered = await api.submit_tty(str(question.id), "hunter2")
    assert answered == {"status": "RESPONDED", "response": None}
    with pytest.raises(ApiError) as info:
        await api.submit_tty(str(question.id), "again")
    assert info.value.code == "FAILED_PRECONDITION"
    assert await api.stop_session(str(session.id)) == "RUNNING"  # flagged for its worker


DIAMOND = """
tasks:
  - id: db
    prompt: schema
  - id: api
    prompt: api
    dependsOn: [db]
  - id: ui
    prompt: ui
    dependsOn: [db]
  - id: e2e
    prompt: tests
    dependsOn: [api, ui]
"""


async def test_composite_life_cycle(api: Any) -> None:
    group = await _group()
    created = await api.create_composite(str(group.id), "Build the app")
    assert (created["kind"], created["status"]) == ("composite", "PLANNING")
    planner = (await m.CompositeTask.get(id=created["id"])).planning_task_id
    await finish_latest(planner, plan_yaml="tasks:\n  - id: a\n    prompt: ''")
    refused = await api.composite_nodes(created["id"])
    assert refused["status"] == "PLANNING"
    assert refused["plan_error"].startswith("EmptyPrompt")
    await api.retry(created["id"])
    await finish_latest(planner, plan_yaml=DIAMOND)
    assert (await api.get_task(created["id"]))["status"] == "PENDING_APPROVAL"
    assert (await api.approve(created["id"]))["status"] == "IN_PROGRESS"

    view = await api.composite_nodes(created["id"])
    states = {k: v[0] for k, v in view["nodes"].items()}
    assert states == {"db": "QUEUED", "api": "WAITING", "ui": "WAITING", "e2e": "WAITING"}
    assert view["nodes"]["e2e"][1] == ["api", "ui"]
    for plan_id in ("db", "api", "ui", "e2e"):
        unit_id = (await api.composite_nodes(created["id"]))["nodes"][plan_id][2]
        await finish_latest(await _agent(unit_id))
        await api.approve(unit_id)
        await api.update_status(unit_id, "DONE")
    done = await api.composite_nodes(created["id"])
    assert done["status"] == "DONE"
    assert {v[0] for v in done["nodes"].values()} == {"DONE"}


async def test_reject_and_read_the_log(api: Any) -> None:
    group = await _group()
    task = await api.create_unit(str(group.id), "p")
    session = await start_latest(await _agent(task["id"]))
    await sessions.append_log(
        session_id=session.id,
        chunks=[
            sessions.LogChunkIn(sequence=0, data="héllo "),
            sessions.LogChunkIn(sequence=1, data="world"),
        ],
    )
    assert await api.get_log(str(session.id)) == ("héllo world", 11)
    assert await api.get_log(str(session.id), offset=6) == ("world", 11)
    await sessions.complete_session(session_id=session.id, status=m.AgentSessionStatus.SUCCEEDED)
    rejected = await api.reject(task["id"], "not needed")
    assert rejected["status"] == "REJECTED"
    assert (await m.UnitTask.get(id=task["id"])).rejection_reason == "not needed"
    with pytest.raises(ApiError) as info:
        await api.get_log(str(uuid.uuid4()))
    assert info.value.code == "NOT_FOUND"


async def test_tasks_are_listed_oldest_first(api: Any) -> None:
    """README: every list is ordered oldest first; unit and composite tasks interleave."""
    group = await _group()
    first = await api.create_unit(str(group.id), "first")
    second = await api.create_composite(str(group.id), "second")
    third = await api.create_unit(str(group.id), "third")
    listed = await api.list_tasks(str(group.workspace_id))
    assert listed == ([first["id"], second["id"], third["id"]], 3)
