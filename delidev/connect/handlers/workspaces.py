"""Connect handlers of WorkspaceService, RepositoryService and RepositoryGroupService."""

from __future__ import annotations

from typing import Any

from delidev import models as m
from delidev.connect import convert
from delidev.connect.gen.delidev.v1 import repository_pb, workspace_pb
from delidev.connect.gen.delidev.v1.repository_connect import (
    RepositoryGroupService,
    RepositoryService,
)
from delidev.connect.gen.delidev.v1.workspace_connect import WorkspaceService
from delidev.connect.handlers.base import Ctx, Handler, optional
from delidev.services import repositories, repository_settings, usage, workspaces
from delidev.services.common import parse_id, parse_optional_id


def _budgets(
    request: workspace_pb.CreateWorkspaceRequest | workspace_pb.UpdateWorkspaceRequest,
) -> dict[str, Any]:
    return {
        "monthly_budget_micros": optional(request, "monthly_budget_micros"),
        "budget_period": convert.BUDGET_PERIOD.to_domain(request.budget_period, "budget_period"),
        "task_budget_micros": optional(request, "task_budget_micros"),
        "budget_warning_percent": optional(request, "budget_warning_percent"),
    }


class WorkspaceHandler(Handler, WorkspaceService):
    async def get_usage(
        self, request: workspace_pb.GetWorkspaceUsageRequest, ctx: Ctx
    ) -> workspace_pb.GetWorkspaceUsageResponse:
        found = await usage.workspace_usage(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
            days=request.days,
        )
        return workspace_pb.GetWorkspaceUsageResponse(
            total=convert.usage(found.total),
            days=[
                workspace_pb.UsageDay(date=day.isoformat(), usage=convert.usage(used))
                for day, used in found.days
            ],
            models=[
                workspace_pb.ModelUsage(
                    ai_agent_type=convert.AGENT_TYPE.to_proto(u.ai_agent_type),
                    model=u.model,
                    usage=convert.usage(u.usage),
                )
                for u in found.models
            ],
        )

    async def create(
        self, request: workspace_pb.CreateWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.CreateWorkspaceResponse:
        ws = await workspaces.create_workspace(
            actor=await self.actor(ctx),
            name=request.name,
            description=optional(request, "description"),
            max_concurrent_jobs=optional(request, "max_concurrent_jobs"),
            **_budgets(request),
        )
        return workspace_pb.CreateWorkspaceResponse(workspace=convert.workspace(ws))

    async def list(
        self, request: workspace_pb.ListWorkspacesRequest, ctx: Ctx
    ) -> workspace_pb.ListWorkspacesResponse:
        page = await workspaces.list_workspaces(
            actor=await self.actor(ctx), limit=request.limit, offset=request.offset
        )
        return workspace_pb.ListWorkspacesResponse(
            workspaces=[convert.workspace(w) for w in page.items], total_count=page.total_count
        )

    async def get(
        self, request: workspace_pb.GetWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.GetWorkspaceResponse:
        ws = await workspaces.get_workspace(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
        )
        return workspace_pb.GetWorkspaceResponse(workspace=convert.workspace(ws))

    async def update(
        self, request: workspace_pb.UpdateWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.UpdateWorkspaceResponse:
        ws = await workspaces.update_workspace(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
            name=optional(request, "name"),
            description=optional(request, "description"),
            max_concurrent_jobs=optional(request, "max_concurrent_jobs"),
            **_budgets(request),
        )
        return workspace_pb.UpdateWorkspaceResponse(workspace=convert.workspace(ws))

    async def delete(
        self, request: workspace_pb.DeleteWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.DeleteWorkspaceResponse:
        await workspaces.delete_workspace(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
        )
        return workspace_pb.DeleteWorkspaceResponse()


class RepositoryHandler(Handler, RepositoryService):
    async def add(
        self, request: repository_pb.AddRepositoryRequest, ctx: Ctx
    ) -> repository_pb.AddRepositoryResponse:
        repo = await repositories.add_repository(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
            remote_url=request.remote_url,
            name=optional(request, "name"),
            local_path=optional(request, "local_path"),
            default_branch=optional(request, "default_branch"),
            vcs_provider_type=convert.VCS_PROVIDER.to_domain(
                request.vcs_provider_type, "vcs_provider_type"
            ),
            branch_name_template=optional(request, "branch_name_template"),
        )
        return repository_pb.AddRepositoryResponse(repository=convert.repository(repo))

    async def list(
        self, request: repository_pb.ListRepositoriesRequest, ctx: Ctx
    ) -> repository_pb.ListRepositoriesResponse:
        page = await repositories.list_repositories(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            limit=request.limit,
            offset=request.offset,
        )
        return repository_pb.ListRepositoriesResponse(
            repositories=[convert.repository(r) for r in page.items],
            total_count=page.total_count,
        )

    async def get(
        self, request: repository_pb.GetRepositoryRequest, ctx: Ctx
    ) -> repository_pb.GetRepositoryResponse:
        repo = await repositories.get_repository(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
        )
        return repository_pb.GetRepositoryResponse(repository=convert.repository(repo))

    async def remove(
        self, request: repository_pb.RemoveRepositoryRequest, ctx: Ctx
    ) -> repository_pb.RemoveRepositoryResponse:
        await repositories.remove_repository(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
        )
        return repository_pb.RemoveRepositoryResponse()

    async def set_webhook_secret(
        self, request: repository_pb.SetWebhookSecretRequest, ctx: Ctx
    ) -> repository_pb.SetWebhookSecretResponse:
        repo = await repository_settings.set_webhook_secret(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
            secret=request.secret,
        )
        return repository_pb.SetWebhookSecretResponse(repository=convert.repository(repo))

    async def update_settings(
        self, request: repository_pb.UpdateRepositorySettingsRequest, ctx: Ctx
    ) -> repository_pb.UpdateRepositorySettingsResponse:
        repo = await repository_settings.update_repository_settings(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
            auto_triage=optional(request, "auto_triage"),
            auto_fix_review_comments=optional(request, "auto_fix_review_comments"),
            review_comment_filter=convert.REVIEW_COMMENT_FILTER.to_domain(
                request.review_comment_filter, "review_comment_filter"
            ),
            auto_fix_ci_failures=optional(request, "auto_fix_ci_failures"),
        )
        return repository_pb.UpdateRepositorySettingsResponse(repository=convert.repository(repo))


class RepositoryGroupHandler(Handler, RepositoryGroupService):
    async def _group(self, group: m.RepositoryGroup) -> repository_pb.RepositoryGroup:
        members = await repositories.group_member_ids([group.id])
        return convert.repository_group(group, members[group.id])

    async def create(
        self, request: repository_pb.CreateRepositoryGroupRequest, ctx: Ctx
    ) -> repository_pb.CreateRepositoryGroupResponse:
        group = await repositories.create_repository_group(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
            name=optional(request, "name"),
            repository_ids=list(request.repository_ids),
            default_required_labels=list(request.default_required_labels),
        )
        return repository_pb.CreateRepositoryGroupResponse(group=await self._group(group))

    async def list(
        self, request: repository_pb.ListRepositoryGroupsRequest, ctx: Ctx
    ) -> repository_pb.ListRepositoryGroupsResponse:
        page = await repositories.list_repository_groups(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            limit=request.limit,
            offset=request.offset,
        )
        members = await repositories.group_member_ids([g.id for g in page.items])
        return repository_pb.ListRepositoryGroupsResponse(
            groups=[convert.repository_group(g, members[g.id]) for g in page.items],
            total_count=page.total_count,
        )

    async def update(
        self, request: repository_pb.UpdateRepositoryGroupRequest, ctx: Ctx
    ) -> repository_pb.UpdateRepositoryGroupResponse:
        labels = optional(request, "default_required_labels")  # unset: unchanged
        group = await repositories.update_repository_group(
            actor=await self.actor(ctx),
            group_id=parse_id(request.group_id, "group_id"),
            name=optional(request, "name"),
            add_repository_ids=list(request.add_repository_ids),
            remove_repository_ids=list(request.remove_repository_ids),
            default_required_labels=(None if labels is None else list(labels.labels)),
        )
        return repository_pb.UpdateRepositoryGroupResponse(group=await self._group(group))

    async def delete(
        self, request: repository_pb.DeleteRepositoryGroupRequest, ctx: Ctx
    ) -> repository_pb.DeleteRepositoryGroupResponse:
        await repositories.delete_repository_group(
            actor=await self.actor(ctx), group_id=parse_id(request.group_id, "group_id")
        )
        return repository_pb.DeleteRepositoryGroupResponse()
