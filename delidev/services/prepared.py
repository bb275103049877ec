"""One row by simple equality, with its SQL built once: the hottest reads skip the ORM's
query building.

Tortoise builds every query anew through pypika: filter resolution, queryset cloning and
SQL rendering cost ~170 µs of CPU for a one-row read here, more than the read itself
(bench/bench_get.py, whose ``bare-raw`` row reads through the driver). For a read of one row
by equality on its own columns (``id``, a tenant's ``user_id``, ``…__isnull``), ``get_one``
renders the statement once per model, filter shape and dialect, and sends it through the
same Tortoise connection (so transactions, logging and error translation are Tortoise's),
then builds the model as Tortoise does (``_init_from_db``). No ORM offers a cached
statement for this, hence this module. Anything it cannot express (a lookup through a
relation, an operator other than ``__isnull``, a value that is None) goes to
``Model.get_or_none`` unchanged. ``tests/services/test_prepared.py`` compares both.
"""

from __future__ import annotations

from typing import Any, TypeVar

from tortoise import connections
from tortoise.models import Model

M = TypeVar("M", bound=Model)

# (model, dialect, filter shape) -> (SQL, the fields the values are converted by)
_STATEMENTS: dict[tuple[type[Model], str, tuple[tuple[str, bool], ...]], tuple[str, list[Any]]] = {}


async def get_one(model: type[M], /, **where: Any) -> M | None:
    """``model.get_or_none(**where)``: the row, None when there is none; raises as Tortoise
    does when several match (MultipleObjectsReturned)."""
    shape = _shape(model, where)
    if shape is None:
        return await model.get_or_none(**where)
    client = connections.get(model._meta.default_connection or "default")
    dialect = client.capabilities.dialect
    key = (model, dialect, shape)
    found = _STATEMENTS.get(key)
    if found is None:
        found = _STATEMENTS[key] = _render(model, dialect, shape)
    sql, converters = found
    values = [
        converter.to_db_value(where[name], model)
        for (name, isnull), converter in zip(shape, converters, strict=True)
        if not isnull
    ]
    rows = await client.execute_query_dict(sql, values)
    if not rows:
        return None
    if len(rows) > 1:
        return await model.get_or_none(**where)  # raises as the ORM does
    return model._init_from_db(**rows[0])


def _shape(model: type[Model], where: dict[str, Any]) -> tuple[tuple[str, bool], ...] | None:
    """The filter as (column field, is it ``__isnull=True``) pairs, or None when this module
    does not express it."""
    columns = model._meta.fields_db_projection
    shape: list[tuple[str, bool]] = []
    for key, value in where.items():
        name, _, op = key.partition("__")
        if name not in columns:
            return None
        if op == "isnull" and value is True:
            shape.append((name, True))
        elif op == "" and value is not None:
            shape.append((name, False))
        else:
            return None
    return tuple(shape)


def _render(
    model: type[Model], dialect: str, shape: tuple[tuple[str, bool], ...]
) -> tuple[str, list[Any]]:
    meta = model._meta
    columns = ", ".join(f'"{column}"' for column in meta.fields_db_projection.values())
    conditions: list[str] = []
    converters: list[Any] = []
    for name, isnull in shape:
        column = meta.fields_db_projection[name]
        converters.append(meta.fields_map[name])
        if isnull:
            conditions.append(f'"{column}" IS NULL')
        else:
            values = sum(1 for _, null in shape[: len(converters)] if not null)
            placeholder = f"${values}" if dialect == "postgres" else "?"
            conditions.append(f'"{column}" = {placeholder}')
    where = " AND ".join(conditions) or "TRUE"
    # LIMIT 2, as the ORM's get_or_none: a second row means the filter was not unique.
    return f'SELECT {columns} FROM "{meta.db_table}" WHERE {where} LIMIT 2', converters
