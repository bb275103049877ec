"""Connect handler of SessionService: agent runs, their logs (read and followed), TTY
questions."""

from __future__ import annotations

from collections.abc import AsyncIterator

from delidev.auth.authenticator import Authenticator
from delidev.connect import convert
from delidev.connect.gen.delidev.v1 import session_pb
from delidev.connect.gen.delidev.v1.session_connect import SessionService
from delidev.connect.handlers.base import Ctx, Handler
from delidev.services import live, sessions, usage
from delidev.services.common import parse_id, parse_optional_id


class SessionHandler(Handler, SessionService):
    def __init__(self, authenticator: Authenticator, feeds: live.LogFeeds) -> None:
        super().__init__(authenticator)
        self._feeds = feeds

    async def get(
        self, request: session_pb.GetSessionRequest, ctx: Ctx
    ) -> session_pb.GetSessionResponse:
        session = await sessions.get_session(
            actor=await self.actor(ctx), session_id=parse_id(request.session_id, "session_id")
        )
        used = (await usage.session_usage([session.id])).get(session.id, usage.NONE)
        return session_pb.GetSessionResponse(session=convert.agent_session(session, used))

    async def get_log(
        self, request: session_pb.GetLogRequest, ctx: Ctx
    ) -> session_pb.GetLogResponse:
        read = await sessions.read_log(
            actor=await self.actor(ctx),
            session_id=parse_id(request.session_id, "session_id"),
            offset=request.offset,
            limit=request.limit,
        )
        return convert.log_read(read)

    async def stream_log(
        self, request: session_pb.StreamLogRequest, ctx: Ctx
    ) -> AsyncIterator[session_pb.StreamLogResponse]:
        async for piece in self._feeds.follow(
            actor=await self.actor(ctx),
            session_id=parse_id(request.session_id, "session_id"),
            from_offset=request.from_offset,
        ):
            yield convert.log_piece(piece)

    async def stop(
        self, request: session_pb.StopSessionRequest, ctx: Ctx
    ) -> session_pb.StopSessionResponse:
        session = await sessions.stop_session(
            actor=await self.actor(ctx), session_id=parse_id(request.session_id, "session_id")
        )
        return session_pb.StopSessionResponse(session=convert.agent_session(session))

    async def submit_tty_input(
        self, request: session_pb.SubmitTtyInputRequest, ctx: Ctx
    ) -> session_pb.SubmitTtyInputResponse:
        answered = await sessions.submit_tty_input(
            actor=await self.actor(ctx),
            request_id=parse_id(request.request_id, "request_id"),
            response=request.response,
        )
        return session_pb.SubmitTtyInputResponse(request=convert.tty_request(answered))

    async def list_tty_input_requests(
        self, request: session_pb.ListTtyInputRequestsRequest, ctx: Ctx
    ) -> session_pb.ListTtyInputRequestsResponse:
        page = await sessions.list_tty_requests(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            task_id=parse_optional_id(request.task_id, "task_id"),
            session_id=parse_optional_id(request.session_id, "session_id"),
            status=convert.TTY_STATUS.to_domain(request.status, "status"),
            limit=request.limit,
            offset=request.offset,
        )
        return session_pb.ListTtyInputRequestsResponse(
            requests=[convert.tty_request(r) for r in page.items], total_count=page.total_count
        )
