"""Helpers shared by the service modules: ids, text checks, paging, tenant scope, the
clock, and the one place where what the ORM raises becomes a domain error (``orm_errors``)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hmac
import ipaddress
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import DoesNotExist, IntegrityError
from tortoise.expressions import RawSQL
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from delidev import events
from delidev.auth.principal import Principal
from delidev.errors import Conflict, InvalidArgument, NotFound, PermissionDenied

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Model)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_NAME_LENGTH = 255
MAX_TEXT_LENGTH = 100_000
MAX_URL_LENGTH = 2_048
# The highest paging offset: the range of the int32 ``offset`` fields (Connect) and of a
# GraphQL Int. A cursor is bounded alike, so no position from outside overflows the 64-bit
# integers of SQLite and PostgreSQL once a page size is added to it.
MAX_OFFSET = 2**31 - 1
MAX_CURSOR_LENGTH = 64  # ours are about 24 characters


def now() -> dt.datetime:
    """The current time, in UTC. Also for ``updated_at`` in bulk ``.update()`` calls, which
    do not set auto_now fields."""
    return dt.datetime.now(dt.UTC)


def same_secret(given: str, expected: str) -> bool:
    """Compares a secret from outside with the expected one in constant time. As UTF-8
    bytes: ``hmac.compare_digest`` refuses non-ASCII strings with a TypeError, which would
    turn a stray character in a header into an internal error."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def changed(**fields: Any) -> dict[str, Any]:
    """The columns of a bulk ``.update()`` with ``updated_at`` stamped: a bulk update does not
    set auto_now fields, so every ``QuerySet.update`` of a row that has one goes through here,
    ``filter(...).update(**changed(status=to))``."""
    return {**fields, "updated_at": now()}


def mirror(row: Model, values: dict[str, Any]) -> None:
    """Sets on a loaded row what a bulk ``.update(**values)`` just stored, so that the caller
    answers with the row as stored without reading it back."""
    for name, value in values.items():
        setattr(row, name, value)


@contextlib.contextmanager
def orm_errors() -> Iterator[None]:
    """Translates what Tortoise raises about rows into domain errors, like httpx's
    ``map_httpcore_exceptions``: a row that is gone (deleted by a concurrent call between a
    check and a ``Model.get()``) is NotFound naming its kind, never an internal error, and
    the ORM's text (which may name tables and hold the values sent) stays here.
    ``transaction()`` applies it to its body; ``get_row`` to a single read outside one.

    A unique or foreign key violation that reaches it (a row added or deleted by a
    concurrent call since the checks) is a Conflict, which clients may retry. Services that
    know what a violation means (an AlreadyExists) catch it themselves, before this.
    """
    try:
        yield
    except DoesNotExist as error:
        what = _kind(error.model) if error.model is not None else "object"
        raise NotFound(f"{what} not found (it may have just been deleted)") from None
    except IntegrityError as error:
        # The driver's text can hold the values sent: only the kind of failure is logged.
        log.warning("%s in a transaction, answered as Conflict", type(error.__cause__).__name__)
        raise Conflict("the change conflicted with a concurrent one: try again") from None
    except asyncpg.exceptions.TransactionRollbackError as error:
        # A deadlock or serialization failure (PostgreSQL rolled the transaction back):
        # nothing was changed, and the same call may well succeed now.
        log.warning("%s in a transaction, answered as Conflict", type(error).__name__)
        raise Conflict("the change conflicted with a concurrent one: try again") from None


async def hold_workspace(workspace_id: UUID) -> None:
    """Inside a transaction that adds rows under a workspace (tasks, their runs), locks its
    row against deletion before anything else (PostgreSQL; SQLite runs one writer at a time).

    A workspace's deletion locks the row first too, then reads its tasks: a task being
    created either commits before that read sees it, or waits and finds the workspace gone.
    Taken first, in the same order as the deletion, so the two never deadlock (the foreign
    key checks of an insert took the group's lock before the workspace's).

    Raises: NotFound (the workspace was deleted meanwhile)."""
    await _hold("workspaces", workspace_id, "workspace")


async def hold_group(group_id: UUID) -> None:
    """Like ``hold_workspace``, for a repository group whose members a new task reads: a
    change of its members that would remove a repository waits for the task's creation (and
    then sees the task), or comes wholly before the read. Take it after the workspace's.

    Raises: NotFound (the group was deleted meanwhile)."""
    await _hold("repository_groups", group_id, "repository group")


async def hold_repositories(repository_ids: Sequence[UUID]) -> None:
    """Locks these repositories against deletion (PostgreSQL), in the order of their ids;
    those that do not exist are left to the caller's checks."""
    connection = connections.get("default")
    if connection.capabilities.dialect != "postgres" or not repository_ids:
        return
    await connection.execute_query_dict(
        "SELECT id FROM repositories WHERE id = ANY($1::uuid[]) ORDER BY id FOR KEY SHARE",
        [sorted(set(repository_ids))],
    )


async def _hold(table: str, row_id: UUID, what: str) -> None:
    connection = connections.get("default")
    if connection.capabilities.dialect != "postgres":
        return
    rows = await connection.execute_query_dict(
        f"SELECT id FROM {table} WHERE id = $1 FOR KEY SHARE", [row_id]
    )
    if not rows:
        raise NotFound(f"{what} {row_id} not found (it was just deleted)")


@contextlib.asynccontextmanager
async def transaction() -> AsyncIterator[BaseDBAsyncClient]:
    """A database transaction whose events are published once it has committed.

    Raises: NotFound for a row a ``Model.get()`` in the body did not find, Conflict for a
    constraint it violated (``orm_errors``); the transaction is rolled back.
    """
    async with events.after_commit(), in_transaction() as connection:
        with orm_errors():
            yield connection


async def get_row(model: type[M], /, **where: Any) -> M:
    """``model.get(**where)``, with a missing row as NotFound (``orm_errors``).

    Raises: NotFound.
    """
    with orm_errors():
        return await model.get(**where)


def _kind(model: type[Model]) -> str:
    """``AgentSession`` → ``agent session``: the caller's word for a row's kind."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", model.__name__).lower()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; ``total_count`` is taken before paging."""

    items: Sequence[T]
    total_count: int


def parse_id(value: str | UUID, field: str) -> UUID:
    """Parses a UUID given by a client; InvalidArgument names the field."""
    if isinstance(value, UUID):
        return value
    text = value.strip()
    if not text:
        raise InvalidArgument(f"{field} is required", field=field)
    try:
        return UUID(text)
    except ValueError:
        raise InvalidArgument(f"{field} is not a valid id: {_clip(text)!r}", field=field) from None


def parse_optional_id(value: str | UUID | None, field: str) -> UUID | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_id(value, field)


def check_page_size(size: int | None, field: str) -> None:
    """A page size as a caller names it (``limit``, GraphQL's ``first``): at most
    ``MAX_PAGE_SIZE``. Raises: InvalidArgument naming ``field``."""
    if size is not None and not 0 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"{field} must be between 0 and {MAX_PAGE_SIZE}", field=field)


def page_bounds(limit: int | None, offset: int | None) -> tuple[int, int]:
    """Validates paging; a missing or zero limit means the default page size."""
    check_page_size(limit, "limit")
    limit = limit or DEFAULT_PAGE_SIZE
    offset = offset or 0
    if offset < 0 or offset > MAX_OFFSET:
        raise InvalidArgument(f"offset must be between 0 and {MAX_OFFSET}", field="offset")
    return limit, offset


async def paginate(
    query: QuerySet[M],
    limit: int | None,
    offset: int | None,
    *,
    long_text: Sequence[str] = (),
) -> Page[M]:
    """One page of ``query`` in a stable order (oldest first), with the total before paging.

    With ``long_text`` (columns of the model that may hold long text), the page's keys and
    the length of those columns are read first and only the rows that fit in
    ``PAGE_CHARS`` are loaded (see ``fitting``).

    Raises: InvalidArgument (bad limit or offset).
    """
    limit, offset = page_bounds(limit, offset)
    total = await query.count()
    ordered = query.order_by("created_at", "id").offset(offset).limit(limit)
    if not long_text or offset >= total:
        return Page(items=await ordered, total_count=total)
    table = query.model._meta.db_table
    weight = " + ".join(
        f'COALESCE(LENGTH(CAST("{table}"."{column}" AS TEXT)), 0)' for column in long_text
    )
    keys = await ordered.annotate(weight=RawSQL(weight)).values_list("id", "weight")
    kept = [key for key, _ in keys[: fitting([int(w) for _, w in keys])]]
    rows = {row.pk: row for row in await query.model.filter(pk__in=kept)}
    # A row deleted since its key was read is left out, as it would be a moment later.
    return Page(items=[rows[key] for key in kept if key in rows], total_count=total)


# A list page ends early rather than hold more than ``PAGE_CHARS`` characters of its items'
# long text (prompts, descriptions, plans, answers): 500 prompts of 100,000 characters
# would make one answer of ~50 MB, and several times that in memory while it is built. A
# page holds at least one item whatever it weighs; callers page on from the items they got
# (``next_page_token`` / ``endCursor`` name the last of them, ``offset`` + their number).
PAGE_CHARS = 2_000_000
ITEM_CHARS = 500  # what an item weighs besides its long text (ids, names, times)


def fitting(weights: Sequence[int], budget: int | None = None) -> int:
    """How many of the leading items, of these long-text weights, one page holds: all
    that fit in ``budget`` characters (``PAGE_CHARS``) counting ``ITEM_CHARS`` each, and
    at least one."""
    budget = PAGE_CHARS if budget is None else budget
    spent = 0
    for count, weight in enumerate(weights):
        spent += ITEM_CHARS + weight
        if count and spent > budget:
            return count
    return len(weights)


# Paging cursors have one meaning in both APIs: a cursor names one item (its position in
# the listing's stable order), and a page asked for "after" a cursor starts at the next item
# (Relay's ``after``). Connect's ``next_page_token`` is the cursor of a page's last item and
# GraphQL's ``endCursor`` is the same value, so a cursor from either API pages on in the other.


def page_start(after: str | None, field: str) -> int | None:
    """Where a page asked for after cursor ``after`` starts; None when no cursor was given.
    Raises: InvalidArgument."""
    if not after:
        return None
    return decode_cursor(after, field) + 1


def next_page_cursor(start: int, count: int, total: int) -> str | None:
    """The cursor to ask for the page after one of ``count`` items from ``start``: the
    cursor of its last item, or None when nothing follows."""
    end = start + count
    return encode_cursor(end - 1) if count and end < total else None


def encode_cursor(offset: int) -> str:
    """An opaque paging cursor for a position in a stable order: it names the item there."""
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, field: str) -> int:
    """The position a cursor from ``encode_cursor`` stands for. Raises: InvalidArgument."""
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        offset = int(value)
        if kind != "offset" or not 0 <= offset < MAX_OFFSET:
            raise ValueError
    except ValueError:
        raise InvalidArgument(f"{field} is not a cursor this server issued", field=field) from None
    return offset


def unstorable(char: str) -> bool:
    """A control character or a lone surrogate: no column stores NUL or a surrogate, and none
    belongs in an identifier, an address, a name or a URL."""
    return unicodedata.category(char) in ("Cc", "Cs")


# The authority as written: a name or a bracketed IPv6 address, and a port.
_NETLOC = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]*)?")
# A host name as ``urlsplit`` gives it (lower case).
_WEB_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
# A last label that makes a browser parse the whole host as an IPv4 address (WHATWG).
_NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def _plain_host(host: str) -> bool:
    """Whether a browser reads ``host`` (from ``urlsplit``) as the same host: a name, or an
    IP address written as a browser writes it back."""
    try:
        if ":" in host:
            return str(ipaddress.IPv6Address(host)) == host
        if _NUMBER_LABEL.fullmatch(host.rstrip(".").rpartition(".")[2]):
            return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False
    if _WEB_HOST.fullmatch(host) is None:
        return False
    return all(_punycode_ok(label) for label in host.split(".") if label.startswith("xn--"))


def _punycode_ok(label: str) -> bool:
    """An ``xn--`` label that decodes to printable text (browsers refuse the others)."""
    try:
        text = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    return bool(text) and not any(unicodedata.category(c).startswith("C") for c in text)


def check_web_url(value: str, field: str) -> str:
    """An http(s) link shown to people (a PR, an issue): stripped, and refused when a browser
    could read it differently from this server or from what it shows. So no whitespace or
    control character, no backslash (a browser reads ``https://evil\\@github.com/`` as a
    link to ``evil``, Python's parser as one to ``github.com``), no user name or password
    (``https://github.com@evil.test/`` goes to ``evil.test``), a host a browser reads as it
    is written, and a valid port.

    Raises: InvalidArgument.
    """
    url = check_text(value, field, max_length=MAX_URL_LENGTH)  # length first: cheap
    if any(c.isspace() or unstorable(c) for c in url):
        raise InvalidArgument(
            f"{field} must not contain whitespace or control characters", field=field
        )
    if "\\" in url:
        raise InvalidArgument(f"{field} must not contain a backslash (use %5C)", field=field)
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracketed host that is not an IPv6 address
        raise InvalidArgument(f"{field} is not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(f"{field} must be an http(s) URL", field=field)
    if "@" in parts.netloc:
        raise InvalidArgument(
            f"{field} must not contain a user name or password (user@host)", field=field
        )
    if not _NETLOC.fullmatch(parts.netloc):
        raise InvalidArgument(f"{field} must name a host (and a port) only", field=field)
    try:
        parts.port  # noqa: B018  # a property that raises for a port out of range
    except ValueError:
        raise InvalidArgument(f"{field} has an invalid port", field=field) from None
    if not _plain_host(parts.hostname or ""):
        # Browsers decode %-escapes, convert non-ASCII names and read a name ending in a
        # number as an IPv4 address (``https://80`` is 0.0.0.80): it would not be the host
        # shown or matched here.
        raise InvalidArgument(
            f"{field} must name a host in ASCII letters, digits, dots and hyphens "
            "(or an IP address)",
            field=field,
        )
    return url


def check_text(
    value: str,
    field: str,
    *,
    max_length: int = MAX_NAME_LENGTH,
    required: bool = True,
    strip: bool = True,
) -> str:
    """Returns the (stripped) text, or raises InvalidArgument naming the field."""
    text = value.strip() if strip else value
    if required and not text.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(text) > max_length:
        raise InvalidArgument(
            f"{field} is too long ({len(text)} characters, at most {max_length})", field=field
        )
    if "\x00" in text:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return text


def check_optional_text(
    value: str | None, field: str, *, max_length: int = MAX_NAME_LENGTH
) -> str | None:
    """Like check_text, but None stays None and blank text becomes None."""
    if value is None:
        return None
    text = check_text(value, field, max_length=max_length, required=False)
    return text or None


def owner_filter(actor: Principal, prefix: str = "") -> dict[str, Any]:
    """Filter kwargs that keep a query to the actor's own workspaces.

    ``prefix`` is the relation path to the workspace, e.g. ``"workspace__"``.
    """
    if actor.is_worker:
        raise PermissionDenied("worker credentials cannot be used for this method")
    if actor.user_id is None:
        return {f"{prefix}user_id__isnull": True}
    return {f"{prefix}user_id": actor.user_id}


def _clip(text: str, length: int = 64) -> str:
    return text if len(text) <= length else text[:length] + "…"
