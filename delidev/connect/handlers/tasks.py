"""Connect handler of TaskService: unit and composite tasks and their review workflow."""

from __future__ import annotations

from delidev.connect import convert
from delidev.connect.gen.delidev.v1 import task_pb
from delidev.connect.gen.delidev.v1.task_connect import TaskService
from delidev.connect.handlers.base import Ctx, Handler, optional
from delidev.errors import InvalidArgument
from delidev.services import tasks
from delidev.services.common import next_page_cursor, page_start, parse_id, parse_optional_id


class TaskHandler(Handler, TaskService):
    async def _task(self, task: tasks.Task) -> task_pb.Task:
        bundle = await tasks.load_task_view(task)
        return convert.task(task, bundle)

    async def create_unit(
        self, request: task_pb.CreateUnitTaskRequest, ctx: Ctx
    ) -> task_pb.CreateUnitTaskResponse:
        task = await tasks.create_unit_task(
            actor=await self.actor(ctx),
            repository_group_id=parse_id(request.repository_group_id, "repository_group_id"),
            prompt=request.prompt,
            title=optional(request, "title"),
            branch_name=optional(request, "branch_name"),
            ai_agent_type=convert.AGENT_TYPE.to_domain(request.ai_agent_type, "ai_agent_type"),
            ai_agent_model=optional(request, "ai_agent_model"),
            expects_secrets=request.expects_secrets,
            priority=convert.PRIORITY.to_domain(request.priority, "priority"),
            required_labels=list(request.required_labels),
            max_run_seconds=optional(request, "max_run_seconds"),
        )
        return task_pb.CreateUnitTaskResponse(task=await self._task(task))

    async def create_composite(
        self, request: task_pb.CreateCompositeTaskRequest, ctx: Ctx
    ) -> task_pb.CreateCompositeTaskResponse:
        task = await tasks.create_composite_task(
            actor=await self.actor(ctx),
            repository_group_id=parse_id(request.repository_group_id, "repository_group_id"),
            prompt=request.prompt,
            title=optional(request, "title"),
            execution_agent_type=convert.AGENT_TYPE.to_domain(
                request.execution_agent_type, "execution_agent_type"
            ),
            planning_agent_type=convert.AGENT_TYPE.to_domain(
                request.planning_agent_type, "planning_agent_type"
            ),
            ai_agent_model=optional(request, "ai_agent_model"),
            expects_secrets=request.expects_secrets,
            priority=convert.PRIORITY.to_domain(request.priority, "priority"),
            required_labels=list(request.required_labels),
            max_run_seconds=optional(request, "max_run_seconds"),
        )
        return task_pb.CreateCompositeTaskResponse(task=await self._task(task))

    async def get(self, request: task_pb.GetTaskRequest, ctx: Ctx) -> task_pb.GetTaskResponse:
        task = await tasks.get_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.GetTaskResponse(task=await self._task(task))

    async def list(self, request: task_pb.ListTasksRequest, ctx: Ctx) -> task_pb.ListTasksResponse:
        kind = convert.task_kind(request.kind)
        start = page_start(request.page_token, "page_token")
        offset = request.offset if start is None else start
        page = await tasks.list_tasks(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            repository_group_id=parse_optional_id(
                request.repository_group_id, "repository_group_id"
            ),
            kind=kind,
            unit_status=convert.UNIT_STATUS.to_domain(request.unit_status, "unit_status"),
            composite_status=convert.COMPOSITE_STATUS.to_domain(
                request.composite_status, "composite_status"
            ),
            limit=request.limit,
            offset=offset,
        )
        bundle = await tasks.load_task_bundle(page.items)
        return task_pb.ListTasksResponse(
            tasks=[convert.task(t, bundle) for t in bundle.shown(page.items)],
            total_count=page.total_count,
            next_page_token=next_page_cursor(offset, len(page.items), page.total_count) or "",
        )

    async def update_status(
        self, request: task_pb.UpdateTaskStatusRequest, ctx: Ctx
    ) -> task_pb.UpdateTaskStatusResponse:
        status = convert.UNIT_STATUS.to_domain(request.status, "status")
        if status is None:
            raise InvalidArgument("status is required", field="status")
        task = await tasks.update_task_status(
            actor=await self.actor(ctx),
            task_id=parse_id(request.task_id, "task_id"),
            status=status,
            linked_pr_url=optional(request, "linked_pr_url"),
        )
        return task_pb.UpdateTaskStatusResponse(task=await self._task(task))

    async def delete(
        self, request: task_pb.DeleteTaskRequest, ctx: Ctx
    ) -> task_pb.DeleteTaskResponse:
        await tasks.delete_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.DeleteTaskResponse()

    async def retry(self, request: task_pb.RetryTaskRequest, ctx: Ctx) -> task_pb.RetryTaskResponse:
        task = await tasks.retry_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.RetryTaskResponse(task=await self._task(task))

    async def approve(
        self, request: task_pb.ApproveTaskRequest, ctx: Ctx
    ) -> task_pb.ApproveTaskResponse:
        task = await tasks.approve_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.ApproveTaskResponse(task=await self._task(task))

    async def reject(
        self, request: task_pb.RejectTaskRequest, ctx: Ctx
    ) -> task_pb.RejectTaskResponse:
        task = await tasks.reject_task(
            actor=await self.actor(ctx),
            task_id=parse_id(request.task_id, "task_id"),
            reason=optional(request, "reason"),
        )
        return task_pb.RejectTaskResponse(task=await self._task(task))

    async def request_changes(
        self, request: task_pb.RequestChangesRequest, ctx: Ctx
    ) -> task_pb.RequestChangesResponse:
        task = await tasks.request_changes(
            actor=await self.actor(ctx),
            task_id=parse_id(request.task_id, "task_id"),
            feedback=request.feedback,
        )
        return task_pb.RequestChangesResponse(task=await self._task(task))

    async def set_priority(
        self, request: task_pb.SetTaskPriorityRequest, ctx: Ctx
    ) -> task_pb.SetTaskPriorityResponse:
        priority = convert.PRIORITY.to_domain(request.priority, "priority")
        if priority is None:
            raise InvalidArgument("priority is required", field="priority")
        task = await tasks.set_task_priority(
            actor=await self.actor(ctx),
            task_id=parse_id(request.task_id, "task_id"),
            priority=priority,
        )
        return task_pb.SetTaskPriorityResponse(task=await self._task(task))
