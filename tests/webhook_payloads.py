"""Real webhook payloads for the tests, and signing them as GitHub and GitLab do.

GitHub's are the example deliveries of the npm package ``@octokit/webhooks-examples``
(installed in tests/interop with the other npm test dependencies); GitLab's follow the
examples of GitLab's webhook documentation (tests/fixtures/gitlab/, see its README).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.interop.test_typescript_interop import HERE as INTEROP_DIR

GITLAB_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gitlab"
EXAMPLES = INTEROP_DIR / "node_modules" / "@octokit" / "webhooks-examples" / "api.github.com"
GITHUB_SECRET = "It's a Secret to Everybody 42"
GITLAB_TOKEN = "gitlab-webhook-token-for-tests"


def ensure_node_modules() -> None:
    from tests.oidc import _node_modules  # ``npm ci`` in tests/interop when stale

    _node_modules()


@functools.cache
def _github_examples() -> dict[str, list[dict[str, Any]]]:
    ensure_node_modules()
    found = json.loads((EXAMPLES / "index.json").read_text())
    return {entry["name"]: entry["examples"] for entry in found}


def github_example(
    event: str, action: str | None = None, where: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any]:
    """A deep copy of the first example delivery of ``event`` (with ``action``, matching
    ``where``)."""
    for example in _github_examples()[event]:
        if action is not None and example.get("action") != action:
            continue
        if where is not None and not where(example):
            continue
        return copy.deepcopy(example)
    raise LookupError(f"no example of {event}/{action}")


def gitlab_example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GITLAB_FIXTURES / f"{name}.json").read_text())
    return loaded


def github_sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(
    event: str, body: bytes, secret: str = GITHUB_SECRET, delivery: str | None = None
) -> dict[str, str]:
    """The headers GitHub sends with a delivery."""
    return {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/abc1234",
        "x-github-event": event,
        "x-github-delivery": delivery or str(uuid.uuid4()),
        "x-github-hook-id": "123456",
        "x-hub-signature-256": github_sign(secret, body),
    }


def gitlab_headers(
    event: str, token: str = GITLAB_TOKEN, delivery: str | None = None
) -> dict[str, str]:
    """The headers GitLab sends with a delivery."""
    return {
        "content-type": "application/json",
        "user-agent": "GitLab/17.4.0",
        "x-gitlab-event": event,
        "x-gitlab-event-uuid": delivery or str(uuid.uuid4()),
        "x-gitlab-webhook-uuid": str(uuid.uuid4()),
        "x-gitlab-instance": "https://gitlab.example.com",
        "x-gitlab-token": token,
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
