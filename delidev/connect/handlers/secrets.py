"""Connect handler of SecretsService: a task's secrets, held in memory only."""

from __future__ import annotations

from delidev.auth.authenticator import Authenticator
from delidev.connect.gen.delidev.v1 import secrets_pb
from delidev.connect.gen.delidev.v1.secrets_connect import SecretsService
from delidev.connect.handlers.base import Ctx, Handler
from delidev.services import secrets
from delidev.services.common import parse_id


class SecretsHandler(Handler, SecretsService):
    def __init__(self, authenticator: Authenticator, store: secrets.SecretStore) -> None:
        super().__init__(authenticator)
        self._store = store

    async def send(
        self, request: secrets_pb.SendSecretsRequest, ctx: Ctx
    ) -> secrets_pb.SendSecretsResponse:
        keys = await secrets.send_secrets(
            actor=await self.actor(ctx),
            store=self._store,
            task_id=parse_id(request.task_id, "task_id"),
            values=dict(request.secrets),
        )
        return secrets_pb.SendSecretsResponse(keys=keys)

    async def clear(
        self, request: secrets_pb.ClearSecretsRequest, ctx: Ctx
    ) -> secrets_pb.ClearSecretsResponse:
        await secrets.clear_secrets(
            actor=await self.actor(ctx),
            store=self._store,
            task_id=parse_id(request.task_id, "task_id"),
        )
        return secrets_pb.ClearSecretsResponse()
