"""Hot queries served without graphql-core's executor: a compiled plan per document.

Dashboards send the same few query documents over and over (a workspace, a list page, a
task). For each of those, graphql-core and Strawberry cost about as much again as the
service call the query makes: the view's request adapter and sub-response, the extension
hooks of every lifecycle step, the executor's per-field bookkeeping, argument conversion.
``query_plan`` compiles a document once, when it is plain enough, into a ``QueryPlan``
that ``serve`` runs straight: it coerces the variables (graphql-core's own coercion),
calls the root fields' own resolvers, and completes their values with the schema's own
serializers.

Written by hand: no maintained Python library compiles GraphQL documents (graphql-core has
no compiled execution; graphql-jit is JavaScript only).

A document is plain enough (``query_plan`` returns a plan) when it

- is at most ``PLAN_MAX_CHARS`` long, parses, stays within the document limits and passes
  validation (the same ``Guard`` checks and rules as the ordinary path, same cache);
- holds one operation, a query, and no fragments, directives or duplicate response keys;
- asks root fields whose resolvers take only the root, ``info`` (of which they use only
  ``info.context``) and arguments of the built-in scalar types (``ID``, ``String``,
  ``Int``, ``Float``, ``Boolean``), which Strawberry passes as they are (an argument of
  another type only when the document leaves it out and its default is null);
- selects below them only plain fields (no resolver, no field extension, no permission),
  of object, list and leaf types; no interface or union.

Anything else takes the ordinary path, and so does any request the plan cannot finish
exactly as graphql-core would: variables that do not coerce, a resolver that raises (the
error is then reported, formatted and logged by the ordinary path), a null where the
schema says non-null, a value a serializer refuses, a traced request. The root resolvers
then run a second time: queries read (the few writes they make, such as expiring
questions past their time, are idempotent), and a request costs at most twice its reads.
A failure other than a domain error is logged (its type, no trace).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    Undefined,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.language import ast
from strawberry.types.arguments import StrawberryArgument
from strawberry.types.field import StrawberryField

from delidev import metrics, request_context
from delidev.errors import DeliDevError
from delidev.graphql.context import Context
from delidev.graphql.limits import INLINE_CHARS, DocumentChecks, checked_inline

log = logging.getLogger(__name__)

PLAN_MAX_CHARS = INLINE_CHARS
"""Longer documents are left to the ordinary path (they are not the hot dashboard ones, and
it checks them off the event loop)."""
_PLAIN_ARGUMENT_TYPES = frozenset({"ID", "String", "Int", "Float", "Boolean"})
_BACKREF = "strawberry-definition"  # where Strawberry keeps its definition on graphql-core's


class Fallback(Exception):
    """The plan cannot answer this request exactly as graphql-core would."""


class _Info:
    """What a root resolver is given as ``info``: the context (all that DeliDev's resolvers
    use; any other attribute raises, and the request takes the ordinary path)."""

    __slots__ = ("context",)

    def __init__(self, context: Context) -> None:
        self.context = context


# A completed selection: (source value) -> JSON value.
_Complete = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _RootField:
    key: str
    field_def: Any  # GraphQLField
    node: ast.FieldNode
    resolver: Callable[..., Any] | None  # the resolver function, or None for __typename
    python_names: dict[str, str]  # GraphQL argument name -> Python parameter name
    complete: _Complete


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """A query document compiled for ``serve``."""

    operation_name: str | None
    variable_definitions: tuple[ast.VariableDefinitionNode, ...]
    roots: tuple[_RootField, ...]


def _leaf(gtype: GraphQLScalarType | GraphQLEnumType) -> _Complete:
    serialize = gtype.serialize

    def complete(value: Any) -> Any:
        out = serialize(value)
        if out is None or out is Undefined:
            raise Fallback
        return out

    return complete


def _non_null(inner: _Complete) -> _Complete:
    def complete(value: Any) -> Any:
        if value is None:
            raise Fallback  # graphql-core answers a null error here
        return inner(value)

    return complete


def _nullable(inner: _Complete) -> _Complete:
    def complete(value: Any) -> Any:
        return None if value is None else inner(value)

    return complete


def _list(inner: _Complete) -> _Complete:
    def complete(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise Fallback
        return [inner(v) for v in value]

    return complete


def _constant(value: str) -> _Complete:
    return lambda _: value


def _object(origin: type, fields: tuple[tuple[str, str | None, _Complete], ...]) -> _Complete:
    """``fields``: (response key, attribute, completion of its value); with no attribute
    (``__typename``), the completion of None."""

    def complete(value: Any) -> Any:
        if not isinstance(value, origin):
            raise Fallback
        out = {}
        for key, attribute, completion in fields:
            out[key] = completion(None if attribute is None else getattr(value, attribute))
        return out

    return complete


def _compile_type(gtype: Any, selection: ast.SelectionSetNode | None) -> _Complete | None:
    """The completion of a value of ``gtype`` with ``selection``, or None if not plain."""
    if isinstance(gtype, GraphQLNonNull):
        inner = _compile_type(gtype.of_type, selection)
        return None if inner is None else _non_null(inner)
    if isinstance(gtype, GraphQLList):
        inner = _compile_type(gtype.of_type, selection)
        return None if inner is None else _nullable(_list(inner))
    if isinstance(gtype, GraphQLScalarType | GraphQLEnumType):
        return None if selection is not None else _nullable(_leaf(gtype))
    if isinstance(gtype, GraphQLObjectType) and selection is not None:
        compiled = _compile_object(gtype, selection)
        return None if compiled is None else _nullable(compiled)
    return None  # interfaces, unions


def _compile_object(gtype: GraphQLObjectType, selection: ast.SelectionSetNode) -> _Complete | None:
    definition = (gtype.extensions or {}).get(_BACKREF)
    origin = getattr(definition, "origin", None)
    if not isinstance(origin, type):
        return None
    fields: list[tuple[str, str | None, _Complete]] = []
    keys: set[str] = set()
    for node in selection.selections:
        if not isinstance(node, ast.FieldNode) or node.directives or node.arguments:
            return None
        key = (node.alias or node.name).value
        if key in keys:
            return None
        keys.add(key)
        name = node.name.value
        if name == "__typename":
            if node.selection_set is not None:
                return None
            fields.append((key, None, _constant(gtype.name)))
            continue
        field_def = gtype.fields.get(name)
        field = (field_def.extensions or {}).get(_BACKREF) if field_def is not None else None
        if not isinstance(field, StrawberryField) or not _plain_field(field):
            return None
        completion = _compile_type(field_def.type, node.selection_set)
        if completion is None:
            return None
        fields.append((key, field.python_name, completion))
    return _object(origin, tuple(fields))


def _plain_field(field: StrawberryField) -> bool:
    """No resolver, no extension, no permission: the value is the attribute."""
    return field.base_resolver is None and not field.extensions and not field.permission_classes


def _compile_root(schema: GraphQLSchema, node: ast.FieldNode) -> _RootField | None:
    query_type = schema.query_type
    if query_type is None or node.directives:
        return None
    key = (node.alias or node.name).value
    name = node.name.value
    if name == "__typename":
        if node.selection_set is not None:
            return None
        return _RootField(key, None, node, None, {}, _constant(query_type.name))
    field_def = query_type.fields.get(name)
    if field_def is None:
        return None
    field = (field_def.extensions or {}).get(_BACKREF)
    if not isinstance(field, StrawberryField) or field.extensions or field.permission_classes:
        return None
    resolver = field.base_resolver
    if resolver is None or not resolver.is_async:
        return None
    parameters = list(resolver.signature.parameters)
    self_param, info_param = resolver.self_parameter, resolver.info_parameter
    if (
        self_param is None
        or info_param is None
        or parameters[:2] != [self_param.name, info_param.name]
        or info_param.name != "info"
    ):
        return None
    python_names: dict[str, str] = {}
    for arg_name, arg in field_def.args.items():
        definition = (arg.extensions or {}).get(_BACKREF)
        if not isinstance(definition, StrawberryArgument):
            return None
        python_names[arg_name] = definition.python_name
    given = {a.name.value for a in node.arguments or ()}
    if not given <= field_def.args.keys():
        return None
    for arg_name, arg in field_def.args.items():
        named = arg.type.of_type if isinstance(arg.type, GraphQLNonNull) else arg.type
        if getattr(named, "name", None) in _PLAIN_ARGUMENT_TYPES:
            continue
        # Another type (an enum, an input) needs Strawberry's conversion: only when the
        # document leaves it out and nothing (or null) is passed for it.
        if arg_name in given or arg.default_value not in (None, Undefined):
            return None
    complete = _compile_type(field_def.type, node.selection_set)
    if complete is None:
        return None
    function = resolver.wrapped_func
    if isinstance(function, staticmethod | classmethod):
        return None
    return _RootField(key, field_def, node, function, python_names, complete)


@functools.lru_cache(maxsize=128)
def query_plan(
    schema: GraphQLSchema, checks: DocumentChecks, query: str, operation_name: str | None
) -> QueryPlan | None:
    """The plan of ``query``, or None when it takes the ordinary path (see the module).
    Cached: at most 128 documents of at most ``PLAN_MAX_CHARS`` (a plan keeps nodes of its
    parsed document, ~120 bytes per character), so ~30 MB at worst."""
    if len(query) > PLAN_MAX_CHARS:
        return None
    document, errors = checked_inline(schema, query, checks)
    if document is None or errors:
        return None
    if len(document.definitions) != 1:
        return None
    (op,) = document.definitions
    if not isinstance(op, ast.OperationDefinitionNode):
        return None
    if op.operation != ast.OperationType.QUERY or op.directives:
        return None
    if operation_name is not None and (op.name is None or op.name.value != operation_name):
        return None
    roots: list[_RootField] = []
    keys: set[str] = set()
    for node in op.selection_set.selections:
        if not isinstance(node, ast.FieldNode):
            return None
        root = _compile_root(schema, node)
        if root is None or root.key in keys:
            return None
        keys.add(root.key)
        roots.append(root)
    return QueryPlan(
        operation_name=op.name.value if op.name else None,
        variable_definitions=tuple(op.variable_definitions or ()),
        roots=tuple(roots),
    )


async def execute(
    schema: GraphQLSchema, plan: QueryPlan, variables: dict[str, Any] | None, context: Context
) -> bytes:
    """The answer's body. Raises: Fallback (or any error of a resolver) when the ordinary
    path must answer instead."""
    coerced = get_variable_values(schema, plan.variable_definitions, variables or {})
    if isinstance(coerced, list):
        raise Fallback  # the ordinary path reports the variables' errors
    info = _Info(context)
    data: dict[str, Any] = {}
    for root in plan.roots:
        if root.resolver is None:
            data[root.key] = root.complete(None)
            continue
        given = get_argument_values(root.field_def, root.node, coerced)
        kwargs = {root.python_names[name]: value for name, value in given.items()}
        value = await root.resolver(None, info=info, **kwargs)
        data[root.key] = root.complete(value)
    return json.dumps({"data": data}, separators=(",", ":")).encode()


async def serve(
    schema: GraphQLSchema,
    plan: QueryPlan,
    variables: dict[str, Any] | None,
    context: Context,
) -> bytes | None:
    """``execute``, counted and noted as the ordinary path counts and notes an operation;
    None when the ordinary path must answer."""
    started = time.perf_counter()
    try:
        body = await execute(schema, plan, variables, context)
    except (Fallback, DeliDevError, GraphQLError):  # the ordinary path reports them
        return None
    except Exception as error:  # the same, but noted: the second run may not meet it
        log.warning(
            "a planned query failed (%s); the ordinary path answers it", type(error).__name__
        )
        return None
    metrics.graphql_operation(
        "query",
        plan.operation_name,
        True,
        time.perf_counter() - started,
        authenticated=context.authenticated,
    )
    request_context.set_graphql("query", plan.operation_name)
    return body
