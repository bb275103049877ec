"""A repository's webhook secret and settings, through Connect (JSON) and GraphQL alike: the
secret is accepted, never returned (only whether one is set), bad ones are refused with the
field named; settings change one by one."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from delidev import models as m
from tests.factories import make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

SECRET = "contract-secret-0123456789"


class Connect:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def _call(self, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        answer = await self.http.post(
            f"/delidev.v1.RepositoryService/{method}",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        return answer.status_code, answer.json(), answer.text

    async def set_secret(self, repo_id: str, secret: str) -> tuple[dict[str, Any] | None, str]:
        status, data, text = await self._call(
            "SetWebhookSecret", {"repositoryId": repo_id, "secret": secret}
        )
        return (data["repository"] if status == 200 else None), text

    async def update(self, repo_id: str, **given: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"repositoryId": repo_id, **given}
        if "reviewCommentFilter" in body:
            body["reviewCommentFilter"] = "REVIEW_COMMENT_FILTER_" + body["reviewCommentFilter"]
        status, data, text = await self._call("UpdateSettings", body)
        assert status == 200, text
        repo: dict[str, Any] = data["repository"]
        settings = {  # proto3 JSON leaves out false values
            "autoTriage": False,
            "autoFixReviewComments": False,
            "autoFixCiFailures": False,
            **repo.get("settings", {}),
        }
        repo["settings"] = settings
        flt = settings.get("reviewCommentFilter", "")
        settings["reviewCommentFilter"] = flt.removeprefix("REVIEW_COMMENT_FILTER_")
        return repo


FIELDS = (
    "id webhookSecretSet webhookPath settings { autoTriage autoFixReviewComments"
    " reviewCommentFilter autoFixCiFailures }"
)


class GraphQL:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def _run(self, query: str, **variables: Any) -> tuple[dict[str, Any], str]:
        answer = await self.http.post("/graphql", json={"query": query, "variables": variables})
        return answer.json(), answer.text

    async def set_secret(self, repo_id: str, secret: str) -> tuple[dict[str, Any] | None, str]:
        data, text = await self._run(
            f"mutation($id: ID!, $s: String) {{ setRepositoryWebhookSecret(id: $id, secret: $s)"
            f" {{ {FIELDS} }} }}",
            id=repo_id,
            s=secret,
        )
        if data.get("errors"):
            return None, text
        return data["data"]["setRepositoryWebhookSecret"], text

    async def update(self, repo_id: str, **given: Any) -> dict[str, Any]:
        data, text = await self._run(
            f"mutation($i: UpdateRepositorySettingsInput!) {{ updateRepositorySettings(input: $i)"
            f" {{ {FIELDS} }} }}",
            i={"repositoryId": repo_id, **given},
        )
        assert not data.get("errors"), text
        repo: dict[str, Any] = data["data"]["updateRepositorySettings"]
        return repo


@pytest.fixture(params=["connect", "graphql"])
def api(request: pytest.FixtureRequest, http: httpx.AsyncClient) -> Connect | GraphQL:
    return Connect(http) if request.param == "connect" else GraphQL(http)


async def test_the_secret_is_set_never_shown_and_cleared(api: Connect | GraphQL) -> None:
    repo = await make_repository(await make_workspace())
    shown, text = await api.set_secret(str(repo.id), SECRET)
    assert shown is not None, text
    assert shown["webhookSecretSet"] is True
    assert shown["webhookPath"] == f"/webhooks/github/{repo.id}"
    assert SECRET not in text
    cleared, _ = await api.set_secret(str(repo.id), "")
    assert cleared is not None
    assert not cleared.get("webhookSecretSet")
    assert (await m.Repository.get(id=repo.id)).webhook_secret is None


async def test_a_bad_secret_is_refused_and_not_echoed(api: Connect | GraphQL) -> None:
    repo = await make_repository(await make_workspace())
    shown, text = await api.set_secret(str(repo.id), "short-secret")
    assert shown is None
    assert "16 to 256" in text
    assert "short-secret" not in text
    assert (await m.Repository.get(id=repo.id)).webhook_secret is None


async def test_settings_change_one_by_one(api: Connect | GraphQL) -> None:
    repo = await make_repository(await make_workspace())
    shown = await api.update(str(repo.id), autoFixCiFailures=True)
    assert shown["settings"] == {
        "autoTriage": True,
        "autoFixReviewComments": False,
        "reviewCommentFilter": "WRITE_ACCESS_ONLY",
        "autoFixCiFailures": True,
    }
    shown = await api.update(
        str(repo.id), autoFixReviewComments=True, reviewCommentFilter="ALL", autoTriage=False
    )
    assert shown["settings"] == {
        "autoTriage": False,
        "autoFixReviewComments": True,
        "reviewCommentFilter": "ALL",
        "autoFixCiFailures": True,
    }
