"""Auto-fix runs and the end of a task's pull request (services/auto_fix.py), on the real
database: matching (normalised URLs, tenant isolation), the limit and "never two at once",
concurrent triggers, merged → done, closed → recorded, bounded prompts, the job a worker gets,
and both APIs showing it."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from tortoise import connections

from delidev import events, metrics
from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import NotFound
from delidev.services import auto_fix, tasks, workers
from delidev.services.pr_urls import pr_key
from tests.factories import (
    finish_latest,
    latest_session,
    make_group,
    make_repository,
    make_workspace,
    start_latest,
)

pytestmark = pytest.mark.usefixtures("database")

S = m.UnitTaskStatus
A = LOCAL_USER
PR_URL = "https://github.com/acme/app/pull/7"


async def _repo_group(actor: Principal = A, **group: Any) -> tuple[m.Repository, m.RepositoryGroup]:
    ws = await make_workspace(actor=actor)
    repo = await make_repository(ws, actor=actor)
    return repo, await make_group(ws, [repo], actor=actor, **group)


async def _pr_open(
    group: m.RepositoryGroup, url: str = PR_URL, actor: Principal = A, **create: Any
) -> m.UnitTask:
    """A unit task whose PR is open: run, approved, linked."""
    task = await tasks.create_unit_task(
        actor=actor, repository_group_id=group.id, prompt="Add the export", title="Export", **create
    )
    await finish_latest(task.agent_task_id)
    await tasks.approve_task(actor=actor, task_id=task.id)
    return await tasks.update_task_status(
        actor=actor, task_id=task.id, status=S.PR_OPEN, linked_pr_url=url
    )


async def _fail_check(repo: m.Repository, url: str = PR_URL, **kw: Any) -> list[uuid.UUID]:
    return await auto_fix.check_failed(
        repository_id=repo.id,
        pr_url=url,
        check_name=kw.pop("check_name", "tests"),
        summary=kw.pop("summary", "2 tests failed"),
        details_url=kw.pop("details_url", "https://github.com/acme/app/runs/1"),
        **kw,
    )


def _queued_count(trigger: str) -> float:
    return metrics.AUTO_FIX_QUEUED.labels(trigger=trigger)._value.get()


# Normalising -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key"),
    [
        (PR_URL, PR_URL),
        ("HTTPS://GitHub.COM/acme/app/pull/7/", PR_URL),
        ("https://github.com/acme/app/pull/7/files", PR_URL),
        ("https://github.com/acme/app/pull/7#discussion_r42", PR_URL),
        ("https://github.com/acme/app/pull/7/files?w=1#diff-1", PR_URL),
        ("https://github.com:443/acme/app.git/pull/7", PR_URL),
        (
            "https://gitlab.com/g/p/-/merge_requests/3/diffs",
            "https://gitlab.com/g/p/-/merge_requests/3",
        ),
        (
            "https://GitLab.example.com:8443/g/p/-/merge_requests/3/",
            "https://gitlab.example.com:8443/g/p/-/merge_requests/3",
        ),
        ("ftp://github.com/acme/app/pull/7", None),
        ("not a url", None),
    ],
)
def test_pr_key_ignores_spelling(url: str, key: str | None) -> None:
    assert pr_key(url) == key


async def test_differently_spelled_urls_of_one_pr_match() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group, url="https://github.com/acme/app/pull/7/")
    queued = await _fail_check(repo, url="HTTPS://GITHUB.com/acme/app/pull/7/files#top")
    assert len(queued) == 1
    assert await m.UnitTaskAutoFixTask.filter(unit_task_id=task.id).count() == 1
    assert await _fail_check(repo, url="https://github.com/acme/app/pull/70") == []


# The run -----------------------------------------------------------------------------------


async def test_a_failed_check_queues_an_auto_fix_run_like_the_tasks_own() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(
        group,
        ai_agent_type=m.AiAgentType.CODEX_CLI,
        ai_agent_model="gpt-x",
        priority=m.TaskPriority.HIGH,
        required_labels=["os=linux"],
        max_run_seconds=600,
        expects_secrets=True,
    )
    before = _queued_count("check_failed")
    [agent_id] = await _fail_check(repo)
    assert _queued_count("check_failed") == before + 1
    own = await m.AgentTask.get(id=task.agent_task_id)
    fix = await m.AgentTask.get(id=agent_id)
    assert (fix.ai_agent_type, fix.ai_agent_model) == (m.AiAgentType.CODEX_CLI, "gpt-x")
    assert (fix.priority, fix.required_labels, fix.max_run_seconds) == (
        own.priority,
        own.required_labels,
        own.max_run_seconds,
    )
    assert fix.workspace_id == task.workspace_id
    assert not fix.expects_secrets  # nobody is there to send them
    own_remotes = await m.AgentTaskBaseRemote.filter(agent_task_id=own.id).values_list(
        "git_remote_dir_path", "git_branch_name"
    )
    fix_remotes = await m.AgentTaskBaseRemote.filter(agent_task_id=fix.id).values_list(
        "git_remote_dir_path", "git_branch_name"
    )
    assert fix_remotes == own_remotes != []
    link = await m.UnitTaskAutoFixTask.get(agent_task_id=fix.id)
    assert link.unit_task_id == task.id
    assert link.trigger == m.AutoFixTrigger.CHECK_FAILED
    assert "tests" in (link.prompt or "")
    assert "2 tests failed" in (link.prompt or "")
    session = await latest_session(fix.id)
    assert (session.kind, session.status, session.attempt) == (
        m.JobKind.AUTO_FIX,
        m.AgentSessionStatus.QUEUED,
        1,
    )
    assert (await m.UnitTask.get(id=task.id)).status == S.PR_OPEN


async def test_review_comments_queue_a_run_with_them_in_its_prompt() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    comments = [
        auto_fix.ReviewComment(
            author="octocat", body="Rename this.", path="src/a.py", line=12, url=PR_URL + "#r1"
        ),
        auto_fix.ReviewComment(author="hubot\nevil", body="Add a test."),
    ]
    before = _queued_count("review_comments")
    [agent_id] = await auto_fix.review_feedback(
        repository_id=repo.id, pr_url=PR_URL, comments=comments
    )
    assert _queued_count("review_comments") == before + 1
    link = await m.UnitTaskAutoFixTask.get(agent_task_id=agent_id)
    prompt = link.prompt or ""
    assert link.trigger == m.AutoFixTrigger.REVIEW_COMMENTS
    assert "octocat on src/a.py:12" in prompt
    assert "Rename this." in prompt
    assert "hubot evil" in prompt  # one line per author
    assert PR_URL in prompt
    assert "Export" in prompt
    assert (task.branch_name or "") in prompt
    assert await auto_fix.review_feedback(repository_id=repo.id, pr_url=PR_URL, comments=[]) == []


async def test_the_prompt_is_bounded_and_says_what_it_left_out() -> None:
    repo, group = await _repo_group()
    unit = await _pr_open(group)
    comments = [auto_fix.ReviewComment(author=f"r{i}", body="x" * 10_000) for i in range(50)]
    [agent_id] = await auto_fix.review_feedback(
        repository_id=repo.id, pr_url=PR_URL, comments=comments
    )
    prompt = (await m.UnitTaskAutoFixTask.get(agent_task_id=agent_id)).prompt or ""
    assert len(prompt) <= auto_fix.MAX_PROMPT_CHARS + 500
    assert "[comment cut:" in prompt
    assert "more comment(s) not shown" in prompt

    check = auto_fix.check_prompt(
        unit, pr_url=PR_URL, check_name="ci\n" * 500, summary="E" * 100_000, details_url=None
    )
    assert len(check) <= auto_fix.MAX_PROMPT_CHARS + 1_000
    assert "[output cut: 88000 more characters not shown]" in check
    assert "\nci ci" not in check.split("## Failing check: ", 1)[1].split("\n", 1)[1]


# Who gets one ------------------------------------------------------------------------------


async def test_only_tasks_whose_group_holds_the_repository_in_its_workspace_match() -> None:
    alice = Principal(kind="user", user_id=uuid.uuid4())
    bob = Principal(kind="user", user_id=uuid.uuid4())
    await m.User.create(id=alice.user_id, email="alice@example.com")
    await m.User.create(id=bob.user_id, email="bob@example.com")
    repo, group = await _repo_group(actor=alice)
    mine = await _pr_open(group, actor=alice)
    # Bob links a task of his to the same PR URL, through a repository of his own.
    bob_repo, bob_group = await _repo_group(actor=bob)
    bobs = await _pr_open(bob_group, actor=bob)
    # Another group of Alice's workspace that does not hold the repository.
    ws = await m.Workspace.get(id=repo.workspace_id)
    other_group = await make_group(ws, [await make_repository(ws, actor=alice)], actor=alice)
    elsewhere = await _pr_open(other_group, actor=alice)

    queued = await _fail_check(repo)
    assert len(queued) == 1
    assert await m.UnitTaskAutoFixTask.filter(unit_task_id=mine.id).count() == 1
    assert not await m.UnitTaskAutoFixTask.filter(unit_task_id__in=[bobs.id, elsewhere.id])
    assert await auto_fix.pull_request_closed(
        repository_id=bob_repo.id, pr_url=PR_URL, merged=True
    ) == [bobs.id]
    assert (await m.UnitTask.get(id=mine.id)).status == S.PR_OPEN
    with pytest.raises(NotFound):
        await _fail_check(m.Repository(id=uuid.uuid4()))


async def test_a_group_of_several_repositories_matches_any_of_them() -> None:
    ws = await make_workspace()
    first, second = await make_repository(ws), await make_repository(ws)
    group = await make_group(ws, [first, second], name="both")
    task = await _pr_open(group)
    assert len(await _fail_check(second)) == 1
    assert await m.UnitTaskAutoFixTask.filter(unit_task_id=task.id).count() == 1


async def test_only_tasks_with_an_open_pr_get_a_run() -> None:
    repo, group = await _repo_group()
    in_review = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="x")
    await finish_latest(in_review.agent_task_id)
    # A task linked by hand in the database while in review still gets none.
    await m.UnitTask.filter(id=in_review.id).update(
        linked_pr_url=PR_URL, pr_key=pr_key(PR_URL), pr_state=m.PullRequestState.OPEN
    )
    assert await _fail_check(repo) == []
    await m.UnitTask.filter(id=in_review.id).delete()

    task = await _pr_open(group)
    await tasks.update_task_status(actor=A, task_id=task.id, status=S.DONE)
    assert await _fail_check(repo) == []

    closed = await _pr_open(group, url="https://github.com/acme/app/pull/8")
    await auto_fix.pull_request_closed(
        repository_id=repo.id, pr_url="https://github.com/acme/app/pull/8", merged=False
    )
    assert await _fail_check(repo, url="https://github.com/acme/app/pull/8") == []
    assert not await m.UnitTaskAutoFixTask.filter(unit_task_id=closed.id)


# How many ----------------------------------------------------------------------------------


async def test_never_two_at_once() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    [first] = await _fail_check(repo)
    assert await _fail_check(repo) == []  # queued
    await start_latest(first)
    assert await _fail_check(repo) == []  # running
    await finish_latest_running(first)
    assert len(await _fail_check(repo)) == 1
    assert await m.UnitTaskAutoFixTask.filter(unit_task_id=task.id).count() == 2


async def finish_latest_running(agent_task_id: uuid.UUID, **extra: Any) -> m.AgentSession:
    from delidev.services import sessions

    session = await latest_session(agent_task_id)
    return await sessions.complete_session(
        session_id=session.id, status=m.AgentSessionStatus.SUCCEEDED, **extra
    )


async def test_at_most_three_runs_per_task() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    for _ in range(3):
        [agent_id] = await _fail_check(repo)
        await finish_latest(agent_id)
    assert await _fail_check(repo) == []
    assert (
        await auto_fix.review_feedback(
            repository_id=repo.id,
            pr_url=PR_URL,
            comments=[auto_fix.ReviewComment(author="a", body="b")],
        )
        == []
    )
    assert await m.UnitTaskAutoFixTask.filter(unit_task_id=task.id).count() == 3
    # The limit is the caller's to lower.
    other = await _pr_open(group, url="https://github.com/acme/app/pull/9")
    [agent_id] = await _fail_check(repo, url="https://github.com/acme/app/pull/9", max_runs=1)
    await finish_latest(agent_id)
    assert await _fail_check(repo, url="https://github.com/acme/app/pull/9", max_runs=1) == []
    assert await m.UnitTaskAutoFixTask.filter(unit_task_id=other.id).count() == 1


async def test_concurrent_triggers_queue_exactly_one_run() -> None:
    """As two replicas receiving one delivery (twice) at once: on PostgreSQL each call has
    its own connection from the pool, and the unit task's row lock decides."""
    repo, group = await _repo_group()
    task = await _pr_open(group)
    results = await asyncio.gather(*(_fail_check(repo) for _ in range(6)))
    assert sum(len(r) for r in results) == 1
    assert await m.UnitTaskAutoFixTask.filter(unit_task_id=task.id).count() == 1
    fixes = await m.UnitTaskAutoFixTask.filter(unit_task_id=task.id).values_list(
        "agent_task_id", flat=True
    )
    assert await m.AgentSession.filter(agent_task_id__in=list(fixes)).count() == 1


# When a run ends ---------------------------------------------------------------------------


async def test_a_successful_run_keeps_the_task_open_and_sets_its_end_commit() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    [agent_id] = await _fail_check(repo)
    session = await finish_latest(agent_id, end_commit="c" * 40)
    assert session.status == m.AgentSessionStatus.SUCCEEDED
    fresh = await m.UnitTask.get(id=task.id)
    assert fresh.status == S.PR_OPEN
    assert fresh.end_commit == "c" * 40
    assert fresh.pr_state == m.PullRequestState.OPEN


# Closed PRs --------------------------------------------------------------------------------


async def test_a_merged_pr_makes_the_task_done_once() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    assert task.pr_state == m.PullRequestState.OPEN
    assert await auto_fix.pull_request_closed(
        repository_id=repo.id, pr_url=PR_URL + "/", merged=True
    ) == [task.id]
    done = await m.UnitTask.get(id=task.id)
    assert done.status == S.DONE
    assert done.pr_state == m.PullRequestState.MERGED
    assert done.pr_state_changed_at is not None
    # A redelivery changes nothing.
    assert (
        await auto_fix.pull_request_closed(repository_id=repo.id, pr_url=PR_URL, merged=True) == []
    )


async def test_a_closed_pr_is_recorded_and_the_status_left_alone() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    assert await auto_fix.pull_request_closed(
        repository_id=repo.id, pr_url=PR_URL, merged=False
    ) == [task.id]
    fresh = await m.UnitTask.get(id=task.id)
    assert fresh.status == S.PR_OPEN
    assert fresh.pr_state == m.PullRequestState.CLOSED
    assert fresh.pr_state_changed_at is not None
    assert (
        await auto_fix.pull_request_closed(repository_id=repo.id, pr_url=PR_URL, merged=False) == []
    )
    # Merged later (reopened and merged): done.
    assert await auto_fix.pull_request_closed(
        repository_id=repo.id, pr_url=PR_URL, merged=True
    ) == [task.id]
    assert (await m.UnitTask.get(id=task.id)).status == S.DONE


async def test_a_merged_node_advances_its_composite() -> None:
    repo, group = await _repo_group()
    composite = await tasks.create_composite_task(
        actor=A, repository_group_id=group.id, prompt="Build it"
    )
    plan = (
        "tasks:\n  - id: a\n    prompt: first\n  - id: b\n    prompt: second\n    dependsOn: [a]\n"
    )
    await finish_latest(composite.planning_task_id, plan_yaml=plan)
    await tasks.approve_task(actor=A, task_id=composite.id)
    nodes = {
        v.node.plan_id: v.unit_task
        for v in (await tasks.composite_nodes([composite.id]))[composite.id]
    }
    a = nodes["a"]
    await finish_latest(a.agent_task_id)
    await tasks.approve_task(actor=A, task_id=a.id)
    await tasks.update_task_status(actor=A, task_id=a.id, status=S.PR_OPEN, linked_pr_url=PR_URL)
    assert not await m.AgentSession.filter(agent_task_id=nodes["b"].agent_task_id)
    assert await auto_fix.pull_request_closed(
        repository_id=repo.id, pr_url=PR_URL, merged=True
    ) == [a.id]
    # b's dependency is done: b's first run is queued.
    assert (await latest_session(nodes["b"].agent_task_id)).status == m.AgentSessionStatus.QUEUED


# What the worker and the APIs see ----------------------------------------------------------


async def test_the_worker_gets_the_tasks_branch_and_the_auto_fix_prompt() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group, branch_name="feature/export")
    [agent_id] = await _fail_check(repo)
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:54872")).worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    assert job.session.kind == m.JobKind.AUTO_FIX
    assert job.session.agent_task_id == agent_id
    assert job.task_id == task.id
    assert job.branch_name == "feature/export"
    assert job.title == "Export"
    assert job.prompt == (await m.UnitTaskAutoFixTask.get(agent_task_id=agent_id)).prompt
    assert [r.git_branch_name for r in job.base_remotes] == ["main"]
    assert (await m.Worker.get(id=worker.id)).current_task_id == task.id  # type: ignore[attr-defined]
    # Told again (a held job), it is the same.
    again = await workers.claims.describe_job(job.session)
    assert (again.task_id, again.branch_name, again.prompt) == (
        job.task_id,
        job.branch_name,
        job.prompt,
    )


async def test_both_apis_show_the_pr_state_and_the_auto_fix_runs(http: httpx.AsyncClient) -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    [agent_id] = await _fail_check(repo)
    await auto_fix.pull_request_closed(repository_id=repo.id, pr_url=PR_URL, merged=False)

    query = """query($id: ID!) { task(id: $id) { ... on UnitTask {
        status prState prStateChangedAt
        autoFixTasks { id aiAgentType sessions { kind status } } } } }"""
    got = await http.post("/graphql", json={"query": query, "variables": {"id": str(task.id)}})
    assert got.status_code == 200, got.text
    unit = got.json()["data"]["task"]
    assert unit["status"] == "PR_OPEN"
    assert unit["prState"] == "CLOSED"
    assert unit["prStateChangedAt"]
    assert [a["id"] for a in unit["autoFixTasks"]] == [str(agent_id)]
    assert unit["autoFixTasks"][0]["sessions"] == [{"kind": "AUTO_FIX", "status": "STOPPED"}]

    got = await http.post(
        "/delidev.v1.TaskService/Get",
        json={"taskId": str(task.id)},
        headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
    )
    assert got.status_code == 200, got.text
    unit = got.json()["task"]["unitTask"]
    assert unit["prState"] == "PULL_REQUEST_STATE_CLOSED"
    assert unit["prStateChangedAt"]
    [fix] = unit["autoFixTasks"]
    assert fix["id"] == str(agent_id)
    assert fix["sessions"][0]["kind"] == "JOB_KIND_AUTO_FIX"


async def test_closing_the_pr_stops_its_auto_fix_runs() -> None:
    repo, group = await _repo_group()
    queued_task = await _pr_open(group)
    running_task = await _pr_open(group, url="https://github.com/acme/app/pull/8")
    [queued] = await _fail_check(repo)
    [running] = await _fail_check(repo, url="https://github.com/acme/app/pull/8")
    await start_latest(running)
    await auto_fix.pull_request_closed(repository_id=repo.id, pr_url=PR_URL, merged=False)
    await auto_fix.pull_request_closed(
        repository_id=repo.id, pr_url="https://github.com/acme/app/pull/8", merged=True
    )
    assert (await latest_session(queued)).status == m.AgentSessionStatus.STOPPED
    flagged = await latest_session(running)
    assert flagged.status == m.AgentSessionStatus.RUNNING
    assert flagged.stop_requested
    assert (await m.UnitTask.get(id=queued_task.id)).status == S.PR_OPEN
    assert (await m.UnitTask.get(id=running_task.id)).status == S.DONE


async def test_the_migration_gives_linked_tasks_their_key_and_state() -> None:
    """Tasks linked before migration 0010 are matched by events after it."""
    migration = importlib.import_module("migrations.0010_pr_state")
    repo, group = await _repo_group()
    task = await _pr_open(group, url="https://GitHub.com/acme/app/pull/7/files")
    await m.UnitTask.filter(id=task.id).update(pr_key=None, pr_state=None)
    await migration.backfill_pr_keys(None, SimpleNamespace(client=connections.get("default")))
    fresh = await m.UnitTask.get(id=task.id)
    assert fresh.pr_key == PR_URL
    assert fresh.pr_state == m.PullRequestState.OPEN
    assert len(await _fail_check(repo)) == 1


async def test_triggers_closes_and_auto_fix_runs_announce_the_task() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    changed = events.TaskChanged(task_id=str(task.id), workspace_id=str(group.workspace_id))
    bus = events.EventBus()
    seen: list[events.Event] = []
    bus.subscribe(seen.append)
    token = events.bind(bus)
    try:
        [agent_id] = await _fail_check(repo)
        assert changed in seen
        assert events.JobQueued() in seen
        seen.clear()
        await start_latest(agent_id)  # a change of the auto-fix run shows on its task
        assert changed in seen
        seen.clear()
        await auto_fix.pull_request_closed(repository_id=repo.id, pr_url=PR_URL, merged=False)
        assert changed in seen
    finally:
        events.unbind(token)


async def test_a_queued_auto_fix_run_shows_why_it_waits_on_its_task() -> None:
    repo, group = await _repo_group()
    task = await _pr_open(group)
    assert await tasks.task_waits([task]) == {}
    [agent_id] = await _fail_check(repo)
    run = await latest_session(agent_id)
    waits = await tasks.task_waits([await m.UnitTask.get(id=task.id)])
    bundle = await tasks.load_task_view(await m.UnitTask.get(id=task.id))
    assert task.id in waits
    assert bundle.waits[task.id] == waits[task.id]
    assert waits[task.id].since == run.created_at
    await start_latest(agent_id)
    assert await tasks.task_waits([await m.UnitTask.get(id=task.id)]) == {}


async def test_no_auto_fix_run_for_a_node_of_a_rejected_composite() -> None:
    """Regression (review): a node with an open pull request under a rejected composite
    still got auto-fix runs, where a rejected composite starts no node run."""
    _, group = await _repo_group()
    composite = await tasks.create_composite_task(
        actor=A, repository_group_id=group.id, prompt="Build it"
    )
    plan = "tasks:\n  - id: a\n    prompt: first\n  - id: b\n    prompt: second\n"
    await finish_latest(composite.planning_task_id, plan_yaml=plan)
    await tasks.approve_task(actor=A, task_id=composite.id)
    node = await m.UnitTask.filter(composite_task_id=composite.id).order_by("created_at").first()
    assert node is not None
    await finish_latest(node.agent_task_id)
    await tasks.approve_task(actor=A, task_id=node.id)
    await tasks.reject_task(actor=A, task_id=composite.id)
    await tasks.update_task_status(
        actor=A, task_id=node.id, status=m.UnitTaskStatus.PR_OPEN, linked_pr_url=PR_URL
    )
    queued = await auto_fix._queue_run(
        node.id, trigger=m.AutoFixTrigger.CHECK_FAILED, prompt="fix", max_runs=3
    )
    assert queued is None
    assert not await m.UnitTaskAutoFixTask.exists(unit_task_id=node.id)
