"""Repositories and repository groups of a workspace."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit
from uuid import UUID

from tortoise.exceptions import IntegrityError

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from delidev.services.common import (
    MAX_URL_LENGTH,
    Page,
    check_optional_text,
    check_text,
    hold_repositories,
    owner_filter,
    page_bounds,
    paginate,
    parse_id,
    transaction,
)
from delidev.services.scheduling.labels import parse_labels
from delidev.services.workspaces import get_workspace

_SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._~-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*)$")
_URL_SCHEMES = ("https", "http", "git", "ssh")
_BRANCH_NAME = re.compile(r"^[A-Za-z0-9._/-]+$")


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    host: str
    name: str
    provider: m.VcsProviderType | None


def parse_remote_url(remote_url: str) -> RemoteInfo:
    """Host, repository name and provider of a git remote URL (FACTS.md).

    Raises: InvalidArgument.
    """
    url = check_text(remote_url, "remote_url", max_length=MAX_URL_LENGTH)
    if any(c.isspace() for c in url):
        raise InvalidArgument("remote_url must not contain spaces", field="remote_url")
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme.lower() not in _URL_SCHEMES:
            raise InvalidArgument(
                f"remote_url has an unsupported scheme {parts.scheme!r} "
                f"(use {', '.join(_URL_SCHEMES)} or git@host:owner/name)",
                field="remote_url",
            )
        web = parts.scheme.lower() in ("http", "https")
        if parts.password is not None or (web and parts.username is not None):
            # The URL is stored and shown to clients: a token in it would leak (ssh://git@…
            # names a user, not a secret). The message does not echo the URL.
            raise InvalidArgument(
                "remote_url must not contain credentials (user:token@): "
                "give the token to the worker as a secret",
                field="remote_url",
            )
        host, path = parts.hostname or "", parts.path
    else:
        match = _SCP_LIKE.match(url)
        if match is None:
            raise InvalidArgument(
                "remote_url is not a git remote URL "
                "(expected https://host/owner/name or git@host:owner/name)",
                field="remote_url",
            )
        host, path = match["host"], match["path"]
    segments = [s for s in path.split("/") if s]
    if not host or len(segments) < 2:
        raise InvalidArgument(
            "remote_url must name a host and an owner/name path", field="remote_url"
        )
    name = segments[-1].removesuffix(".git")
    if not name:
        raise InvalidArgument("remote_url has an empty repository name", field="remote_url")
    return RemoteInfo(host=host.lower(), name=name, provider=_provider_of(host.lower()))


def _provider_of(host: str) -> m.VcsProviderType | None:
    if host == "github.com" or host.endswith(".github.com"):
        return m.VcsProviderType.GITHUB
    if "gitlab" in host:
        return m.VcsProviderType.GITLAB
    if "bitbucket" in host:
        return m.VcsProviderType.BITBUCKET
    return None


def _check_branch(value: str, field: str) -> str:
    branch = check_text(value, field)
    if not _BRANCH_NAME.match(branch) or ".." in branch or branch.startswith(("/", "-")):
        raise InvalidArgument(f"{field} is not a valid branch name: {branch!r}", field=field)
    return branch


async def add_repository(
    *,
    actor: Principal,
    workspace_id: UUID,
    remote_url: str,
    name: str | None = None,
    local_path: str | None = None,
    default_branch: str | None = None,
    vcs_provider_type: m.VcsProviderType | None = None,
    branch_name_template: str | None = None,
) -> m.Repository:
    """Adds a repository; name and provider are derived from the URL when not given.

    Raises: InvalidArgument, NotFound, AlreadyExists.
    """
    info = parse_remote_url(remote_url)
    provider = vcs_provider_type or info.provider
    if provider is None:
        raise InvalidArgument(
            f"cannot tell the provider of host {info.host!r} from remote_url: "
            "give vcs_provider_type",
            field="vcs_provider_type",
        )
    repo_name = check_optional_text(name, "name") or info.name
    path = check_optional_text(local_path, "local_path", max_length=4096) or ""
    branch = _check_branch(default_branch, "default_branch") if default_branch else "main"
    template = check_optional_text(branch_name_template, "branch_name_template")
    workspace = await get_workspace(actor=actor, workspace_id=workspace_id)
    url = remote_url.strip()
    if await m.Repository.exists(workspace_id=workspace.id, remote_url=url):
        raise AlreadyExists(
            f"workspace {workspace.id} already has a repository with this remote_url",
            field="remote_url",
        )
    try:
        return await m.Repository.create(
            workspace_id=workspace.id,
            name=repo_name,
            local_path=path,
            remote_url=url,
            default_branch=branch,
            vcs_type=m.VcsType.GIT,
            vcs_provider_type=provider,
            branch_name_template=template,
        )
    except IntegrityError:  # lost a race with an identical add
        raise AlreadyExists(
            f"workspace {workspace.id} already has a repository with this remote_url",
            field="remote_url",
        ) from None


async def list_repositories(
    *,
    actor: Principal,
    workspace_id: UUID | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Page[m.Repository]:
    """Repositories of one workspace, or of all the actor's workspaces; oldest first.

    Raises: InvalidArgument, NotFound (unknown workspace).
    """
    page_bounds(limit, offset)  # refuse bad paging before any query
    query = m.Repository.filter(**owner_filter(actor, "workspace__"))
    if workspace_id is not None:
        await get_workspace(actor=actor, workspace_id=workspace_id)
        query = query.filter(workspace_id=workspace_id)
    return await paginate(query, limit, offset)


async def get_repository(*, actor: Principal, repository_id: UUID) -> m.Repository:
    """Raises: NotFound."""
    repo = await m.Repository.get_or_none(id=repository_id, **owner_filter(actor, "workspace__"))
    if repo is None:
        raise NotFound(f"repository {repository_id} not found", field="repository_id")
    return repo


async def remove_repository(*, actor: Principal, repository_id: UUID) -> None:
    """Removes a repository with its todo items and group memberships.

    Groups left without any repository are deleted with it (a group always has at least
    one). A repository that belongs to a group with tasks stays: the tasks' history
    needs it.

    Raises: NotFound, FailedPrecondition.
    """
    async with transaction():
        repo = await get_repository(actor=actor, repository_id=repository_id)
        # Locked before its memberships are read: a membership being added commits first
        # (and is read), or waits and finds the repository gone (PostgreSQL).
        await m.Repository.filter(id=repo.id).select_for_update()
        group_ids = cast(
            list[UUID],
            await m.RepositoryGroupMember.filter(repository_id=repo.id).values_list(
                "group_id", flat=True
            ),
        )
        # Locked (PostgreSQL) so that a task being created in one of them commits before the
        # check below sees it, or reads the members after this change (``hold_group``).
        await m.RepositoryGroup.filter(id__in=group_ids).order_by("id").select_for_update()
        busy = await _groups_with_tasks(group_ids)
        if busy:
            raise FailedPrecondition(
                f"repository {repo.id} belongs to repository group {sorted(busy)[0]}, "
                "which has tasks: delete those tasks first"
            )
        await repo.delete()
        if group_ids:
            still_used = await m.RepositoryGroupMember.filter(group_id__in=group_ids).values_list(
                "group_id", flat=True
            )
            await m.RepositoryGroup.filter(id__in=set(group_ids) - set(still_used)).delete()


async def _groups_with_tasks(group_ids: Iterable[UUID]) -> set[UUID]:
    ids = list(group_ids)
    if not ids:
        return set()
    unit = cast(
        list[UUID],
        await m.UnitTask.filter(repository_group_id__in=ids).values_list(
            "repository_group_id", flat=True
        ),
    )
    composite = cast(
        list[UUID],
        await m.CompositeTask.filter(repository_group_id__in=ids).values_list(
            "repository_group_id", flat=True
        ),
    )
    return {*unit, *composite}


# Repository groups --------------------------------------------------------------------


async def _member_repositories(
    *, actor: Principal, workspace: m.Workspace, repository_ids: Sequence[str | UUID], field: str
) -> list[UUID]:
    """Parses, de-duplicates (keeping order) and checks repository ids for a group."""
    ids = list(dict.fromkeys(parse_id(r, field) for r in repository_ids))
    if not ids:
        return []
    found = await m.Repository.filter(id__in=ids, **owner_filter(actor, "workspace__")).values(
        "id", "workspace_id"
    )
    by_id = {row["id"]: row["workspace_id"] for row in found}
    for rid in ids:
        if rid not in by_id:
            raise NotFound(f"repository {rid} not found", field=field)
        if by_id[rid] != workspace.id:
            raise InvalidArgument(
                f"repository {rid} does not belong to workspace {workspace.id}", field=field
            )
    return ids


def _new_members(group_id: UUID, repository_ids: Sequence[UUID]) -> list[m.RepositoryGroupMember]:
    """Member rows whose ``created_at`` increases strictly in the order given.

    Members are listed by ``created_at``; one bulk insert would give them all one
    timestamp, and the order would then fall back to random ids.
    """
    start = dt.datetime.now(dt.UTC)
    return [
        m.RepositoryGroupMember(
            group_id=group_id,
            repository_id=rid,
            created_at=start + dt.timedelta(microseconds=position),
        )
        for position, rid in enumerate(repository_ids)
    ]


async def create_repository_group(
    *,
    actor: Principal,
    workspace_id: UUID,
    repository_ids: Sequence[str | UUID],
    name: str | None = None,
    default_required_labels: Sequence[str] = (),
) -> m.RepositoryGroup:
    """Creates a group of at least one repository of the workspace; duplicates are ignored.

    ``default_required_labels``: the labels a task of the group requires when it names none.

    Raises: InvalidArgument, NotFound.
    """
    group_name = check_optional_text(name, "name")
    labels = parse_labels(default_required_labels, "default_required_labels")
    workspace = await get_workspace(actor=actor, workspace_id=workspace_id)
    ids = await _member_repositories(
        actor=actor, workspace=workspace, repository_ids=repository_ids, field="repository_ids"
    )
    if not ids:
        raise InvalidArgument(
            "repository_ids must name at least one repository", field="repository_ids"
        )
    async with transaction():
        group = await m.RepositoryGroup.create(
            workspace_id=workspace.id, name=group_name, default_required_labels=labels
        )
        await m.RepositoryGroupMember.bulk_create(_new_members(group.id, ids))
    return group


async def list_repository_groups(
    *,
    actor: Principal,
    workspace_id: UUID | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Page[m.RepositoryGroup]:
    """Raises: InvalidArgument, NotFound (unknown workspace)."""
    page_bounds(limit, offset)  # refuse bad paging before any query
    query = m.RepositoryGroup.filter(**owner_filter(actor, "workspace__"))
    if workspace_id is not None:
        await get_workspace(actor=actor, workspace_id=workspace_id)
        query = query.filter(workspace_id=workspace_id)
    return await paginate(query, limit, offset)


async def get_repository_group(
    *, actor: Principal, group_id: UUID, field: str = "group_id"
) -> m.RepositoryGroup:
    """Raises: NotFound (naming ``field``, the caller's name for the id)."""
    group = await m.RepositoryGroup.get_or_none(id=group_id, **owner_filter(actor, "workspace__"))
    if group is None:
        raise NotFound(f"repository group {group_id} not found", field=field)
    return group


async def update_repository_group(
    *,
    actor: Principal,
    group_id: UUID,
    name: str | None = None,
    add_repository_ids: Sequence[str | UUID] = (),
    remove_repository_ids: Sequence[str | UUID] = (),
    default_required_labels: Sequence[str] | None = None,
) -> m.RepositoryGroup:
    """Renames (an empty name clears it), adds or removes members, replaces the default
    labels (None: unchanged; empty: none). Tasks created before keep their labels.

    Members of a group with tasks cannot be removed (as in ``remove_repository``): the
    tasks' history needs them. Adding members is allowed. Removing an id that is not a
    member is a no-op, like adding one that is: a call that changes nothing leaves the group
    untouched (``updated_at`` too), so that a retried call is harmless.

    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    new_name = check_optional_text(name, "name") if name is not None else None
    labels = (
        None
        if default_required_labels is None
        else parse_labels(default_required_labels, "default_required_labels")
    )
    async with transaction():
        group = await get_repository_group(actor=actor, group_id=group_id)
        # The repositories added, then the group, are locked in remove_repository's order
        # (repository, then its groups), so that the two never deadlock (PostgreSQL).
        await hold_repositories([parse_id(r, "add_repository_ids") for r in add_repository_ids])
        await m.RepositoryGroup.filter(id=group.id).select_for_update()
        workspace = await m.Workspace.get(id=group.workspace_id)
        to_add = await _member_repositories(
            actor=actor,
            workspace=workspace,
            repository_ids=add_repository_ids,
            field="add_repository_ids",
        )
        to_remove = {parse_id(r, "remove_repository_ids") for r in remove_repository_ids}
        current = set(
            await m.RepositoryGroupMember.filter(group_id=group.id).values_list(
                "repository_id", flat=True
            )
        )
        final = (current - to_remove) | set(to_add)
        if not final:
            raise InvalidArgument(
                "a repository group needs at least one repository",
                field="remove_repository_ids",
            )
        if to_remove & current and await _groups_with_tasks([group.id]):
            # remove_repository's rule: the tasks' history needs the repositories they ran on.
            raise FailedPrecondition(
                f"repository group {group.id} has tasks: its repositories cannot be removed "
                "(delete those tasks first)"
            )
        if to_remove & current:
            await m.RepositoryGroupMember.filter(
                group_id=group.id, repository_id__in=to_remove
            ).delete()
        new_members = [rid for rid in to_add if rid not in current]
        if new_members:
            await m.RepositoryGroupMember.bulk_create(_new_members(group.id, new_members))
        renamed = name is not None and new_name != group.name
        if renamed:
            group.name = new_name
        relabelled = labels is not None and labels != list(group.default_required_labels or [])
        if labels is not None and relabelled:
            group.default_required_labels = labels
        if renamed or relabelled or final != current:
            await group.save(update_fields=["name", "default_required_labels", "updated_at"])
    return group


async def delete_repository_group(*, actor: Principal, group_id: UUID) -> None:
    """Deletes a group (its repositories stay).

    Raises: NotFound, FailedPrecondition (the group has tasks).
    """
    async with transaction():
        group = await get_repository_group(actor=actor, group_id=group_id)
        if await _groups_with_tasks([group.id]):
            raise FailedPrecondition(
                f"repository group {group.id} has tasks: delete those tasks first"
            )
        await group.delete()


async def group_member_ids(group_ids: Sequence[UUID]) -> dict[UUID, list[UUID]]:
    """Repository ids of each group, in the order they were added (one query)."""
    result: dict[UUID, list[UUID]] = {gid: [] for gid in group_ids}
    if not group_ids:
        return result
    rows = (
        await m.RepositoryGroupMember.filter(group_id__in=list(group_ids))
        .order_by("created_at", "id")
        .values_list("group_id", "repository_id")
    )
    for gid, rid in rows:
        result[gid].append(rid)
    return result


async def repositories_by_workspace(
    workspace_ids: Sequence[UUID],
) -> dict[UUID, list[m.Repository]]:
    """Repositories of each workspace, oldest first (one query; for DataLoaders)."""
    result: dict[UUID, list[m.Repository]] = {wid: [] for wid in workspace_ids}
    if workspace_ids:
        for repo in await m.Repository.filter(workspace_id__in=list(workspace_ids)).order_by(
            "created_at", "id"
        ):
            result[repo.workspace_id].append(repo)
    return result


async def groups_by_workspace(
    workspace_ids: Sequence[UUID],
) -> dict[UUID, list[m.RepositoryGroup]]:
    """Repository groups of each workspace, oldest first (one query; for DataLoaders)."""
    result: dict[UUID, list[m.RepositoryGroup]] = {wid: [] for wid in workspace_ids}
    if workspace_ids:
        for group in await m.RepositoryGroup.filter(workspace_id__in=list(workspace_ids)).order_by(
            "created_at", "id"
        ):
            result[group.workspace_id].append(group)
    return result


async def repositories_by_id(repository_ids: Sequence[UUID]) -> dict[UUID, m.Repository]:
    """Repositories by id (one query; for DataLoaders)."""
    if not repository_ids:
        return {}
    return {r.id: r for r in await m.Repository.filter(id__in=list(repository_ids))}
