"""Webhook deliveries: real GitHub example deliveries (``@octokit/webhooks-examples``) and
GitLab's documented payloads, signed as GitHub and GitLab sign them, through the service
(auto-fix rules, with a recorder in place of the auto-fix service) and through the app's
route (every refusal, and that a refusal stores nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from delidev.services import repository_settings, todos, webhooks
from delidev.services.auto_fix import ReviewComment
from tests.factories import make_repository, make_workspace
from tests.webhook_payloads import (
    GITHUB_SECRET,
    GITLAB_TOKEN,
    encode,
    github_example,
    github_headers,
    github_sign,
    gitlab_example,
    gitlab_headers,
)

pytestmark = pytest.mark.usefixtures("database")

RETENTION = dt.timedelta(days=7)
S = m.TodoItemStatus


@dataclass
class Recorder:
    """Stands in for the auto-fix service, to pin what each setting and filter asks of it."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def review_feedback(
        self, *, repository_id: UUID, pr_url: str, comments: Sequence[ReviewComment]
    ) -> list[UUID]:
        self.calls.append(
            (
                "review_feedback",
                {"repository_id": repository_id, "pr_url": pr_url, "comments": list(comments)},
            )
        )
        return [uuid.uuid4()]

    async def pull_request_reopened(self, *, repository_id: UUID, pr_url: str) -> list[UUID]:
        self.calls.append(
            ("pull_request_reopened", {"repository_id": repository_id, "pr_url": pr_url})
        )
        return []

    async def check_failed(
        self,
        *,
        repository_id: UUID,
        pr_url: str,
        check_name: str,
        summary: str,
        details_url: str | None,
    ) -> list[UUID]:
        self.calls.append(
            (
                "check_failed",
                {
                    "repository_id": repository_id,
                    "pr_url": pr_url,
                    "check_name": check_name,
                    "summary": summary,
                    "details_url": details_url,
                },
            )
        )
        return [uuid.uuid4()]

    async def pull_request_closed(
        self, *, repository_id: UUID, pr_url: str, merged: bool
    ) -> list[UUID]:
        self.calls.append(
            (
                "pull_request_closed",
                {"repository_id": repository_id, "pr_url": pr_url, "merged": merged},
            )
        )
        return []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


async def github_repo(actor: Principal = LOCAL_USER, **settings: Any) -> m.Repository:
    repo = await make_repository(await make_workspace(actor), actor)
    await repository_settings.set_webhook_secret(
        actor=actor, repository_id=repo.id, secret=GITHUB_SECRET
    )
    return await repository_settings.update_repository_settings(
        actor=actor, repository_id=repo.id, **settings
    )


async def gitlab_repo(actor: Principal = LOCAL_USER, **settings: Any) -> m.Repository:
    repo = await make_repository(await make_workspace(actor), actor, host="gitlab.com")
    await repository_settings.set_webhook_secret(
        actor=actor, repository_id=repo.id, secret=GITLAB_TOKEN
    )
    return await repository_settings.update_repository_settings(
        actor=actor, repository_id=repo.id, **settings
    )


async def deliver_github(
    repo: m.Repository,
    event: str,
    payload: dict[str, Any],
    recorder: Recorder | None = None,
    delivery: str | None = None,
) -> webhooks.Received:
    body = encode(payload)
    return await webhooks.receive_delivery(
        provider="github",
        repository_id=str(repo.id),
        headers=github_headers(event, body, delivery=delivery),
        body=body,
        retention=RETENTION,
        auto_fix=recorder or Recorder(),
    )


async def deliver_gitlab(
    repo: m.Repository,
    event: str,
    payload: dict[str, Any],
    recorder: Recorder | None = None,
    delivery: str | None = None,
) -> webhooks.Received:
    body = encode(payload)
    return await webhooks.receive_delivery(
        provider="gitlab",
        repository_id=str(repo.id),
        headers=gitlab_headers(event, delivery=delivery),
        body=body,
        retention=RETENTION,
        auto_fix=recorder or Recorder(),
    )


async def items(repo: m.Repository) -> list[m.TodoItem]:
    return await m.TodoItem.filter(repository_id=repo.id).order_by("created_at")


# -- the secret and the settings ----------------------------------------------------------


async def test_settings_default_and_secret_is_write_only() -> None:
    repo = await make_repository(await make_workspace())
    assert (repo.auto_triage, repo.auto_fix_review_comments, repo.auto_fix_ci_failures) == (
        True,
        False,
        False,
    )
    assert repo.review_comment_filter == m.ReviewCommentFilter.WRITE_ACCESS_ONLY
    assert repo.webhook_secret is None
    assert repository_settings.webhook_path(repo) == f"/webhooks/github/{repo.id}"
    repo = await repository_settings.set_webhook_secret(
        actor=LOCAL_USER, repository_id=repo.id, secret=GITHUB_SECRET
    )
    assert repo.webhook_secret == GITHUB_SECRET  # GitHub's HMAC needs the secret itself
    repo = await repository_settings.set_webhook_secret(
        actor=LOCAL_USER, repository_id=repo.id, secret=""
    )
    assert repo.webhook_secret is None


async def test_gitlab_token_is_stored_hashed() -> None:
    repo = await gitlab_repo()
    assert repo.webhook_secret is not None
    assert GITLAB_TOKEN not in repo.webhook_secret
    assert repo.webhook_secret == repository_settings.gitlab_token_digest(GITLAB_TOKEN)


@pytest.mark.parametrize(
    "secret", ["short", "x" * 257, " " + "y" * 20, "zz\x00" + "z" * 20, "é" * 20]
)
async def test_bad_secrets_are_refused(secret: str) -> None:
    repo = await make_repository(await make_workspace())
    with pytest.raises(InvalidArgument):
        await repository_settings.set_webhook_secret(
            actor=LOCAL_USER, repository_id=repo.id, secret=secret
        )
    assert (await m.Repository.get(id=repo.id)).webhook_secret is None


async def test_bitbucket_has_no_webhooks() -> None:
    repo = await make_repository(await make_workspace(), host="bitbucket.org")
    assert repository_settings.webhook_path(repo) is None
    with pytest.raises(FailedPrecondition):
        await repository_settings.set_webhook_secret(
            actor=LOCAL_USER, repository_id=repo.id, secret=GITHUB_SECRET
        )


async def test_another_users_repository_settings_are_not_found() -> None:
    alice = Principal(kind="user", user_id=(await m.User.create(email="a@x.test")).id)
    mallory = Principal(kind="user", user_id=(await m.User.create(email="m@x.test")).id)
    repo = await github_repo(alice)
    with pytest.raises(NotFound):
        await repository_settings.set_webhook_secret(
            actor=mallory, repository_id=repo.id, secret="m" * 20
        )
    with pytest.raises(NotFound):
        await repository_settings.update_repository_settings(
            actor=mallory, repository_id=repo.id, auto_triage=False
        )
    assert (await m.Repository.get(id=repo.id)).webhook_secret == GITHUB_SECRET


# -- GitHub: todo items -------------------------------------------------------------------


async def test_github_issue_opened_closed_reopened() -> None:
    repo = await github_repo()
    opened = github_example("issues", "opened")
    got = await deliver_github(repo, "issues", opened)
    assert got.outcome == webhooks.Outcome.PROCESSED
    [item] = await items(repo)
    assert (item.type, item.source, item.status) == (
        m.TodoItemType.ISSUE_TRIAGE,
        m.TodoItemSource.AUTO,
        S.PENDING,
    )
    assert todos.todo_data(item) == todos.IssueTriageData(
        issue_url=opened["issue"]["html_url"],
        issue_title=opened["issue"]["title"],
        suggested_labels=[label["name"] for label in opened["issue"]["labels"]],
        suggested_assignees=[a["login"] for a in opened["issue"]["assignees"]],
    )
    # Another delivery of "opened" for the same issue: still one item.
    await deliver_github(repo, "issues", github_example("issues", "opened"))
    assert len(await items(repo)) == 1

    closed = github_example("issues", "opened")
    closed["action"] = "closed"  # the examples' "closed" issue is another one: same issue here
    await deliver_github(repo, "issues", closed)
    [item] = await items(repo)
    assert item.status == S.COMPLETED

    await deliver_github(repo, "issues", github_example("issues", "reopened"))
    [item] = await items(repo)
    assert item.status == S.PENDING


async def test_a_dismissed_item_stays_dismissed_when_reopened() -> None:
    repo = await github_repo()
    await deliver_github(repo, "issues", github_example("issues", "opened"))
    [item] = await items(repo)
    await todos.dismiss_todo(actor=LOCAL_USER, item_id=item.id)
    await deliver_github(repo, "issues", github_example("issues", "reopened"))
    assert (await items(repo))[0].status == S.DISMISSED


async def test_github_pull_request_opened_review_requested_closed() -> None:
    repo = await github_repo()
    recorder = Recorder()
    opened = github_example("pull_request", "opened")
    await deliver_github(repo, "pull_request", opened, recorder)
    await deliver_github(repo, "pull_request", github_example("pull_request", "review_requested"))
    [item] = await items(repo)
    assert item.type == m.TodoItemType.PR_REVIEW
    assert todos.todo_data(item) == todos.PrReviewData(
        pr_url=opened["pull_request"]["html_url"],
        pr_title=opened["pull_request"]["title"],
        changed_files_count=opened["pull_request"]["changed_files"],
    )
    assert recorder.calls == []

    closed = github_example("pull_request", "closed")
    await deliver_github(repo, "pull_request", closed, recorder)
    assert (await items(repo))[0].status == S.COMPLETED
    assert recorder.calls == [
        (
            "pull_request_closed",
            {
                "repository_id": repo.id,
                "pr_url": closed["pull_request"]["html_url"],
                "merged": closed["pull_request"]["merged"],
            },
        )
    ]
    merged = github_example("pull_request", "closed")
    merged["pull_request"]["merged"] = True
    await deliver_github(repo, "pull_request", merged, recorder)
    assert recorder.calls[-1][1]["merged"] is True


async def test_auto_triage_off_files_nothing_but_remembers_the_delivery() -> None:
    repo = await github_repo(auto_triage=False)
    got = await deliver_github(repo, "issues", github_example("issues", "opened"))
    assert got.outcome == webhooks.Outcome.PROCESSED
    assert await items(repo) == []
    assert await m.WebhookDelivery.filter(repository_id=repo.id).count() == 1


# -- replays and races --------------------------------------------------------------------


async def test_a_replayed_delivery_is_acknowledged_and_not_acted_on() -> None:
    repo = await github_repo(auto_fix_ci_failures=True)
    recorder = Recorder()
    run = github_example(
        "check_run", "completed", lambda e: e["check_run"]["conclusion"] == "failure"
    )
    first = await deliver_github(repo, "check_run", run, recorder, delivery="d-1")
    again = await deliver_github(repo, "check_run", run, recorder, delivery="d-1")
    assert (first.outcome, again.outcome) == (
        webhooks.Outcome.PROCESSED,
        webhooks.Outcome.DUPLICATE,
    )
    assert recorder.names() == ["check_failed"]


async def test_concurrent_deliveries_act_once() -> None:
    repo = await github_repo()
    opened = github_example("issues", "opened")
    same_id = await asyncio.gather(
        *(deliver_github(repo, "issues", opened, delivery="same") for _ in range(4))
    )
    assert sorted(r.outcome for r in same_id).count(webhooks.Outcome.PROCESSED) == 1
    await asyncio.gather(*(deliver_github(repo, "issues", opened) for _ in range(4)))
    assert len(await items(repo)) == 1


async def test_old_deliveries_are_pruned() -> None:
    repo = await github_repo()
    await deliver_github(repo, "ping", {"zen": "Keep it logically awesome."}, delivery="old")
    await m.WebhookDelivery.filter(delivery_id="old").update(
        received_at=dt.datetime.now(dt.UTC) - RETENTION - dt.timedelta(minutes=1)
    )
    got = await deliver_github(repo, "ping", {"zen": "x"}, delivery="new")
    assert got.outcome == webhooks.Outcome.IGNORED
    assert await m.WebhookDelivery.filter(repository_id=repo.id).values_list(
        "delivery_id", flat=True
    ) == ["new"]
    # Once forgotten, the old id is a new delivery again.
    again = await deliver_github(repo, "ping", {"zen": "x"}, delivery="old")
    assert again.outcome == webhooks.Outcome.IGNORED


async def test_an_auto_fix_failure_forgets_the_delivery_so_a_redelivery_retries() -> None:
    repo = await github_repo(auto_fix_ci_failures=True)

    class Broken(Recorder):
        async def check_failed(self, **kwargs: Any) -> list[UUID]:  # type: ignore[override]
            raise RuntimeError("boom")

    run = github_example(
        "check_run", "completed", lambda e: e["check_run"]["conclusion"] == "failure"
    )
    with pytest.raises(RuntimeError):
        await deliver_github(repo, "check_run", run, Broken(), delivery="r-1")
    assert await m.WebhookDelivery.filter(repository_id=repo.id).count() == 0
    recorder = Recorder()
    got = await deliver_github(repo, "check_run", run, recorder, delivery="r-1")
    assert got.outcome == webhooks.Outcome.PROCESSED
    assert recorder.names() == ["check_failed"]


# -- GitHub: review comments and checks ---------------------------------------------------


async def test_review_comments_follow_the_settings_and_the_filter() -> None:
    comment = github_example(
        "pull_request_review_comment", "created", lambda e: e["comment"].get("line") is not None
    )
    assert comment["comment"]["author_association"] == "OWNER"

    off = await github_repo()
    recorder = Recorder()
    await deliver_github(off, "pull_request_review_comment", comment, recorder)
    assert recorder.calls == []

    on = await github_repo(auto_fix_review_comments=True)
    await deliver_github(on, "pull_request_review_comment", comment, recorder)
    [(name, args)] = recorder.calls
    assert name == "review_feedback"
    assert args["pr_url"] == comment["pull_request"]["html_url"]
    assert args["comments"] == [
        ReviewComment(
            author=comment["comment"]["user"]["login"],
            body=comment["comment"]["body"],
            url=comment["comment"]["html_url"],
            path=comment["comment"]["path"],
            line=comment["comment"]["line"],
        )
    ]

    outsider = github_example("pull_request_review_comment", "created")
    outsider["comment"]["author_association"] = "CONTRIBUTOR"
    recorder.calls.clear()
    await deliver_github(on, "pull_request_review_comment", outsider, recorder)
    assert recorder.calls == []  # write_access_only
    everyone = await github_repo(
        auto_fix_review_comments=True, review_comment_filter=m.ReviewCommentFilter.ALL
    )
    await deliver_github(everyone, "pull_request_review_comment", outsider, recorder)
    assert recorder.names() == ["review_feedback"]


async def test_reviews_with_changes_requested_or_a_body_count_empty_ones_do_not() -> None:
    repo = await github_repo(auto_fix_review_comments=True)
    recorder = Recorder()
    empty = github_example("pull_request_review", "submitted")
    assert not empty["review"]["body"]
    got = await deliver_github(repo, "pull_request_review", empty, recorder)
    assert (got.outcome, recorder.calls) == (webhooks.Outcome.IGNORED, [])

    changes = github_example("pull_request_review", "submitted")
    changes["review"]["state"] = "changes_requested"
    changes["review"]["body"] = "Please handle the empty list."
    await deliver_github(repo, "pull_request_review", changes, recorder)
    [(_, args)] = recorder.calls
    assert args["comments"][0].body == "Please handle the empty list."
    assert args["comments"][0].author == changes["review"]["user"]["login"]


async def test_failed_check_runs_ask_for_a_fix_of_each_pull_request() -> None:
    failed = github_example(
        "check_run", "completed", lambda e: e["check_run"]["conclusion"] == "failure"
    )
    passed = github_example(
        "check_run", "completed", lambda e: e["check_run"]["conclusion"] == "success"
    )
    recorder = Recorder()
    off = await github_repo()
    await deliver_github(off, "check_run", failed, recorder)
    assert recorder.calls == []

    repo = await github_repo(auto_fix_ci_failures=True)
    await deliver_github(repo, "check_run", passed, recorder)
    assert recorder.calls == []
    await deliver_github(repo, "check_run", failed, recorder)
    numbers = [pr["number"] for pr in failed["check_run"]["pull_requests"]]
    base = failed["repository"]["html_url"]
    assert [args["pr_url"] for _, args in recorder.calls] == [f"{base}/pull/{n}" for n in numbers]
    args = recorder.calls[0][1]
    assert args["check_name"] == failed["check_run"]["name"]
    assert args["details_url"] == failed["check_run"]["details_url"]
    assert args["repository_id"] == repo.id

    timed_out = copy_with(failed, ("check_run", "conclusion"), "timed_out")
    timed_out["check_run"]["output"] = {"title": "Lint", "summary": "x" * 10_000}
    recorder.calls.clear()
    await deliver_github(repo, "check_run", timed_out, recorder)
    summary = recorder.calls[0][1]["summary"]
    assert summary.startswith("Lint\n\nxxx")
    assert len(summary) <= webhooks.MAX_SUMMARY_CHARS


def copy_with(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(payload))
    target = copied
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copied


# -- GitLab -------------------------------------------------------------------------------


async def test_gitlab_issue_and_merge_request_items() -> None:
    repo = await gitlab_repo()
    recorder = Recorder()
    issue = gitlab_example("issue_open")
    await deliver_gitlab(repo, "Issue Hook", issue)
    mr = gitlab_example("merge_request_open")
    await deliver_gitlab(repo, "Merge Request Hook", mr)
    first, second = await items(repo)
    assert todos.todo_data(first) == todos.IssueTriageData(
        issue_url=issue["object_attributes"]["url"],
        issue_title=issue["object_attributes"]["title"],
        suggested_labels=["API"],
        suggested_assignees=["user1"],
    )
    assert todos.todo_data(second) == todos.PrReviewData(
        pr_url=mr["object_attributes"]["url"], pr_title="MS-Viewport", changed_files_count=0
    )
    issue["object_attributes"]["action"] = "close"
    await deliver_gitlab(repo, "Issue Hook", issue)
    mr["object_attributes"]["action"] = "merge"
    await deliver_gitlab(repo, "Merge Request Hook", mr, recorder)
    assert [i.status for i in await items(repo)] == [S.COMPLETED, S.COMPLETED]
    assert recorder.calls == [
        (
            "pull_request_closed",
            {"repository_id": repo.id, "pr_url": mr["object_attributes"]["url"], "merged": True},
        )
    ]


async def test_gitlab_notes_and_the_filter() -> None:
    note = gitlab_example("note_merge_request")
    assert note["project"]["visibility_level"] == 10  # internal: members are not the only ones
    recorder = Recorder()
    repo = await gitlab_repo(auto_fix_review_comments=True)
    await deliver_gitlab(repo, "Note Hook", note, recorder)
    assert recorder.calls == []

    private = gitlab_example("note_merge_request")
    private["project"]["visibility_level"] = 0
    await deliver_gitlab(repo, "Note Hook", private, recorder)
    everyone = await gitlab_repo(
        auto_fix_review_comments=True, review_comment_filter=m.ReviewCommentFilter.ALL
    )
    await deliver_gitlab(everyone, "Note Hook", note, recorder)
    assert [args["pr_url"] for _, args in recorder.calls] == [
        "http://example.com/gitlab-org/gitlab-test/merge_requests/1"
    ] * 2
    comment = recorder.calls[0][1]["comments"][0]
    assert (comment.author, comment.body) == ("root", "This MR needs work.")

    system = gitlab_example("note_merge_request")
    system["object_attributes"]["system"] = True
    recorder.calls.clear()
    await deliver_gitlab(everyone, "Note Hook", system, recorder)
    assert recorder.calls == []


async def test_gitlab_failed_pipeline_of_a_merge_request() -> None:
    pipeline = gitlab_example("pipeline_failed")
    recorder = Recorder()
    repo = await gitlab_repo(auto_fix_ci_failures=True)
    await deliver_gitlab(repo, "Pipeline Hook", pipeline, recorder)
    [(name, args)] = recorder.calls
    assert name == "check_failed"
    assert args["pr_url"] == pipeline["merge_request"]["url"]
    assert args["check_name"] == "Pipeline for branch: master"
    assert "test/test-build: script_failure" in args["summary"]
    assert args["details_url"] == pipeline["object_attributes"]["url"]

    passed = gitlab_example("pipeline_failed")
    passed["object_attributes"]["status"] = "success"
    recorder.calls.clear()
    got = await deliver_gitlab(repo, "Pipeline Hook", passed, recorder)
    assert (got.outcome, recorder.calls) == (webhooks.Outcome.IGNORED, [])


async def test_gitlab_uses_the_idempotency_key_when_given() -> None:
    repo = await gitlab_repo()
    body = encode(gitlab_example("issue_open"))
    for event_uuid in ("one", "two"):  # GitLab retries with a new event UUID, same key
        headers = {**gitlab_headers("Issue Hook", delivery=event_uuid), "idempotency-key": "k1"}
        got = await webhooks.receive_delivery(
            provider="gitlab",
            repository_id=str(repo.id),
            headers=headers,
            body=body,
            retention=RETENTION,
            auto_fix=Recorder(),
        )
    assert got.outcome == webhooks.Outcome.DUPLICATE


# -- refusals in the service --------------------------------------------------------------


async def test_refusals_name_the_problem_and_store_nothing() -> None:
    repo = await github_repo()
    gl = await gitlab_repo()
    no_secret = await make_repository(await make_workspace())
    body = encode(github_example("issues", "opened"))
    good = github_headers("issues", body)
    cases: list[tuple[str, str, dict[str, str], bytes, type[Exception]]] = [
        ("github", str(uuid.uuid4()), good, body, NotFound),
        ("github", "not-a-uuid", good, body, NotFound),
        ("gitlab", str(repo.id), good, body, NotFound),  # GitHub's repository on GitLab's path
        ("bitbucket", str(repo.id), good, body, NotFound),
        ("github", str(no_secret.id), good, body, NotFound),
        (
            "github",
            str(repo.id),
            {k: v for k, v in good.items() if k != "x-hub-signature-256"},
            body,
            Unauthenticated,
        ),
        (
            "github",
            str(repo.id),
            {**good, "x-hub-signature-256": github_sign("wrong", body)},
            body,
            Unauthenticated,
        ),
        (
            "github",
            str(repo.id),
            {**good, "x-hub-signature-256": "sha1=abc"},
            body,
            Unauthenticated,
        ),
        ("github", str(repo.id), good, body + b" ", Unauthenticated),
        (
            "gitlab",
            str(gl.id),
            gitlab_headers("Issue Hook", token="wrong-token-wrong"),
            body,
            Unauthenticated,
        ),
        (
            "gitlab",
            str(gl.id),
            {k: v for k, v in gitlab_headers("Issue Hook").items() if k != "x-gitlab-token"},
            body,
            Unauthenticated,
        ),
    ]
    for provider, rid, headers, sent, error in cases:
        with pytest.raises(error):
            await webhooks.receive_delivery(
                provider=provider,
                repository_id=rid,
                headers=headers,
                body=sent,
                retention=RETENTION,
                auto_fix=Recorder(),
            )
    assert await m.WebhookDelivery.all().count() == 0
    assert await m.TodoItem.all().count() == 0
