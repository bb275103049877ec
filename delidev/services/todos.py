"""Todo items: issues to triage and pull requests to review, per repository."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common
from delidev.services.common import (
    MAX_TEXT_LENGTH,
    Page,
    check_optional_text,
    check_text,
    owner_filter,
    page_bounds,
    paginate,
    transaction,
)
from delidev.services.repositories import get_repository
from delidev.services.workspaces import get_workspace

MAX_LIST_ENTRIES = 100
MAX_CHANGED_FILES = 2**31 - 1  # both APIs carry the count as a 32-bit integer

# Status moves allowed by UpdateStatus / Dismiss (setting the current status is a no-op).
_TRANSITIONS: dict[m.TodoItemStatus, frozenset[m.TodoItemStatus]] = {
    m.TodoItemStatus.PENDING: frozenset({m.TodoItemStatus.IN_PROGRESS, m.TodoItemStatus.DISMISSED}),
    m.TodoItemStatus.IN_PROGRESS: frozenset(
        {m.TodoItemStatus.COMPLETED, m.TodoItemStatus.DISMISSED}
    ),
    m.TodoItemStatus.COMPLETED: frozenset(),
    m.TodoItemStatus.DISMISSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class IssueTriageData:
    issue_url: str
    issue_title: str
    suggested_labels: list[str] = field(default_factory=list)
    suggested_assignees: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PrReviewData:
    pr_url: str
    pr_title: str
    changed_files_count: int = 0
    ai_summary: str | None = None


TodoData = IssueTriageData | PrReviewData


def check_url(value: str, field_name: str) -> str:
    """An http(s) URL (``common.check_web_url``). Raises: InvalidArgument."""
    return common.check_web_url(value, field_name)


def _check_list(values: Sequence[str], field_name: str) -> list[str]:
    if len(values) > MAX_LIST_ENTRIES:
        raise InvalidArgument(
            f"{field_name} has too many entries (at most {MAX_LIST_ENTRIES})", field=field_name
        )
    cleaned = [check_text(v, field_name) for v in values]
    return list(dict.fromkeys(cleaned))


def validate_todo_data(data: TodoData) -> TodoData:
    """Checks and normalises type-specific data. Raises: InvalidArgument."""
    if isinstance(data, IssueTriageData):
        return IssueTriageData(
            issue_url=check_url(data.issue_url, "issue_triage.issue_url"),
            issue_title=check_text(data.issue_title, "issue_triage.issue_title", max_length=1000),
            suggested_labels=_check_list(data.suggested_labels, "issue_triage.suggested_labels"),
            suggested_assignees=_check_list(
                data.suggested_assignees, "issue_triage.suggested_assignees"
            ),
        )
    if data.changed_files_count < 0:
        raise InvalidArgument(
            "pr_review.changed_files_count must not be negative",
            field="pr_review.changed_files_count",
        )
    if data.changed_files_count > MAX_CHANGED_FILES:
        raise InvalidArgument(
            f"pr_review.changed_files_count must be at most {MAX_CHANGED_FILES}",
            field="pr_review.changed_files_count",
        )
    return PrReviewData(
        pr_url=check_url(data.pr_url, "pr_review.pr_url"),
        pr_title=check_text(data.pr_title, "pr_review.pr_title", max_length=1000),
        changed_files_count=data.changed_files_count,
        ai_summary=check_optional_text(
            data.ai_summary, "pr_review.ai_summary", max_length=MAX_TEXT_LENGTH
        ),
    )


def todo_data(item: m.TodoItem) -> TodoData:
    """The typed data of a stored item."""
    raw: dict[str, Any] = dict(item.data or {})
    if item.type == m.TodoItemType.ISSUE_TRIAGE:
        return IssueTriageData(
            issue_url=str(raw.get("issue_url", "")),
            issue_title=str(raw.get("issue_title", "")),
            suggested_labels=[str(v) for v in raw.get("suggested_labels", [])],
            suggested_assignees=[str(v) for v in raw.get("suggested_assignees", [])],
        )
    summary = raw.get("ai_summary")
    return PrReviewData(
        pr_url=str(raw.get("pr_url", "")),
        pr_title=str(raw.get("pr_title", "")),
        # Bounded again on the way out: rows stored before the bound was checked.
        changed_files_count=min(int(raw.get("changed_files_count", 0)), MAX_CHANGED_FILES),
        ai_summary=None if summary is None else str(summary),
    )


# What a todo item's source is when the client does not say.
DEFAULT_TODO_SOURCE = m.TodoItemSource.AUTO


async def create_todo_item(
    *,
    actor: Principal,
    repository_id: UUID,
    data: TodoData,
    source: m.TodoItemSource | None = None,
) -> m.TodoItem:
    """Files a todo item; its type follows from the data. ``source`` left out (None) is
    ``DEFAULT_TODO_SOURCE``, whatever the transport.

    Raises: InvalidArgument, NotFound.
    """
    checked = validate_todo_data(data)
    repo = await get_repository(actor=actor, repository_id=repository_id)
    item_type = (
        m.TodoItemType.ISSUE_TRIAGE
        if isinstance(checked, IssueTriageData)
        else m.TodoItemType.PR_REVIEW
    )
    return await m.TodoItem.create(
        type=item_type,
        source=source or DEFAULT_TODO_SOURCE,
        status=m.TodoItemStatus.PENDING,
        repository_id=repo.id,
        data=asdict(checked),
    )


async def list_todo_items(
    *,
    actor: Principal,
    workspace_id: UUID | None = None,
    repository_id: UUID | None = None,
    status: m.TodoItemStatus | None = None,
    item_type: m.TodoItemType | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Page[m.TodoItem]:
    """Items matching every filter given, oldest first.

    Raises: InvalidArgument, NotFound (unknown workspace or repository).
    """
    page_bounds(limit, offset)  # refuse bad paging before any query
    query = m.TodoItem.filter(**owner_filter(actor, "repository__workspace__"))
    if workspace_id is not None:
        await get_workspace(actor=actor, workspace_id=workspace_id)
        query = query.filter(repository__workspace_id=workspace_id)
    if repository_id is not None:
        await get_repository(actor=actor, repository_id=repository_id)
        query = query.filter(repository_id=repository_id)
    if status is not None:
        query = query.filter(status=status)
    if item_type is not None:
        query = query.filter(type=item_type)
    return await paginate(query, limit, offset, long_text=("data",))


async def get_todo_item(*, actor: Principal, item_id: UUID) -> m.TodoItem:
    """Raises: NotFound."""
    item = await m.TodoItem.get_or_none(
        id=item_id, **owner_filter(actor, "repository__workspace__")
    )
    if item is None:
        raise NotFound(f"todo item {item_id} not found", field="item_id")
    return item


async def update_todo_status(
    *, actor: Principal, item_id: UUID, status: m.TodoItemStatus
) -> m.TodoItem:
    """Moves an item along pending → in_progress → completed, or to dismissed.

    Raises: NotFound, FailedPrecondition.
    """
    item = await get_todo_item(actor=actor, item_id=item_id)
    if item.status == status:
        return item
    if status not in _TRANSITIONS[item.status]:
        raise FailedPrecondition(
            f"todo item {item.id} cannot move from {item.status.value} to {status.value}"
        )
    # Compare-and-set: of two concurrent moves from one status only one wins.
    changed = await m.TodoItem.filter(id=item.id, status=item.status).update(
        **common.changed(status=status)
    )
    if not changed:
        current = await get_todo_item(actor=actor, item_id=item_id)
        if current.status == status:
            return current
        raise FailedPrecondition(
            f"todo item {item.id} cannot move from {current.status.value} to {status.value}"
        )
    return await get_todo_item(actor=actor, item_id=item_id)


async def dismiss_todo(*, actor: Principal, item_id: UUID) -> m.TodoItem:
    """Raises: NotFound, FailedPrecondition (already completed)."""
    return await update_todo_status(actor=actor, item_id=item_id, status=m.TodoItemStatus.DISMISSED)


async def workspace_ids_of_repositories(repository_ids: Sequence[UUID]) -> dict[UUID, UUID]:
    """Workspace id of each repository (one query; for converters)."""
    if not repository_ids:
        return {}
    rows = await m.Repository.filter(id__in=list(repository_ids)).values_list("id", "workspace_id")
    return dict(rows)


# Items filed from webhooks -------------------------------------------------------------


def _url_of(data: TodoData) -> str:
    return data.issue_url if isinstance(data, IssueTriageData) else data.pr_url


async def file_auto_item(
    *, repository_id: UUID, data: TodoData, reopened: bool = False
) -> tuple[m.TodoItem, bool]:
    """Files an ``auto`` item for an issue or pull request seen in a webhook delivery, at
    most one per repository and URL, and says whether it is new. An item already filed
    gets the new title and labels; ``reopened`` makes a completed one pending again (a
    dismissed one stays dismissed: someone decided it needs nothing). Safe when two
    deliveries of the same URL race (the unique (repository, URL) index decides).

    Raises: InvalidArgument.
    """
    checked = validate_todo_data(data)
    url = _url_of(checked)
    item_type = (
        m.TodoItemType.ISSUE_TRIAGE
        if isinstance(checked, IssueTriageData)
        else m.TodoItemType.PR_REVIEW
    )
    async with transaction():
        try:
            async with in_transaction():  # a savepoint: a lost race leaves the rest intact
                item = await m.TodoItem.create(
                    type=item_type,
                    source=m.TodoItemSource.AUTO,
                    status=m.TodoItemStatus.PENDING,
                    repository_id=repository_id,
                    data=asdict(checked),
                    external_url=url,
                )
            return item, True
        except IntegrityError:
            pass  # filed before (or by a concurrent delivery): refresh it below
        item = await m.TodoItem.get(repository_id=repository_id, external_url=url)
        fresh = asdict(checked)
        if isinstance(checked, PrReviewData) and checked.ai_summary is None:
            fresh["ai_summary"] = (item.data or {}).get("ai_summary")
        await m.TodoItem.filter(id=item.id).update(**common.changed(data=fresh))
        if reopened:
            await m.TodoItem.filter(id=item.id, status=m.TodoItemStatus.COMPLETED).update(
                **common.changed(status=m.TodoItemStatus.PENDING)
            )
        return await m.TodoItem.get(id=item.id), False


async def complete_auto_item(*, repository_id: UUID, url: str) -> m.TodoItem | None:
    """Completes the pending or in-progress item filed for ``url`` (its issue or pull
    request was closed); the item, or None when none was filed."""
    await m.TodoItem.filter(
        repository_id=repository_id,
        external_url=url,
        status__in=[m.TodoItemStatus.PENDING, m.TodoItemStatus.IN_PROGRESS],
    ).update(**common.changed(status=m.TodoItemStatus.COMPLETED))
    return await m.TodoItem.get_or_none(repository_id=repository_id, external_url=url)
