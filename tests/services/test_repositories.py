from __future__ import annotations

import asyncio
import uuid

import pytest
import tortoise.timezone

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from delidev.services import repositories
from tests.factories import make_group, make_repository, make_todo, make_unit_task, make_workspace


@pytest.mark.parametrize(
    ("url", "name", "provider"),
    [
        ("git@github.com:acme/widgets.git", "widgets", m.VcsProviderType.GITHUB),
        ("https://github.com/acme/widgets", "widgets", m.VcsProviderType.GITHUB),
        ("HTTPS://GitHub.com/Acme/Widgets.git", "Widgets", m.VcsProviderType.GITHUB),
        ("http://gitlab.example.org/group/sub/proj.git", "proj", m.VcsProviderType.GITLAB),
        ("git@gitlab.com:team/app.git", "app", m.VcsProviderType.GITLAB),
        ("git://bitbucket.org/team/lib.git", "lib", m.VcsProviderType.BITBUCKET),
        ("ssh://git@bitbucket.mycorp.net/team/lib", "lib", m.VcsProviderType.BITBUCKET),
        ("https://git.example.com/a/b.git", "b", None),
    ],
)
def test_parse_remote_url(url: str, name: str, provider: m.VcsProviderType | None) -> None:
    info = repositories.parse_remote_url(url)
    assert (info.name, info.provider) == (name, provider)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "github.com",
        "ftp://github.com/a/b",
        "https://github.com/onlyowner",
        "git@github.com:",
        "https:///a/b",
        "https://github.com/a/.git",
        "x" * 3000,
    ],
)
def test_parse_remote_url_rejects(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        repositories.parse_remote_url(url)
    assert info.value.field == "remote_url"


@pytest.mark.usefixtures("database")
class TestRepositories:
    async def test_add_derives_name_and_provider(self) -> None:
        ws = await make_workspace()
        repo = await repositories.add_repository(
            actor=LOCAL_USER, workspace_id=ws.id, remote_url="git@github.com:acme/widgets.git"
        )
        assert repo.name == "widgets"
        assert repo.vcs_provider_type == m.VcsProviderType.GITHUB
        assert repo.vcs_type == m.VcsType.GIT
        assert repo.default_branch == "main"
        stored = await repositories.get_repository(actor=LOCAL_USER, repository_id=repo.id)
        assert stored.remote_url == "git@github.com:acme/widgets.git"

    async def test_add_with_explicit_fields(self) -> None:
        ws = await make_workspace()
        repo = await repositories.add_repository(
            actor=LOCAL_USER,
            workspace_id=ws.id,
            remote_url="https://git.internal/acme/tool.git",
            name="Tool",
            local_path="/src/tool",
            default_branch="develop",
            vcs_provider_type=m.VcsProviderType.GITLAB,
            branch_name_template="feature/${taskId}-${slug}",
        )
        assert (repo.name, repo.local_path, repo.default_branch) == ("Tool", "/src/tool", "develop")
        assert repo.vcs_provider_type == m.VcsProviderType.GITLAB

    async def test_unknown_host_needs_a_provider(self) -> None:
        ws = await make_workspace()
        with pytest.raises(InvalidArgument) as info:
            await repositories.add_repository(
                actor=LOCAL_USER, workspace_id=ws.id, remote_url="https://git.internal/a/b"
            )
        assert info.value.field == "vcs_provider_type"
        assert await m.Repository.all().count() == 0

    @pytest.mark.parametrize("branch", ["bad branch", "../x", "-x", "a..b"])
    async def test_bad_default_branch(self, branch: str) -> None:
        ws = await make_workspace()
        with pytest.raises(InvalidArgument) as info:
            await repositories.add_repository(
                actor=LOCAL_USER,
                workspace_id=ws.id,
                remote_url="https://github.com/a/b",
                default_branch=branch,
            )
        assert info.value.field == "default_branch"

    async def test_same_remote_twice_in_a_workspace(self) -> None:
        ws = await make_workspace()
        other = await make_workspace()
        url = "https://github.com/a/b.git"
        await repositories.add_repository(actor=LOCAL_USER, workspace_id=ws.id, remote_url=url)
        with pytest.raises(AlreadyExists):
            await repositories.add_repository(actor=LOCAL_USER, workspace_id=ws.id, remote_url=url)
        # Another workspace may hold the same remote.
        await repositories.add_repository(actor=LOCAL_USER, workspace_id=other.id, remote_url=url)

    async def test_concurrent_identical_adds_leave_one_row(self) -> None:
        ws = await make_workspace()
        url = "https://github.com/race/repo.git"
        results = await asyncio.gather(
            *(
                repositories.add_repository(actor=LOCAL_USER, workspace_id=ws.id, remote_url=url)
                for _ in range(5)
            ),
            return_exceptions=True,
        )
        assert sum(isinstance(r, m.Repository) for r in results) == 1
        assert all(isinstance(r, m.Repository | AlreadyExists) for r in results)
        assert await m.Repository.filter(workspace_id=ws.id).count() == 1

    async def test_add_to_unknown_workspace(self) -> None:
        with pytest.raises(NotFound):
            await repositories.add_repository(
                actor=LOCAL_USER, workspace_id=uuid.uuid4(), remote_url="https://github.com/a/b"
            )

    async def test_list_by_workspace_and_all(self) -> None:
        ws1, ws2 = await make_workspace(), await make_workspace()
        r1 = await make_repository(ws1)
        r2 = await make_repository(ws2)
        r3 = await make_repository(ws1)
        page = await repositories.list_repositories(actor=LOCAL_USER, workspace_id=ws1.id)
        assert [r.id for r in page.items] == [r1.id, r3.id]
        assert page.total_count == 2
        everything = await repositories.list_repositories(actor=LOCAL_USER, limit=2)
        assert everything.total_count == 3
        assert [r.id for r in everything.items] == [r1.id, r2.id]

    async def test_remove_deletes_todos_memberships_and_emptied_groups(self) -> None:
        ws = await make_workspace()
        repo, keep = await make_repository(ws), await make_repository(ws)
        single = await make_group(ws, [repo], name="only this one")
        named = await make_group(ws, [repo, keep], name="both")
        await make_todo(repo)
        await repositories.remove_repository(actor=LOCAL_USER, repository_id=repo.id)
        assert not await m.Repository.exists(id=repo.id)
        assert not await m.TodoItem.exists(repository_id=repo.id)
        assert not await m.RepositoryGroup.exists(id=single.id)
        members = await repositories.group_member_ids([named.id])
        assert members[named.id] == [keep.id]

    @pytest.mark.parametrize(
        "url",
        [
            "https://alice:ghp_s3cr3tT0ken@github.com/acme/widgets.git",
            "https://ghp_s3cr3tT0ken@github.com/acme/widgets.git",
            "ssh://git:ghp_s3cr3tT0ken@github.com/acme/widgets.git",
        ],
    )
    async def test_credentials_in_the_url_are_refused_and_not_echoed(self, url: str) -> None:
        ws = await make_workspace()
        with pytest.raises(InvalidArgument) as info:
            await repositories.add_repository(actor=LOCAL_USER, workspace_id=ws.id, remote_url=url)
        assert info.value.field == "remote_url"
        assert "must not contain credentials" in info.value.message
        assert "s3cr3t" not in info.value.message
        assert await m.Repository.all().count() == 0

    async def test_remove_refused_while_a_group_with_tasks_uses_it(self) -> None:
        ws = await make_workspace()
        repo = await make_repository(ws)
        group = await make_group(ws, [repo])
        await make_unit_task(group)
        with pytest.raises(FailedPrecondition) as info:
            await repositories.remove_repository(actor=LOCAL_USER, repository_id=repo.id)
        assert str(group.id) in info.value.message
        assert await m.Repository.exists(id=repo.id)


@pytest.mark.usefixtures("database")
class TestGroups:
    async def test_create_ignores_duplicates_and_keeps_order(self) -> None:
        ws = await make_workspace()
        a, b = await make_repository(ws), await make_repository(ws)
        group = await repositories.create_repository_group(
            actor=LOCAL_USER,
            workspace_id=ws.id,
            repository_ids=[str(b.id), a.id, b.id, str(a.id).upper()],
            name="pair",
        )
        members = await repositories.group_member_ids([group.id])
        assert members[group.id] == [b.id, a.id]

    async def test_members_keep_the_order_given_however_many(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ws = await make_workspace()
        repos = [await make_repository(ws) for _ in range(30)]
        given = [r.id for r in reversed(repos)]
        # A clock that does not move between the rows of one insert (coarse clocks do
        # this): Tortoise's auto_now_add then gives every member the same created_at.
        frozen = tortoise.timezone.now()
        monkeypatch.setattr(tortoise.timezone, "now", lambda: frozen)
        group = await repositories.create_repository_group(
            actor=LOCAL_USER, workspace_id=ws.id, repository_ids=given
        )
        assert (await repositories.group_member_ids([group.id]))[group.id] == given
        extra = [await make_repository(ws) for _ in range(10)]
        await repositories.update_repository_group(
            actor=LOCAL_USER, group_id=group.id, add_repository_ids=[r.id for r in extra]
        )
        members = (await repositories.group_member_ids([group.id]))[group.id]
        assert members == [*given, *(r.id for r in extra)]

    async def test_members_must_belong_to_the_workspace(self) -> None:
        ws, other = await make_workspace(), await make_workspace()
        foreign = await make_repository(other)
        with pytest.raises(InvalidArgument) as info:
            await repositories.create_repository_group(
                actor=LOCAL_USER, workspace_id=ws.id, repository_ids=[foreign.id]
            )
        assert info.value.field == "repository_ids"
        assert await m.RepositoryGroup.all().count() == 0

    async def test_unknown_or_malformed_member(self) -> None:
        ws = await make_workspace()
        with pytest.raises(NotFound):
            await repositories.create_repository_group(
                actor=LOCAL_USER, workspace_id=ws.id, repository_ids=[uuid.uuid4()]
            )
        with pytest.raises(InvalidArgument) as info:
            await repositories.create_repository_group(
                actor=LOCAL_USER, workspace_id=ws.id, repository_ids=["nope"]
            )
        assert info.value.field == "repository_ids"
        with pytest.raises(InvalidArgument):
            await repositories.create_repository_group(
                actor=LOCAL_USER, workspace_id=ws.id, repository_ids=[]
            )
        assert await m.RepositoryGroup.all().count() == 0

    async def test_update_renames_adds_and_removes(self) -> None:
        ws = await make_workspace()
        a, b, c = [await make_repository(ws) for _ in range(3)]
        group = await make_group(ws, [a, b], name="g")
        updated = await repositories.update_repository_group(
            actor=LOCAL_USER,
            group_id=group.id,
            name="",
            add_repository_ids=[c.id, a.id],
            remove_repository_ids=[b.id],
        )
        assert updated.name is None
        members = await repositories.group_member_ids([group.id])
        assert members[group.id] == [a.id, c.id]

    async def test_update_cannot_empty_a_group(self) -> None:
        ws = await make_workspace()
        a = await make_repository(ws)
        group = await make_group(ws, [a], name="g")
        with pytest.raises(InvalidArgument):
            await repositories.update_repository_group(
                actor=LOCAL_USER, group_id=group.id, remove_repository_ids=[a.id], name="x"
            )
        stored = await m.RepositoryGroup.get(id=group.id)
        assert stored.name == "g"
        assert (await repositories.group_member_ids([group.id]))[group.id] == [a.id]

    async def test_update_cannot_remove_members_of_a_group_with_tasks(self) -> None:
        ws = await make_workspace()
        a, b, c = [await make_repository(ws) for _ in range(3)]
        group = await make_group(ws, [a, b], name="busy")
        await make_unit_task(group)
        with pytest.raises(FailedPrecondition) as info:
            await repositories.update_repository_group(
                actor=LOCAL_USER, group_id=group.id, remove_repository_ids=[b.id], name="x"
            )
        assert str(group.id) in info.value.message
        assert "has tasks" in info.value.message
        assert (await repositories.group_member_ids([group.id]))[group.id] == [a.id, b.id]
        assert (await m.RepositoryGroup.get(id=group.id)).name == "busy"
        # The way around remove_repository's refusal stays closed.
        with pytest.raises(FailedPrecondition):
            await repositories.remove_repository(actor=LOCAL_USER, repository_id=b.id)
        # Adding a member (or renaming) is still allowed.
        await repositories.update_repository_group(
            actor=LOCAL_USER, group_id=group.id, add_repository_ids=[c.id], name="x"
        )
        assert (await repositories.group_member_ids([group.id]))[group.id] == [a.id, b.id, c.id]

    async def test_delete_keeps_repositories_and_refuses_with_tasks(self) -> None:
        ws = await make_workspace()
        a = await make_repository(ws)
        free = await make_group(ws, [a])
        busy = await make_group(ws, [a], name="busy")
        await make_unit_task(busy)
        await repositories.delete_repository_group(actor=LOCAL_USER, group_id=free.id)
        assert not await m.RepositoryGroup.exists(id=free.id)
        assert await m.Repository.exists(id=a.id)
        with pytest.raises(FailedPrecondition):
            await repositories.delete_repository_group(actor=LOCAL_USER, group_id=busy.id)
        assert await m.RepositoryGroup.exists(id=busy.id)

    async def test_list_groups(self) -> None:
        ws, other = await make_workspace(), await make_workspace()
        a = await make_repository(ws)
        g1 = await make_group(ws, [a])
        await make_group(other, [await make_repository(other)])
        g3 = await make_group(ws, [a], name="n")
        page = await repositories.list_repository_groups(actor=LOCAL_USER, workspace_id=ws.id)
        assert [g.id for g in page.items] == [g1.id, g3.id]
        assert page.total_count == 2


@pytest.mark.usefixtures("database")
async def test_groups_by_workspace_for_loaders() -> None:
    ws, other, empty = await make_workspace(), await make_workspace(), await make_workspace()
    a, b = await make_repository(ws), await make_repository(other)
    g1 = await make_group(ws, [a])
    g2 = await make_group(ws, [a], name="second")
    g3 = await make_group(other, [b])
    found = await repositories.groups_by_workspace([ws.id, other.id, empty.id])
    assert {k: [g.id for g in v] for k, v in found.items()} == {
        ws.id: [g1.id, g2.id],
        other.id: [g3.id],
        empty.id: [],
    }
