"""The same behaviour through Connect (JSON and binary) and GraphQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from delidev import models as m
from tests.clients import ApiError


async def test_workspace_life_cycle(api: Any) -> None:
    ws = await api.create_workspace("Main", "first")
    assert (ws["name"], ws["description"]) == ("Main", "first")
    assert await api.get_workspace(ws["id"]) == ws
    second = await api.create_workspace("Second")
    ids, total = await api.list_workspaces()
    assert (ids, total) == ([ws["id"], second["id"]], 2)
    assert await api.list_workspaces(limit=1, offset=1) == ([second["id"]], 2)
    renamed = await api.update_workspace(ws["id"], name="Renamed")
    assert (renamed["name"], renamed["description"]) == ("Renamed", "first")
    cleared = await api.update_workspace(ws["id"], description="")
    assert cleared["description"] is None
    await api.delete_workspace(ws["id"])
    with pytest.raises(ApiError) as info:
        await api.get_workspace(ws["id"])
    assert (info.value.code, info.value.delidev_code) == ("NOT_FOUND", -32003)


async def test_repository_and_group(api: Any) -> None:
    ws = await api.create_workspace("w")
    repo = await api.add_repository(ws["id"], "git@github.com:acme/widgets.git")
    assert (repo["name"], repo["vcs_provider_type"], repo["default_branch"]) == (
        "widgets",
        "GITHUB",
        "main",
    )
    assert await api.get_repository(repo["id"]) == repo
    other = await api.add_repository(ws["id"], "https://gitlab.com/acme/tools")
    assert other["vcs_provider_type"] == "GITLAB"
    assert await api.list_repositories(ws["id"]) == ([repo["id"], other["id"]], 2)

    group = await api.create_group(ws["id"], [repo["id"], repo["id"], other["id"]], "pair")
    assert group["repository_ids"] == [repo["id"], other["id"]]
    assert group["name"] == "pair"
    updated = await api.update_group(group["id"], name="", remove=[repo["id"]])
    assert (updated["name"], updated["repository_ids"]) == (None, [other["id"]])
    groups, total = await api.list_groups(ws["id"])
    assert (total, [g["id"] for g in groups]) == (1, [group["id"]])

    await api.remove_repository(other["id"])
    assert await api.list_repositories(ws["id"]) == ([repo["id"]], 1)
    # The group lost its last repository, so it went with it.
    assert await api.list_groups(ws["id"]) == ([], 0)
    second = await api.create_group(ws["id"], [repo["id"]])
    await api.delete_group(second["id"])
    assert await api.list_groups(ws["id"]) == ([], 0)
    assert await api.list_repositories(ws["id"]) == ([repo["id"]], 1)


async def test_todo_life_cycle(api: Any) -> None:
    ws = await api.create_workspace("w")
    repo = await api.add_repository(ws["id"], "https://github.com/a/b")
    item = await api.create_issue_todo(
        repo["id"], "https://github.com/a/b/issues/1", "Bug", ["bug", "bug"]
    )
    assert (item["type"], item["status"], item["source"]) == ("ISSUE_TRIAGE", "PENDING", "AUTO")
    assert item["data"]["suggested_labels"] == ["bug"]
    assert await api.get_todo(item["id"]) == item
    assert (await api.update_todo_status(item["id"], "IN_PROGRESS"))["status"] == "IN_PROGRESS"
    assert await api.list_todos(workspace_id=ws["id"], status="IN_PROGRESS") == ([item["id"]], 1)
    assert await api.list_todos(repository_id=repo["id"], status="PENDING") == ([], 0)
    assert (await api.update_todo_status(item["id"], "COMPLETED"))["status"] == "COMPLETED"
    with pytest.raises(ApiError) as info:
        await api.dismiss_todo(item["id"])
    assert (info.value.code, info.value.delidev_code) == ("FAILED_PRECONDITION", -32005)
    assert "completed" in info.value.message
    assert "dismissed" in info.value.message
    assert (await api.get_todo(item["id"]))["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("call", "code", "delidev_code", "field"),
    [
        (lambda api, ids: api.get_workspace("not-a-uuid"), "INVALID_ARGUMENT", -32602, None),
        (lambda api, ids: api.get_workspace(str(uuid.uuid4())), "NOT_FOUND", -32003, None),
        (lambda api, ids: api.create_workspace(""), "INVALID_ARGUMENT", -32602, "name"),
        (lambda api, ids: api.create_workspace("x" * 256), "INVALID_ARGUMENT", -32602, "name"),
        (
            lambda api, ids: api.add_repository(ids["ws"], "not a url"),
            "INVALID_ARGUMENT",
            -32602,
            "remote_url",
        ),
        (
            lambda api, ids: api.add_repository(ids["ws"], "https://github.com/a/b"),
            "ALREADY_EXISTS",
            -32600,
            "remote_url",
        ),
        (
            lambda api, ids: api.create_group(ids["ws"], ["bogus"]),
            "INVALID_ARGUMENT",
            -32602,
            "repository_ids",
        ),
        (
            lambda api, ids: api.create_group(ids["ws"], [ids["foreign_repo"]]),
            "INVALID_ARGUMENT",
            -32602,
            "repository_ids",
        ),
        (
            lambda api, ids: api.create_issue_todo(ids["repo"], "ftp://x", "t"),
            "INVALID_ARGUMENT",
            -32602,
            "issue_triage.issue_url",
        ),
        (lambda api, ids: api.get_todo(str(uuid.uuid4())), "NOT_FOUND", -32003, "item_id"),
    ],
)
async def test_errors_are_the_same_on_every_transport(
    api: Any, call: Any, code: str, delidev_code: int, field: str | None
) -> None:
    ws = await api.create_workspace("w")
    other = await api.create_workspace("o")
    repo = await api.add_repository(ws["id"], "https://github.com/a/b")
    foreign = await api.add_repository(other["id"], "https://github.com/a/c")
    before = {
        "workspaces": await m.Workspace.all().count(),
        "repositories": await m.Repository.all().count(),
        "groups": await m.RepositoryGroup.all().count(),
        "todos": await m.TodoItem.all().count(),
    }
    with pytest.raises(ApiError) as info:
        await call(api, {"ws": ws["id"], "repo": repo["id"], "foreign_repo": foreign["id"]})
    assert (info.value.code, info.value.delidev_code) == (code, delidev_code)
    if field is not None:
        assert info.value.field == field
    after = {
        "workspaces": await m.Workspace.all().count(),
        "repositories": await m.Repository.all().count(),
        "groups": await m.RepositoryGroup.all().count(),
        "todos": await m.TodoItem.all().count(),
    }
    assert after == before


async def test_a_group_update_that_changes_nothing_leaves_the_group_untouched(api: Any) -> None:
    """Removing ids that are not members (unknown ones too), adding members it has and
    naming it as it is named are no-ops: nothing is written, updated_at stays."""
    ws = await api.create_workspace("w")
    repo = await api.add_repository(ws["id"], "https://github.com/a/b")
    group = await api.create_group(ws["id"], [repo["id"]], name="g")
    before = await m.RepositoryGroup.get(id=group["id"])
    unknown = str(uuid.uuid4())
    same = await api.update_group(group["id"], name="g", add=[repo["id"]], remove=[unknown])
    assert (same["name"], same["repository_ids"]) == ("g", [repo["id"]])
    after = await m.RepositoryGroup.get(id=group["id"])
    assert (after.name, after.updated_at) == (before.name, before.updated_at)
    renamed = await api.update_group(group["id"], name="h")
    assert renamed["name"] == "h"
    assert (await m.RepositoryGroup.get(id=group["id"])).name == "h"
