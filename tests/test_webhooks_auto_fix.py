"""Webhook deliveries reaching the real auto-fix service through the app's route: a GitHub
example ``check_run`` failure, review comment and merge of a task's pull request, and a GitLab
failed pipeline and note; the repository's settings decide, another tenant's task with the
same pull request URL is never touched."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.services import repository_settings, tasks
from tests.factories import finish_latest, make_group, make_repository, make_workspace
from tests.webhook_payloads import (
    GITHUB_SECRET,
    GITLAB_TOKEN,
    encode,
    github_example,
    github_headers,
    gitlab_example,
    gitlab_headers,
)

pytestmark = pytest.mark.usefixtures("database")

# The examples' pull request (Codertocat/Hello-World#2) and merge request.
GITHUB_PR = "https://github.com/Codertocat/Hello-World/pull/2"
GITLAB_MR = "http://192.168.64.1:3005/gitlab-org/gitlab-test/merge_requests/1"


async def task_on_pr(
    pr_url: str, actor: Principal = LOCAL_USER, host: str = "github.com", **settings: Any
) -> tuple[m.Repository, m.UnitTask]:
    ws = await make_workspace(actor)
    repo = await make_repository(ws, actor, host=host)
    secret = GITLAB_TOKEN if host == "gitlab.com" else GITHUB_SECRET
    await repository_settings.set_webhook_secret(actor=actor, repository_id=repo.id, secret=secret)
    repo = await repository_settings.update_repository_settings(
        actor=actor, repository_id=repo.id, **settings
    )
    group = await make_group(ws, [repo], actor)
    task = await tasks.create_unit_task(
        actor=actor, repository_group_id=group.id, prompt="Fix the README", title="README"
    )
    await finish_latest(task.agent_task_id)
    await tasks.approve_task(actor=actor, task_id=task.id)
    task = await tasks.update_task_status(
        actor=actor, task_id=task.id, status=m.UnitTaskStatus.PR_OPEN, linked_pr_url=pr_url
    )
    return repo, task


async def fixes(task: m.UnitTask) -> int:
    return await m.UnitTaskAutoFixTask.filter(unit_task_id=task.id).count()


async def post_github(
    http: httpx.AsyncClient, repo: m.Repository, event: str, payload: dict[str, Any]
) -> httpx.Response:
    body = encode(payload)
    return await http.post(
        f"/webhooks/github/{repo.id}", content=body, headers=github_headers(event, body)
    )


async def post_gitlab(
    http: httpx.AsyncClient, repo: m.Repository, event: str, payload: dict[str, Any]
) -> httpx.Response:
    return await http.post(
        f"/webhooks/gitlab/{repo.id}", content=encode(payload), headers=gitlab_headers(event)
    )


def failed_run() -> dict[str, Any]:
    return github_example(
        "check_run", "completed", lambda e: e["check_run"]["conclusion"] == "failure"
    )


async def test_a_failed_check_run_queues_an_auto_fix_run_when_on(http: httpx.AsyncClient) -> None:
    off_repo, off_task = await task_on_pr(GITHUB_PR)
    assert (await post_github(http, off_repo, "check_run", failed_run())).status_code == 200
    assert await fixes(off_task) == 0

    repo, task = await task_on_pr(GITHUB_PR, auto_fix_ci_failures=True)
    answer = await post_github(http, repo, "check_run", failed_run())
    assert answer.status_code == 200, answer.text
    assert await fixes(task) == 1
    fix = await m.UnitTaskAutoFixTask.get(unit_task_id=task.id)
    assert fix.prompt is not None
    assert "Octocoders-linter" in fix.prompt
    assert await fixes(off_task) == 0  # the same PR URL in another workspace: untouched


async def test_review_comments_queue_a_run_per_the_filter(http: httpx.AsyncClient) -> None:
    repo, task = await task_on_pr(GITHUB_PR, auto_fix_review_comments=True)
    outsider = github_example("pull_request_review_comment", "created")
    outsider["comment"]["author_association"] = "NONE"
    assert (
        await post_github(http, repo, "pull_request_review_comment", outsider)
    ).status_code == 200
    assert await fixes(task) == 0
    owner = github_example("pull_request_review_comment", "created")
    assert (await post_github(http, repo, "pull_request_review_comment", owner)).status_code == 200
    assert await fixes(task) == 1
    fix = await m.UnitTaskAutoFixTask.get(unit_task_id=task.id)
    assert fix.prompt is not None
    assert owner["comment"]["body"][:20] in fix.prompt


async def test_a_merged_pull_request_finishes_the_task(http: httpx.AsyncClient) -> None:
    repo, task = await task_on_pr(GITHUB_PR)
    merged = github_example("pull_request", "closed")
    merged["pull_request"]["merged"] = True
    answer = await post_github(http, repo, "pull_request", merged)
    assert answer.status_code == 200, answer.text
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.DONE


async def test_a_pull_request_closed_then_reopened_is_open_again(
    http: httpx.AsyncClient,
) -> None:
    repo, task = await task_on_pr(GITHUB_PR)
    closed = github_example("pull_request", "closed")
    closed["pull_request"]["merged"] = False
    assert (await post_github(http, repo, "pull_request", closed)).status_code == 200
    stored = await m.UnitTask.get(id=task.id)
    assert (stored.status, stored.pr_state) == (m.UnitTaskStatus.PR_OPEN, m.PullRequestState.CLOSED)
    reopened = github_example("pull_request", "reopened")
    reopened["pull_request"]["html_url"] = GITHUB_PR
    assert (await post_github(http, repo, "pull_request", reopened)).status_code == 200
    stored = await m.UnitTask.get(id=task.id)
    assert (stored.status, stored.pr_state) == (m.UnitTaskStatus.PR_OPEN, m.PullRequestState.OPEN)
    # Merged at last: the task is done, and a reopen of a merged PR changes nothing.
    merged = github_example("pull_request", "closed")
    merged["pull_request"]["merged"] = True
    assert (await post_github(http, repo, "pull_request", merged)).status_code == 200
    assert (await post_github(http, repo, "pull_request", reopened)).status_code == 200
    stored = await m.UnitTask.get(id=task.id)
    assert (stored.status, stored.pr_state) == (m.UnitTaskStatus.DONE, m.PullRequestState.MERGED)


async def test_gitlab_failed_pipeline_and_note(http: httpx.AsyncClient) -> None:
    repo, task = await task_on_pr(
        GITLAB_MR,
        host="gitlab.com",
        auto_fix_ci_failures=True,
        auto_fix_review_comments=True,
        review_comment_filter=m.ReviewCommentFilter.ALL,
    )
    answer = await post_gitlab(http, repo, "Pipeline Hook", gitlab_example("pipeline_failed"))
    assert answer.status_code == 200, answer.text
    assert await fixes(task) == 1
    fix = await m.UnitTaskAutoFixTask.get(unit_task_id=task.id)
    assert fix.prompt is not None
    assert "test-build" in fix.prompt


async def test_another_tenants_task_on_the_same_pr_is_not_touched(
    http: httpx.AsyncClient,
) -> None:
    alice = Principal(kind="user", user_id=(await m.User.create(email="alice@x.test")).id)
    bob = Principal(kind="user", user_id=(await m.User.create(email="bob@x.test")).id)
    alice_repo, alice_task = await task_on_pr(GITHUB_PR, alice, auto_fix_ci_failures=True)
    _, bob_task = await task_on_pr(GITHUB_PR, bob, auto_fix_ci_failures=True)
    assert (await post_github(http, alice_repo, "check_run", failed_run())).status_code == 200
    merged = github_example("pull_request", "closed")
    merged["pull_request"]["merged"] = True
    assert (await post_github(http, alice_repo, "pull_request", merged)).status_code == 200
    assert (await fixes(alice_task), await fixes(bob_task)) == (1, 0)
    assert (await m.UnitTask.get(id=bob_task.id)).status == m.UnitTaskStatus.PR_OPEN


async def test_nul_characters_in_payload_text_are_dropped(http: httpx.AsyncClient) -> None:
    """JSON may carry NUL and lone surrogates, no database column stores them: the text is
    acted on without them (on PostgreSQL these deliveries used to fail with a 500)."""
    repo, task = await task_on_pr(GITHUB_PR, auto_fix_review_comments=True)
    comment = github_example("pull_request_review_comment", "created")
    comment["comment"]["body"] = "Rename\x00 this\ud800 variable"
    answer = await post_github(http, repo, "pull_request_review_comment", comment)
    assert answer.status_code == 200, answer.text

    ci_repo, ci_task = await task_on_pr(GITHUB_PR, auto_fix_ci_failures=True)
    run = failed_run()
    run["check_run"]["output"]["summary"] = "The linter\x00 failed"
    answer = await post_github(http, ci_repo, "check_run", run)
    assert answer.status_code == 200, answer.text

    gitlab_repo, gitlab_task = await task_on_pr(
        "http://example.com/gitlab-org/gitlab-test/merge_requests/1",
        host="gitlab.com",
        auto_fix_review_comments=True,
        review_comment_filter=m.ReviewCommentFilter.ALL,
    )
    note = gitlab_example("note_merge_request")
    note["object_attributes"]["note"] = "Needs\x00 work"
    answer = await post_gitlab(http, gitlab_repo, "Note Hook", note)
    assert answer.status_code == 200, answer.text

    for unit, words in (
        (task, "Rename this variable"),
        (ci_task, "The linter failed"),
        (gitlab_task, "Needs work"),
    ):
        fix = await m.UnitTaskAutoFixTask.get(unit_task_id=unit.id)
        assert fix.prompt is not None
        assert words in fix.prompt
        assert "\x00" not in fix.prompt
