"""A repository's webhook secret and what its webhook deliveries may do (auto-triage,
auto-fix of review comments and of CI failures).

The secret is write-only: no API returns it, clients only learn whether one is set. GitHub
signs a delivery with an HMAC keyed by the secret, so the secret itself is stored; GitLab
sends its token as it is, so only the token's SHA-256 is stored and a copy of the database
does not hand anyone a working GitLab token.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument
from delidev.services import common
from delidev.services.repositories import get_repository

MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256
WEBHOOK_PROVIDERS = frozenset({m.VcsProviderType.GITHUB, m.VcsProviderType.GITLAB})


def webhook_path(repo: m.Repository) -> str | None:
    """The path GitHub or GitLab posts this repository's deliveries to; None for a provider
    without webhook support."""
    if repo.vcs_provider_type not in WEBHOOK_PROVIDERS:
        return None
    return f"/webhooks/{repo.vcs_provider_type.value}/{repo.id}"


def gitlab_token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _check_secret(secret: str) -> str:
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        raise InvalidArgument(
            f"secret must be {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters long",
            field="secret",
        )
    if not secret.isascii() or not secret.isprintable() or secret != secret.strip():
        # GitLab sends the token in a header: printable ASCII only, no edge spaces.
        raise InvalidArgument(
            "secret must be printable ASCII without leading or trailing spaces", field="secret"
        )
    return secret


async def set_webhook_secret(
    *, actor: Principal, repository_id: UUID, secret: str | None
) -> m.Repository:
    """Sets (or, with None or an empty string, clears) the secret deliveries are checked
    against. The secret is never returned.

    Raises: NotFound, InvalidArgument, FailedPrecondition (a provider without webhooks).
    """
    repo = await get_repository(actor=actor, repository_id=repository_id)
    if not secret:
        stored = None
    else:
        if repo.vcs_provider_type not in WEBHOOK_PROVIDERS:
            raise FailedPrecondition(
                f"webhooks are supported for GitHub and GitLab repositories, not "
                f"{repo.vcs_provider_type.value}"
            )
        checked = _check_secret(secret)
        stored = (
            gitlab_token_digest(checked)
            if repo.vcs_provider_type == m.VcsProviderType.GITLAB
            else checked
        )
    await m.Repository.filter(id=repo.id).update(**common.changed(webhook_secret=stored))
    return await get_repository(actor=actor, repository_id=repo.id)


async def update_repository_settings(
    *,
    actor: Principal,
    repository_id: UUID,
    auto_triage: bool | None = None,
    auto_fix_review_comments: bool | None = None,
    review_comment_filter: m.ReviewCommentFilter | None = None,
    auto_fix_ci_failures: bool | None = None,
) -> m.Repository:
    """Changes the settings given (None: unchanged).

    Raises: NotFound.
    """
    repo = await get_repository(actor=actor, repository_id=repository_id)
    given = {
        "auto_triage": auto_triage,
        "auto_fix_review_comments": auto_fix_review_comments,
        "review_comment_filter": review_comment_filter,
        "auto_fix_ci_failures": auto_fix_ci_failures,
    }
    values = {k: v for k, v in given.items() if v is not None}
    if values:
        await m.Repository.filter(id=repo.id).update(**common.changed(**values))
    return await get_repository(actor=actor, repository_id=repo.id)
