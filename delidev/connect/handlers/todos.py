"""Connect handler of TodoService."""

from __future__ import annotations

from delidev import models as m
from delidev.connect import convert
from delidev.connect.gen.delidev.v1 import todo_pb
from delidev.connect.gen.delidev.v1.todo_connect import TodoService
from delidev.connect.handlers.base import Ctx, Handler
from delidev.errors import InvalidArgument
from delidev.services import todos
from delidev.services.common import parse_id, parse_optional_id


class TodoHandler(Handler, TodoService):
    async def _items(self, items: list[m.TodoItem]) -> list[todo_pb.TodoItem]:
        workspace_ids = await todos.workspace_ids_of_repositories(
            list({i.repository_id for i in items})
        )
        return [convert.todo_item(i, workspace_ids) for i in items]

    async def create(
        self, request: todo_pb.CreateTodoItemRequest, ctx: Ctx
    ) -> todo_pb.CreateTodoItemResponse:
        source = convert.TODO_SOURCE.to_domain(request.source, "source")
        item = await todos.create_todo_item(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
            data=convert.todo_data_from_request(request.data),
            source=source,
        )
        return todo_pb.CreateTodoItemResponse(item=(await self._items([item]))[0])

    async def list(
        self, request: todo_pb.ListTodoItemsRequest, ctx: Ctx
    ) -> todo_pb.ListTodoItemsResponse:
        page = await todos.list_todo_items(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            repository_id=parse_optional_id(request.repository_id, "repository_id"),
            status=convert.TODO_STATUS.to_domain(request.status, "status"),
            item_type=convert.TODO_TYPE.to_domain(request.type, "type"),
            limit=request.limit,
            offset=request.offset,
        )
        return todo_pb.ListTodoItemsResponse(
            items=await self._items(list(page.items)), total_count=page.total_count
        )

    async def get(
        self, request: todo_pb.GetTodoItemRequest, ctx: Ctx
    ) -> todo_pb.GetTodoItemResponse:
        item = await todos.get_todo_item(
            actor=await self.actor(ctx), item_id=parse_id(request.item_id, "item_id")
        )
        return todo_pb.GetTodoItemResponse(item=(await self._items([item]))[0])

    async def update_status(
        self, request: todo_pb.UpdateTodoStatusRequest, ctx: Ctx
    ) -> todo_pb.UpdateTodoStatusResponse:
        status = convert.TODO_STATUS.to_domain(request.status, "status")
        if status is None:
            raise InvalidArgument("status is required", field="status")
        item = await todos.update_todo_status(
            actor=await self.actor(ctx),
            item_id=parse_id(request.item_id, "item_id"),
            status=status,
        )
        return todo_pb.UpdateTodoStatusResponse(item=(await self._items([item]))[0])

    async def dismiss(
        self, request: todo_pb.DismissTodoRequest, ctx: Ctx
    ) -> todo_pb.DismissTodoResponse:
        item = await todos.dismiss_todo(
            actor=await self.actor(ctx), item_id=parse_id(request.item_id, "item_id")
        )
        return todo_pb.DismissTodoResponse(item=(await self._items([item]))[0])
