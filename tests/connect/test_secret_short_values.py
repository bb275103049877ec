"""SecretsService.Send over the wire refuses a value too short to be masked, naming its key
and never echoing the value (there is no GraphQL mutation for secrets)."""

from __future__ import annotations

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import secrets_pb
from delidev.connect.gen.delidev.v1.secrets_connect import SecretsServiceClient
from delidev.services import tasks
from delidev.settings import Settings
from tests.clients import connect_codecs
from tests.factories import make_group, make_repository, make_workspace


@pytest.mark.usefixtures("database")
async def test_send_refuses_a_value_too_short_to_mask(settings: Settings) -> None:
    """Regression: values under 4 characters were held and handed out, but never masked."""
    app = create_app(settings)
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = SecretsServiceClient("http://test", http_client=http, codec=connect_codecs()["json"])
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    try:
        request = secrets_pb.SendSecretsRequest(
            task_id=str(task.id), secrets={"API_KEY": "sk-long-enough", "PIN": "q7z"}
        )
        with pytest.raises(ConnectError) as info:
            await client.send(request)
        assert info.value.code == Code.INVALID_ARGUMENT
        assert "secret PIN is shorter than 4 characters" in info.value.message
        assert "q7z" not in info.value.message
        assert app.state.secrets.get(task.id) == {}
        request = secrets_pb.SendSecretsRequest(task_id=str(task.id), secrets={"PIN": "q7z9"})
        assert list((await client.send(request)).keys) == ["PIN"]
    finally:
        await client.close()
