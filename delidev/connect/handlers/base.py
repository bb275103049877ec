"""What every user-facing Connect handler shares: the request context type, the reading
of proto3 ``optional`` fields, and authentication of the caller."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext
from protobuf import Message

from delidev.auth.authenticator import Authenticator
from delidev.auth.principal import Principal

Ctx = RequestContext[Any, Any]


def optional(message: Message[Any], field: str) -> Any:
    """The value of a proto3 ``optional`` field, or None when it is unset."""
    return getattr(message, field) if message.has_field(field) else None


class Handler:
    """Base of the user services' handlers: ``actor`` is the caller of a request."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def actor(self, ctx: Ctx) -> Principal:
        return await self._auth.authenticate(ctx.request_headers.get("authorization"))
