from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import todos
from tests.factories import make_repository, make_todo, make_workspace

pytestmark = pytest.mark.usefixtures("database")

S = m.TodoItemStatus


async def test_create_issue_triage_and_pr_review() -> None:
    repo = await make_repository(await make_workspace())
    issue = await todos.create_todo_item(
        actor=LOCAL_USER,
        repository_id=repo.id,
        data=todos.IssueTriageData(
            issue_url="https://github.com/a/b/issues/1",
            issue_title=" Crash ",
            suggested_labels=["bug", "bug", "p1"],
            suggested_assignees=["octocat"],
        ),
        source=m.TodoItemSource.MANUAL,
    )
    assert (issue.type, issue.status, issue.source) == (
        m.TodoItemType.ISSUE_TRIAGE,
        S.PENDING,
        m.TodoItemSource.MANUAL,
    )
    data = todos.todo_data(await todos.get_todo_item(actor=LOCAL_USER, item_id=issue.id))
    assert data == todos.IssueTriageData(
        issue_url="https://github.com/a/b/issues/1",
        issue_title="Crash",
        suggested_labels=["bug", "p1"],
        suggested_assignees=["octocat"],
    )
    pr = await todos.create_todo_item(
        actor=LOCAL_USER,
        repository_id=repo.id,
        data=todos.PrReviewData(
            pr_url="https://github.com/a/b/pull/2", pr_title="Fix", changed_files_count=3
        ),
    )
    assert pr.type == m.TodoItemType.PR_REVIEW
    assert todos.todo_data(pr) == todos.PrReviewData(
        pr_url="https://github.com/a/b/pull/2", pr_title="Fix", changed_files_count=3
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (todos.IssueTriageData(issue_url="ftp://x/y", issue_title="t"), "issue_triage.issue_url"),
        (
            todos.IssueTriageData(issue_url="https://x/y", issue_title=" "),
            "issue_triage.issue_title",
        ),
        (
            todos.IssueTriageData(issue_url="https://x/y", issue_title="t", suggested_labels=[""]),
            "issue_triage.suggested_labels",
        ),
        (
            todos.IssueTriageData(
                issue_url="https://x/y", issue_title="t", suggested_labels=["l"] * 101
            ),
            "issue_triage.suggested_labels",
        ),
        (todos.PrReviewData(pr_url="", pr_title="t"), "pr_review.pr_url"),
        (
            todos.PrReviewData(pr_url="https://x/p", pr_title="t", changed_files_count=-1),
            "pr_review.changed_files_count",
        ),
        (todos.PrReviewData(pr_url="https://x/p", pr_title="x" * 1001), "pr_review.pr_title"),
        (
            todos.PrReviewData(pr_url="https://x/p", pr_title="t", changed_files_count=2**31),
            "pr_review.changed_files_count",
        ),
        (todos.PrReviewData(pr_url="https://x/p q", pr_title="t"), "pr_review.pr_url"),
        (
            todos.IssueTriageData(issue_url="https://x/\ty", issue_title="t"),
            "issue_triage.issue_url",
        ),
    ],
)
async def test_create_validates_data(data: todos.TodoData, field: str) -> None:
    repo = await make_repository(await make_workspace())
    with pytest.raises(InvalidArgument) as info:
        await todos.create_todo_item(actor=LOCAL_USER, repository_id=repo.id, data=data)
    assert info.value.field == field
    assert await m.TodoItem.all().count() == 0


async def test_create_for_unknown_repository() -> None:
    with pytest.raises(NotFound):
        await todos.create_todo_item(
            actor=LOCAL_USER,
            repository_id=uuid.uuid4(),
            data=todos.IssueTriageData(issue_url="https://x/y", issue_title="t"),
        )


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ([S.IN_PROGRESS, S.COMPLETED], True),
        ([S.DISMISSED], True),
        ([S.IN_PROGRESS, S.DISMISSED], True),
        ([S.COMPLETED], False),
        ([S.IN_PROGRESS, S.PENDING], False),
        ([S.IN_PROGRESS, S.COMPLETED, S.DISMISSED], False),
        ([S.DISMISSED, S.IN_PROGRESS], False),
        ([S.IN_PROGRESS, S.COMPLETED, S.IN_PROGRESS], False),
    ],
)
async def test_status_transitions(path: list[m.TodoItemStatus], allowed: bool) -> None:
    item = await make_todo(await make_repository(await make_workspace()))
    *steps, last = path
    for status in steps:
        await todos.update_todo_status(actor=LOCAL_USER, item_id=item.id, status=status)
    before = (await m.TodoItem.get(id=item.id)).status
    if allowed:
        result = await todos.update_todo_status(actor=LOCAL_USER, item_id=item.id, status=last)
        assert result.status == last
    else:
        with pytest.raises(FailedPrecondition) as info:
            await todos.update_todo_status(actor=LOCAL_USER, item_id=item.id, status=last)
        assert before.value in info.value.message
        assert last.value in info.value.message
        assert (await m.TodoItem.get(id=item.id)).status == before


async def test_same_status_is_a_no_op_and_dismiss_is_idempotent() -> None:
    item = await make_todo(await make_repository(await make_workspace()))
    same = await todos.update_todo_status(actor=LOCAL_USER, item_id=item.id, status=S.PENDING)
    assert same.status == S.PENDING
    assert (await todos.dismiss_todo(actor=LOCAL_USER, item_id=item.id)).status == S.DISMISSED
    assert (await todos.dismiss_todo(actor=LOCAL_USER, item_id=item.id)).status == S.DISMISSED


async def test_concurrent_moves_have_one_winner() -> None:
    item = await make_todo(await make_repository(await make_workspace()))
    await todos.update_todo_status(actor=LOCAL_USER, item_id=item.id, status=S.IN_PROGRESS)
    results = await asyncio.gather(
        todos.update_todo_status(actor=LOCAL_USER, item_id=item.id, status=S.COMPLETED),
        todos.dismiss_todo(actor=LOCAL_USER, item_id=item.id),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, m.TodoItem)]
    assert len(winners) == 1
    assert isinstance(next(r for r in results if r not in winners), FailedPrecondition)
    assert (await m.TodoItem.get(id=item.id)).status == winners[0].status


async def test_list_filters_and_pages() -> None:
    ws, other = await make_workspace(), await make_workspace()
    r1, r2 = await make_repository(ws), await make_repository(ws)
    r3 = await make_repository(other)
    a = await make_todo(r1)
    b = await make_todo(r2)
    await make_todo(r3)
    pr = await todos.create_todo_item(
        actor=LOCAL_USER,
        repository_id=r1.id,
        data=todos.PrReviewData(pr_url="https://x/p/1", pr_title="p"),
    )
    await todos.update_todo_status(actor=LOCAL_USER, item_id=b.id, status=S.IN_PROGRESS)

    def ids(page: todos.Page[m.TodoItem]) -> list[uuid.UUID]:
        return [i.id for i in page.items]

    assert ids(await todos.list_todo_items(actor=LOCAL_USER, workspace_id=ws.id)) == [
        a.id,
        b.id,
        pr.id,
    ]
    assert ids(await todos.list_todo_items(actor=LOCAL_USER, repository_id=r1.id)) == [a.id, pr.id]
    assert ids(
        await todos.list_todo_items(actor=LOCAL_USER, workspace_id=ws.id, status=S.PENDING)
    ) == [a.id, pr.id]
    assert ids(
        await todos.list_todo_items(
            actor=LOCAL_USER, repository_id=r1.id, item_type=m.TodoItemType.PR_REVIEW
        )
    ) == [pr.id]
    page = await todos.list_todo_items(actor=LOCAL_USER, limit=2, offset=1)
    assert page.total_count == 4
    assert len(page.items) == 2
    with pytest.raises(NotFound):
        await todos.list_todo_items(actor=LOCAL_USER, repository_id=uuid.uuid4())


LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("move", ["update_status", "dismiss"])
async def test_status_changes_advance_updated_at(move: str) -> None:
    item = await make_todo(await make_repository(await make_workspace()))
    await m.TodoItem.filter(id=item.id).update(updated_at=LONG_AGO)
    if move == "dismiss":
        moved = await todos.dismiss_todo(actor=LOCAL_USER, item_id=item.id)
    else:
        moved = await todos.update_todo_status(
            actor=LOCAL_USER, item_id=item.id, status=S.IN_PROGRESS
        )
    assert moved.updated_at > LONG_AGO
    assert (await m.TodoItem.get(id=item.id)).updated_at > LONG_AGO
