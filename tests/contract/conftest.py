from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.clients import ConnectApi, GraphQLApi, connect_codecs


@pytest.fixture(params=["connect-json", "connect-binary", "graphql"])
async def api(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Any]:
    client: ConnectApi | GraphQLApi
    if request.param == "graphql":
        client = GraphQLApi(app)
    else:
        client = ConnectApi(app, connect_codecs()[request.param.removeprefix("connect-")])
    try:
        yield client
    finally:
        await client.close()
