"""Webhook deliveries from GitHub and GitLab: checked, parsed into a few normalised events,
and acted on per the repository's settings.

One URL per repository, ``/webhooks/{github|gitlab}/{repository_id}``; the repository's
secret is the only authentication. In order, a delivery is refused (nothing stored):

- ``NotFound`` — no such repository, another provider's path, or no secret set (one
  answer for the three, so that the URL tells nothing about which repositories exist);
- ``Unauthenticated`` — no signature / token, or a wrong one (compared in constant time);
- ``InvalidArgument`` — not ``application/json`` (``field="content-type"``), no event or
  delivery id header, a body that is not a JSON object, nests too deep, or has a field of
  the wrong type in an event we act on, or a URL there (``html_url``, ``url``,
  ``details_url``...) that is not http(s) or holds whitespace or control characters.

NUL characters (and lone surrogates) in the text we read are dropped, as no database column
stores them; a pull request's changed-file count is clamped to what the APIs carry (0 to
2**31 - 1).

An accepted delivery is remembered by its id (``WebhookDelivery``, pruned by age): the same
id again is a ``duplicate``, acknowledged without acting. Event types and actions we do not
act on are ``ignored`` (their id is still remembered).

What is acted on:

- issues opened / reopened → an ``issue_triage`` todo item (one per URL), closed → the item
  completed; pull / merge requests opened, reopened, review requested → a ``pr_review``
  item, closed / merged → completed — when the repository's ``auto_triage`` is on;
- a pull request closed or merged → ``auto_fix.pull_request_closed`` (the task of that PR
  is done, or records the closing); reopened → ``auto_fix.pull_request_reopened`` (its
  task's PR is open again);
- review comments → ``auto_fix.review_feedback`` when ``auto_fix_review_comments`` is on,
  filtered by ``review_comment_filter``: ``write_access_only`` keeps GitHub comments whose
  ``author_association`` is OWNER, MEMBER or COLLABORATOR (those with push access or
  organisation members); GitLab's payload carries no access level, so there it keeps notes
  on merge requests of *private* projects only (whose commenters are all project members)
  and drops those on internal and public projects — use ``all`` to act on every note;
- a failed check run (conclusion failure / timed_out) or GitLab pipeline (status failed) of
  a pull / merge request → ``auto_fix.check_failed`` when ``auto_fix_ci_failures`` is on.
  GitHub ``check_suite`` is ignored: each failing check run of the suite reports itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from delidev import models as m
from delidev.errors import DeliDevError, InvalidArgument, NotFound, Unauthenticated
from delidev.nesting import MAX_JSON_DEPTH, TooDeep, check_json_depth
from delidev.services import common, todos
from delidev.services.auto_fix import ReviewComment
from delidev.services.repository_settings import WEBHOOK_PROVIDERS, gitlab_token_digest

log = logging.getLogger(__name__)

MAX_HEADER_CHARS = 200
MAX_SUMMARY_CHARS = 4_000
MAX_COMMENT_CHARS = 20_000
MAX_TITLE_CHARS = 1_000
WRITE_ACCESS_ASSOCIATIONS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
GITLAB_PRIVATE = 0  # project.visibility_level: 0 private, 10 internal, 20 public
_NOT_CONFIGURED = "no webhook is configured at this URL"
_DUMMY_KEY = b"\0" * 32
# What JSON strings may carry and no database column stores (PostgreSQL refuses NUL, and
# neither driver encodes a lone UTF-16 surrogate): dropped from every text field read.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Outcome(StrEnum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Received:
    """What became of an accepted delivery."""

    outcome: Outcome
    event: str
    delivery_id: str
    todo_item_ids: list[UUID] = field(default_factory=list)
    auto_fix_task_ids: list[UUID] = field(default_factory=list)


# Normalised events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssueOpened:
    url: str
    title: str
    labels: list[str]
    assignees: list[str]
    reopened: bool


@dataclass(frozen=True, slots=True)
class PullRequestOpened:
    url: str
    title: str
    changed_files: int
    reopened: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """An issue or pull request closed (``merged``: a pull request merged)."""

    url: str
    pull_request: bool
    merged: bool = False


@dataclass(frozen=True, slots=True)
class ReviewFeedback:
    pr_url: str
    comment: ReviewComment
    write_access: bool
    """Whether the author has write access as far as the payload says (see the module
    docstring for GitLab)."""


@dataclass(frozen=True, slots=True)
class CheckFailed:
    pr_urls: list[str]
    check_name: str
    summary: str
    details_url: str | None


Event = IssueOpened | PullRequestOpened | Closed | ReviewFeedback | CheckFailed


class AutoFix(Protocol):
    """What deliveries ask of the auto-fix service: the module ``delidev.services.auto_fix``
    itself (the tests of the rules of this module stand a recorder in its place)."""

    async def review_feedback(
        self, *, repository_id: UUID, pr_url: str, comments: Sequence[ReviewComment]
    ) -> list[UUID]: ...

    async def check_failed(
        self,
        *,
        repository_id: UUID,
        pr_url: str,
        check_name: str,
        summary: str,
        details_url: str | None,
    ) -> list[UUID]: ...

    async def pull_request_closed(
        self, *, repository_id: UUID, pr_url: str, merged: bool
    ) -> list[UUID]: ...

    async def pull_request_reopened(self, *, repository_id: UUID, pr_url: str) -> list[UUID]: ...


# Checking a delivery -------------------------------------------------------------------


def github_signature(secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` as GitHub computes it."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_HEADER_CHARS or not value.isprintable():
        raise InvalidArgument(f"header {name} is malformed or too long", field=name)
    return value


def _verify(repo: m.Repository, headers: Mapping[str, str], body: bytes) -> None:
    """Raises: Unauthenticated."""
    secret = repo.webhook_secret or ""
    if repo.vcs_provider_type == m.VcsProviderType.GITHUB:
        given = headers.get("x-hub-signature-256")
        if not given:
            raise Unauthenticated("the delivery is not signed (no X-Hub-Signature-256)")
        if not common.same_secret(given.strip(), github_signature(secret, body)):
            raise Unauthenticated("the delivery's X-Hub-Signature-256 does not match")
        return
    token = headers.get("x-gitlab-token")
    if not token:
        raise Unauthenticated("the delivery carries no X-Gitlab-Token")
    if not common.same_secret(gitlab_token_digest(token), secret):
        raise Unauthenticated("the delivery's X-Gitlab-Token does not match")


async def _configured_repository(provider: str, repository_id: str) -> m.Repository:
    """Raises: NotFound (one answer for every reason)."""
    repo: m.Repository | None = None
    try:
        wanted = m.VcsProviderType(provider)
        rid = UUID(repository_id)
    except ValueError:
        wanted, rid = None, None
    if wanted in WEBHOOK_PROVIDERS and rid is not None:
        repo = await m.Repository.get_or_none(id=rid)
    if repo is None or repo.vcs_provider_type != wanted or not repo.webhook_secret:
        hmac.new(_DUMMY_KEY, b"", hashlib.sha256).digest()  # about the work of a check
        raise NotFound(_NOT_CONFIGURED)
    return repo


def _payload(headers: Mapping[str, str], body: bytes, max_depth: int) -> dict[str, Any]:
    """Raises: InvalidArgument."""
    media_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise InvalidArgument(
            "the delivery must be JSON: set the webhook's content type to application/json",
            field="content-type",
        )
    try:
        check_json_depth(body, max_depth)
        payload = json.loads(body.decode("utf-8"))
    except TooDeep as error:
        raise InvalidArgument(f"the body {error}", field="body") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArgument("the body is not valid JSON", field="body") from None
    if not isinstance(payload, dict):
        raise InvalidArgument("the body must be a JSON object", field="body")
    return payload


# Parsing -------------------------------------------------------------------------------


class _Reader:
    """Typed reads of payload fields; a wrong type is InvalidArgument naming the path."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self._data = data
        self._path = path

    def _bad(self, key: str, what: str) -> InvalidArgument:
        name = f"{self._path}{key}"
        return InvalidArgument(f"payload field {name} is missing or not {what}", field=name)

    def obj(self, key: str) -> _Reader:
        value = self._data.get(key)
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return _Reader(value, f"{self._path}{key}.")

    def opt_obj(self, key: str) -> _Reader | None:
        return None if self._data.get(key) is None else self.obj(key)

    def text(self, key: str, limit: int = MAX_TITLE_CHARS) -> str:
        value = self._data.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return _UNSTORABLE.sub("", value)[:limit]

    def opt_text(self, key: str, limit: int = MAX_TITLE_CHARS) -> str | None:
        return None if self._data.get(key) is None else self.text(key, limit)

    def url(self, key: str) -> str:
        """An http(s) URL, checked before it reaches a query or a stored item (not cut,
        and a NUL in it is refused rather than dropped)."""
        value = self._data.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return todos.check_url(value, f"{self._path}{key}")

    def opt_url(self, key: str) -> str | None:
        """``url``, or None when absent, null or blank."""
        value = self._data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.url(key)

    def opt_int(self, key: str) -> int | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "an integer")
        return value

    def flag(self, key: str) -> bool:
        value = self._data.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(key, "a boolean")
        return value

    def objs(self, key: str) -> list[_Reader]:
        value = self._data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._bad(key, "a list of objects")
        return [_Reader(v, f"{self._path}{key}[].") for v in value[:100]]


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_github(event: str, payload: Mapping[str, Any]) -> list[Event]:
    """The events a GitHub delivery holds that we act on (none: ignored).

    Raises: InvalidArgument.
    """
    p = _Reader(payload)
    action = p.opt_text("action")
    if event == "issues" and action in ("opened", "reopened", "closed"):
        issue = p.obj("issue")
        url = issue.url("html_url")
        if action == "closed":
            return [Closed(url=url, pull_request=False)]
        return [
            IssueOpened(
                url=url,
                title=issue.text("title"),
                labels=[label.text("name") for label in issue.objs("labels")],
                assignees=[a.text("login") for a in issue.objs("assignees")],
                reopened=action == "reopened",
            )
        ]
    if event == "pull_request" and action in ("opened", "reopened", "review_requested", "closed"):
        pr = p.obj("pull_request")
        url = pr.url("html_url")
        if action == "closed":
            return [Closed(url=url, pull_request=True, merged=pr.flag("merged"))]
        return [
            PullRequestOpened(
                url=url,
                title=pr.text("title"),
                changed_files=min(
                    max(0, pr.opt_int("changed_files") or 0), todos.MAX_CHANGED_FILES
                ),
                reopened=action == "reopened",
            )
        ]
    if event == "pull_request_review" and action == "submitted":
        review = p.obj("review")
        body = review.opt_text("body", MAX_COMMENT_CHARS) or ""
        state = (review.opt_text("state") or "").lower()
        if not body.strip() and state != "changes_requested":
            return []  # an approval or an empty review: its line comments come on their own
        return [
            ReviewFeedback(
                pr_url=p.obj("pull_request").url("html_url"),
                comment=ReviewComment(
                    author=review.obj("user").text("login"),
                    body=body.strip() or "Changes requested.",
                    url=review.opt_url("html_url"),
                ),
                write_access=review.opt_text("author_association") in WRITE_ACCESS_ASSOCIATIONS,
            )
        ]
    if event == "pull_request_review_comment" and action == "created":
        comment = p.obj("comment")
        line = comment.opt_int("line")
        return [
            ReviewFeedback(
                pr_url=p.obj("pull_request").url("html_url"),
                comment=ReviewComment(
                    author=comment.obj("user").text("login"),
                    body=comment.text("body", MAX_COMMENT_CHARS),
                    url=comment.opt_url("html_url"),
                    path=comment.opt_text("path"),
                    line=line if line is not None else comment.opt_int("original_line"),
                ),
                write_access=comment.opt_text("author_association") in WRITE_ACCESS_ASSOCIATIONS,
            )
        ]
    if event == "check_run" and action == "completed":
        run = p.obj("check_run")
        if run.opt_text("conclusion") not in ("failure", "timed_out"):
            return []
        numbers = [n for n in (pr.opt_int("number") for pr in run.objs("pull_requests")) if n]
        if not numbers:
            return []
        base = p.obj("repository").url("html_url").rstrip("/")
        output = run.opt_obj("output")
        parts = [] if output is None else [output.opt_text("title"), output.opt_text("summary")]
        return [
            CheckFailed(
                pr_urls=[f"{base}/pull/{n}" for n in dict.fromkeys(numbers)],
                check_name=run.text("name"),
                summary=_bounded("\n\n".join(t for t in parts if t), MAX_SUMMARY_CHARS),
                details_url=run.opt_url("details_url") or run.opt_url("html_url"),
            )
        ]
    return []


def _gitlab_labels(attrs: _Reader, p: _Reader) -> list[str]:
    labels = attrs.objs("labels") or p.objs("labels")
    return [label.text("title") for label in labels]


def parse_gitlab(event: str, payload: Mapping[str, Any]) -> list[Event]:
    """The events a GitLab delivery holds that we act on (none: ignored).

    Raises: InvalidArgument.
    """
    p = _Reader(payload)
    if event in ("Issue Hook", "Confidential Issue Hook"):
        attrs = p.obj("object_attributes")
        action = attrs.opt_text("action")
        if action not in ("open", "reopen", "close"):
            return []
        url = attrs.url("url")
        if action == "close":
            return [Closed(url=url, pull_request=False)]
        return [
            IssueOpened(
                url=url,
                title=attrs.text("title"),
                labels=_gitlab_labels(attrs, p),
                assignees=[a.text("username") for a in p.objs("assignees")],
                reopened=action == "reopen",
            )
        ]
    if event == "Merge Request Hook":
        attrs = p.obj("object_attributes")
        action = attrs.opt_text("action")
        if action not in ("open", "reopen", "close", "merge"):
            return []
        url = attrs.url("url")
        if action in ("close", "merge"):
            return [Closed(url=url, pull_request=True, merged=action == "merge")]
        return [
            PullRequestOpened(
                url=url, title=attrs.text("title"), changed_files=0, reopened=action == "reopen"
            )
        ]
    if event in ("Note Hook", "Confidential Note Hook"):
        attrs = p.obj("object_attributes")
        if attrs.opt_text("noteable_type") != "MergeRequest" or attrs.flag("system"):
            return []
        if attrs.opt_text("action") not in (None, "create"):
            return []  # an edited note was acted on when it was made
        note_url = attrs.opt_url("url")
        mr = p.obj("merge_request")
        pr_url = mr.opt_url("url") or (note_url or "").split("#", 1)[0]
        if not pr_url:
            raise InvalidArgument(
                "payload field merge_request.url is missing", field="merge_request.url"
            )
        position = attrs.opt_obj("position")
        project = p.opt_obj("project")
        visibility = None if project is None else project.opt_int("visibility_level")
        return [
            ReviewFeedback(
                pr_url=pr_url,
                comment=ReviewComment(
                    author=p.obj("user").text("username"),
                    body=attrs.text("note", MAX_COMMENT_CHARS),
                    url=note_url,
                    path=None if position is None else position.opt_text("new_path"),
                    line=None if position is None else position.opt_int("new_line"),
                ),
                write_access=visibility == GITLAB_PRIVATE,
            )
        ]
    if event == "Pipeline Hook":
        attrs = p.obj("object_attributes")
        pipeline_mr = p.opt_obj("merge_request")
        if attrs.opt_text("status") != "failed" or pipeline_mr is None:
            return []
        failed = [
            f"{b.opt_text('stage') or '?'}/{b.opt_text('name') or '?'}: "
            f"{b.opt_text('failure_reason') or 'failed'}"
            for b in p.objs("builds")
            if b.opt_text("status") == "failed"
        ]
        pipeline_id = attrs.opt_int("id")
        name = attrs.opt_text("name") or f"pipeline {pipeline_id or ''}".strip()
        return [
            CheckFailed(
                pr_urls=[pipeline_mr.url("url")],
                check_name=name,
                summary=_bounded(
                    "Failed jobs:\n" + "\n".join(failed) if failed else "The pipeline failed.",
                    MAX_SUMMARY_CHARS,
                ),
                details_url=attrs.opt_url("url"),
            )
        ]
    return []


_PARSERS: dict[m.VcsProviderType, Callable[[str, Mapping[str, Any]], list[Event]]] = {
    m.VcsProviderType.GITHUB: parse_github,
    m.VcsProviderType.GITLAB: parse_gitlab,
}


def _delivery_headers(
    provider: m.VcsProviderType, headers: Mapping[str, str]
) -> tuple[str | None, str | None]:
    if provider == m.VcsProviderType.GITHUB:
        return _header(headers, "x-github-event"), _header(headers, "x-github-delivery")
    return _header(headers, "x-gitlab-event"), (
        _header(headers, "idempotency-key") or _header(headers, "x-gitlab-event-uuid")
    )


# Receiving -----------------------------------------------------------------------------


async def receive_delivery(
    *,
    provider: str,
    repository_id: str,
    headers: Mapping[str, str],
    body: bytes,
    retention: dt.timedelta,
    auto_fix: AutoFix,
    max_json_depth: int = MAX_JSON_DEPTH,
) -> Received:
    """Checks a delivery (``headers`` with lower-case names) and acts on it once.

    Raises: NotFound, Unauthenticated, InvalidArgument (nothing is stored then).
    """
    repo = await _configured_repository(provider, repository_id)
    _verify(repo, headers, body)
    event, delivery_id = _delivery_headers(repo.vcs_provider_type, headers)
    payload = _payload(headers, body, max_json_depth)
    if event is None:
        raise InvalidArgument("the delivery names no event (X-GitHub-Event / X-Gitlab-Event)")
    if delivery_id is None:
        raise InvalidArgument("the delivery has no id (X-GitHub-Delivery / X-Gitlab-Event-UUID)")
    found = _PARSERS[repo.vcs_provider_type](event, payload)

    todo_ids: list[UUID] = []
    async with common.transaction():
        try:
            async with in_transaction():  # a savepoint: a lost race leaves nothing behind
                await m.WebhookDelivery.create(
                    repository_id=repo.id, delivery_id=delivery_id, event=event[:100]
                )
        except IntegrityError:
            return Received(Outcome.DUPLICATE, event, delivery_id)
        if repo.auto_triage:
            todo_ids = await _triage(repo.id, found)
    try:
        fix_ids = await _auto_fix(repo, found, auto_fix)
    except DeliDevError as error:
        # The callee refused (a limit, a task gone): a redelivery would be refused alike.
        log.warning("auto-fix refused a webhook event: %s", type(error).__name__)
        fix_ids = []
    except BaseException:
        # Forget the delivery so that GitHub's / GitLab's redelivery acts on it again (the
        # todo changes above are idempotent).
        await m.WebhookDelivery.filter(repository_id=repo.id, delivery_id=delivery_id).delete()
        raise
    await m.WebhookDelivery.filter(received_at__lt=common.now() - retention).delete()
    outcome = Outcome.PROCESSED if found else Outcome.IGNORED
    return Received(outcome, event, delivery_id, todo_ids, fix_ids)


def _clean(text: str, limit: int = MAX_TITLE_CHARS) -> str:
    """Text from a payload as a todo item's data accepts it (no NUL, bounded)."""
    return text.replace("\x00", "").strip()[:limit]


def _names(values: Sequence[str]) -> list[str]:
    return [n for n in (_clean(v, common.MAX_NAME_LENGTH) for v in values) if n]


async def _triage(repository_id: UUID, found: Sequence[Event]) -> list[UUID]:
    ids: list[UUID] = []
    for ev in found:
        item: m.TodoItem | None = None
        if isinstance(ev, IssueOpened):
            item, _ = await todos.file_auto_item(
                repository_id=repository_id,
                data=todos.IssueTriageData(
                    issue_url=ev.url,
                    issue_title=_clean(ev.title) or "(untitled)",
                    suggested_labels=_names(ev.labels),
                    suggested_assignees=_names(ev.assignees),
                ),
                reopened=ev.reopened,
            )
        elif isinstance(ev, PullRequestOpened):
            item, _ = await todos.file_auto_item(
                repository_id=repository_id,
                data=todos.PrReviewData(
                    pr_url=ev.url,
                    pr_title=_clean(ev.title) or "(untitled)",
                    changed_files_count=ev.changed_files,
                ),
                reopened=ev.reopened,
            )
        elif isinstance(ev, Closed):
            item = await todos.complete_auto_item(repository_id=repository_id, url=ev.url)
        if item is not None:
            ids.append(item.id)
    return ids


async def _auto_fix(repo: m.Repository, found: Sequence[Event], auto_fix: AutoFix) -> list[UUID]:
    ids: list[UUID] = []
    for ev in found:
        if isinstance(ev, Closed) and ev.pull_request:
            ids += await auto_fix.pull_request_closed(
                repository_id=repo.id, pr_url=ev.url, merged=ev.merged
            )
        elif isinstance(ev, PullRequestOpened) and ev.reopened:
            ids += await auto_fix.pull_request_reopened(repository_id=repo.id, pr_url=ev.url)
        elif isinstance(ev, ReviewFeedback) and repo.auto_fix_review_comments:
            if repo.review_comment_filter == m.ReviewCommentFilter.ALL or ev.write_access:
                ids += await auto_fix.review_feedback(
                    repository_id=repo.id, pr_url=ev.pr_url, comments=[ev.comment]
                )
        elif isinstance(ev, CheckFailed) and repo.auto_fix_ci_failures:
            for pr_url in ev.pr_urls:
                ids += await auto_fix.check_failed(
                    repository_id=repo.id,
                    pr_url=pr_url,
                    check_name=ev.check_name,
                    summary=ev.summary,
                    details_url=ev.details_url,
                )
    return ids
