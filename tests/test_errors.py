from __future__ import annotations

import ast
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tortoise.exceptions import DoesNotExist

from delidev import errors
from delidev import models as m
from delidev.connect.interceptors import CONNECT_CODES, connect_code
from delidev.graphql.errors import GRAPHQL_CODES, graphql_code
from delidev.services.common import get_row, orm_errors, transaction
from delidev.services.sessions import lifecycle
from tests.clients import ApiError, ConnectTaskApi, GraphQLTaskApi, connect_codecs
from tests.factories import make_group, make_repository, make_workspace


def _declared() -> list[type[errors.DeliDevError]]:
    # Importing the service modules brings in every error class they define.
    import delidev.services.plans  # noqa: F401

    return errors.all_error_classes()


def test_every_domain_error_is_mapped_by_both_transports() -> None:
    classes = _declared()
    assert len(classes) > 5
    # The direct children of the root are the categories: each has its own row.
    categories = {c for c in classes if errors.DeliDevError in c.__bases__}
    assert categories <= set(CONNECT_CODES), categories - set(CONNECT_CODES)
    assert categories <= set(GRAPHQL_CODES), categories - set(GRAPHQL_CODES)
    for cls in classes:
        assert (
            cls is errors.DeliDevError
            or connect_code(cls).name != "INTERNAL"
            or (issubclass(cls, errors.Internal))
        ), cls


def test_both_transports_agree_on_each_code() -> None:
    for cls in _declared():
        assert graphql_code(cls) == connect_code(cls).name, cls


def test_every_error_carries_a_spec_code() -> None:
    spec_codes = {-32600, -32601, -32602, -32603, -32001, -32002, -32003, -32004, -32005}
    for cls in _declared():
        assert cls.code in spec_codes, cls


def test_spec_codes_are_written_only_on_the_domain_errors(repo_root: Path) -> None:
    # One source: the transports read ``errors.X.code``, never a number of their own.
    package = repo_root / "delidev"
    restated = [
        f"{path.relative_to(repo_root)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path != package / "errors.py" and "gen" not in path.relative_to(package).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"-32[0-9]{3}\b", line)
    ]
    assert restated == []


# --- The ORM boundary (services/common.py::orm_errors) ---------------------------------


def test_a_missing_row_is_not_found_naming_its_kind() -> None:
    with pytest.raises(errors.NotFound) as info, orm_errors():
        raise DoesNotExist(m.AgentSession)
    assert info.value.message == "agent session not found (it may have just been deleted)"
    assert info.value.__cause__ is None  # the ORM's text stays behind
    assert info.value.__suppress_context__


async def _create_then_miss() -> None:
    async with transaction():
        await make_workspace(name="rolled back")
        await m.Workspace.get(id=uuid.uuid4())


async def test_get_row_and_transaction_map_a_missing_row(database: Any) -> None:
    with pytest.raises(errors.NotFound, match=r"^tty input request not found"):
        await get_row(m.TtyInputRequest, id=uuid.uuid4())
    with pytest.raises(errors.NotFound, match=r"^workspace not found"):
        await _create_then_miss()
    assert not await m.Workspace.exists(name="rolled back")  # the transaction rolled back


@pytest.fixture(params=["connect-json", "graphql"])
async def api(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Any]:
    client: ConnectTaskApi | GraphQLTaskApi
    if request.param == "graphql":
        client = GraphQLTaskApi(app)
    else:
        client = ConnectTaskApi(app, connect_codecs()["json"])
    try:
        yield client
    finally:
        await client.close()


async def test_a_session_deleted_while_it_stops_is_not_found_not_internal(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A concurrent delete lands between the stop's update and its re-read (a Model.get()).
    ended = lifecycle._session_ended

    async def deleted_meanwhile(session_id: uuid.UUID) -> None:
        await ended(session_id)
        await m.AgentSession.filter(id=session_id).delete()

    monkeypatch.setattr(lifecycle, "_session_ended", deleted_meanwhile)
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await api.create_unit(str(group.id), "p")
    with pytest.raises(ApiError) as info:
        await api.stop_session(task["latest_session"]["id"])
    assert (info.value.code, info.value.delidev_code) == ("NOT_FOUND", errors.NotFound.code)
    assert info.value.message == "agent session not found (it may have just been deleted)"


async def _add_twice(email: str) -> None:
    async with transaction():
        await m.User.create(email=email)
        await m.User.create(email=email)


async def test_a_violated_constraint_in_a_transaction_is_a_conflict(database: Any) -> None:
    with pytest.raises(errors.Conflict, match=r"^the change conflicted") as info:
        await _add_twice("twice@example.com")
    assert "twice@example.com" not in str(info.value)
    assert not await m.User.exists(email="twice@example.com")  # rolled back


def _bare_model_gets(tree: ast.AST) -> Iterator[int]:
    """Lines of ``m.Model.get(...)`` calls not inside ``async with transaction()``."""

    def visit(node: ast.AST, guarded: bool) -> Iterator[int]:
        if isinstance(node, ast.AsyncWith):
            guarded = guarded or any(
                isinstance(item.context_expr, ast.Call)
                and isinstance(item.context_expr.func, ast.Name)
                and item.context_expr.func.id == "transaction"
                for item in node.items
            )
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Attribute)
            and isinstance(node.func.value.value, ast.Name)
            and node.func.value.value.id == "m"
            and not guarded
        ):
            yield node.lineno
        for child in ast.iter_child_nodes(node):
            yield from visit(child, guarded)

    return visit(tree, False)


def test_every_model_get_in_the_services_is_under_the_boundary(repo_root: Path) -> None:
    # Outside a transaction, a row read that may be gone goes through get_row (or
    # get_or_none + NotFound): DoesNotExist must not reach a transport as internal.
    services = repo_root / "delidev" / "services"
    bare = [
        f"{path.name}:{line}"
        for path in sorted(services.glob("*.py"))
        for line in _bare_model_gets(ast.parse(path.read_text()))
    ]
    assert bare == []
    assert list(_bare_model_gets(ast.parse("async def f():\n    await m.Worker.get(id=1)"))) == [2]
