"""Limits on GraphQL requests: the body's size (pure ASGI middleware that refuses an
over-large body before anyone reads it), the document's shape (depth, aliases, fields,
fragments; computed in time linear in the document, before it is validated), the size
of the answer (a budget that fields able to return megabytes draw on before they read),
and ``Guard``, the schema extension that applies them to every operation."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from cachetools import LRUCache
from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    parse,
    specified_rules,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.language import ast
from graphql.validation.validate import ValidationAbortedError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import FieldExtension, SchemaExtension
from strawberry.extensions.field_extension import AsyncExtensionResolver
from strawberry.schema.schema import validate_document
from strawberry.types import Info
from strawberry.types.execution import ExecutionResult

from delidev.errors import InvalidArgument
from delidev.graphql.errors import error_extensions, format_error
from delidev.graphql.metrics import record_operation
from delidev.graphql.request_log import note_operation


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answers 413 when a request body exceeds ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body: dict[str, Any] = {
            "errors": [
                {
                    "message": f"request body is larger than {self.max_bytes} bytes",
                    "extensions": error_extensions(InvalidArgument),
                }
            ]
        }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


# --- Limits on the document, checked after parsing and before validation -----------------
#
# Written by hand because the limiters Strawberry ships (QueryDepthLimiter,
# MaxAliasesLimiter) expand every fragment spread afresh: fragments that each spread the
# previous one twice cost 2^n, and a < 1 KB document held the event loop for minutes.
# Here each fragment is costed once (memoised, in dependency order, without recursion
# on fragments) and spreads reuse its cost, so the check is linear in the document. The
# counts it returns are those of the fully expanded document (they may be astronomically
# large; Python's integers keep them exact and the fragment cap bounds their size).


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    max_depth: int
    max_aliases: int
    max_fields: int
    max_fragments: int


@dataclass(frozen=True, slots=True)
class Cost:
    """Of a selection set, with every fragment spread expanded."""

    depth: int = 0
    """Fields nested below the set's own fields (a set of leaves: 0), introspection
    fields (``__schema``...) not counted, as Strawberry's depth limiter counts."""
    aliases: int = 0
    fields: int = 0


_NO_COST = Cost()


def _combine(costs: list[Cost]) -> Cost:
    if not costs:
        return _NO_COST
    return Cost(
        depth=max(c.depth for c in costs),
        aliases=sum(c.aliases for c in costs),
        fields=sum(c.fields for c in costs),
    )


def _selection_set_cost(node: ast.SelectionSetNode | None, fragments: dict[str, Cost]) -> Cost:
    """The cost of ``node``, each spread priced from ``fragments`` (an unknown or not yet
    priced fragment costs nothing: validation refuses such documents anyway).

    Iterative (an explicit stack), so that a deeply nested document cannot exhaust
    Python's recursion limit; each node is visited once."""
    if node is None:
        return _NO_COST
    # A frame: (the field owning the set, or None; its selections; costs found so far)
    root: list[Cost] = []
    stack: list[tuple[ast.FieldNode | None, Iterator[ast.SelectionNode], list[Cost]]] = [
        (None, iter(node.selections), root)
    ]
    while stack:
        owner, selections, found = stack[-1]
        selection = next(selections, None)
        if selection is None:
            stack.pop()
            if stack:
                stack[-1][2].append(_field_cost(owner, _combine(found)))
            continue
        if isinstance(selection, ast.FieldNode):
            if selection.selection_set is None:
                found.append(_field_cost(selection, _NO_COST))
            else:
                stack.append((selection, iter(selection.selection_set.selections), []))
        elif isinstance(selection, ast.InlineFragmentNode):
            stack.append((None, iter(selection.selection_set.selections), []))
        elif isinstance(selection, ast.FragmentSpreadNode):
            found.append(fragments.get(selection.name.value, _NO_COST))
    return _combine(root)


def _field_cost(field: ast.FieldNode | None, inner: Cost) -> Cost:
    """A field's cost from that of its selections; ``None`` stands for an inline fragment
    (it adds nothing of its own)."""
    if field is None:
        return inner
    introspection = field.name.value.startswith("__")
    nested = field.selection_set is not None and not introspection
    return Cost(
        depth=inner.depth + 1 if nested else 0,
        aliases=inner.aliases + (field.alias is not None),
        fields=inner.fields + 1,
    )


def _spreads(node: ast.SelectionSetNode) -> Iterator[str]:
    """Names of the fragments spread anywhere in ``node`` (iteratively)."""
    stack = [node]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, ast.FragmentSpreadNode):
                yield selection.name.value
            elif (
                isinstance(selection, ast.FieldNode | ast.InlineFragmentNode)
                and selection.selection_set is not None
            ):
                stack.append(selection.selection_set)


def _fragment_costs(definitions: list[ast.FragmentDefinitionNode]) -> dict[str, Cost]:
    """Each fragment priced once, after the fragments it spreads (a fragment in a cycle is
    priced with the cycle cut: validation refuses cycles)."""
    by_name = {d.name.value: d for d in definitions}
    needs = {
        name: [n for n in _spreads(d.selection_set) if n in by_name] for name, d in by_name.items()
    }
    costs: dict[str, Cost] = {}
    visiting: set[str] = set()
    for start in by_name:
        if start in costs:
            continue
        stack = [(start, iter(needs[start]))]
        visiting.add(start)
        while stack:
            name, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                stack.pop()
                visiting.discard(name)
                costs[name] = _selection_set_cost(by_name[name].selection_set, costs)
            elif nxt not in costs and nxt not in visiting:
                visiting.add(nxt)
                stack.append((nxt, iter(needs[nxt])))
    return costs


def document_costs(document: ast.DocumentNode) -> list[tuple[ast.OperationDefinitionNode, Cost]]:
    """The cost of each operation of ``document``; time linear in the document."""
    fragments = [d for d in document.definitions if isinstance(d, ast.FragmentDefinitionNode)]
    costs = _fragment_costs(fragments)
    return [
        (d, _selection_set_cost(d.selection_set, costs))
        for d in document.definitions
        if isinstance(d, ast.OperationDefinitionNode)
    ]


def check_document(document: ast.DocumentNode, limits: DocumentLimits) -> GraphQLError | None:
    """The first limit ``document`` exceeds, as an error to answer with (else None)."""
    fragments = sum(isinstance(d, ast.FragmentDefinitionNode) for d in document.definitions)
    if fragments > limits.max_fragments:
        return GraphQLError(
            f"{fragments} fragments defined. Allowed: {limits.max_fragments}",
            extensions={"field": "query"},
        )
    operations = document_costs(document)
    for operation, cost in operations:
        if cost.depth > limits.max_depth:
            name = operation.name.value if operation.name else "anonymous"
            return GraphQLError(
                f"'{name}' exceeds maximum operation depth of {limits.max_depth}",
                nodes=[operation],
            )
    aliases = sum(cost.aliases for _, cost in operations)
    if aliases > limits.max_aliases:
        return GraphQLError(f"{aliases} aliases found. Allowed: {limits.max_aliases}")
    fields = sum(cost.fields for _, cost in operations)
    if fields > limits.max_fields:
        return GraphQLError(
            f"{fields} fields selected (fragments expanded). Allowed: {limits.max_fields}"
        )
    return None


# --- The size of the answer ----------------------------------------------------------------


class ResponseBudget:
    """Bytes the answer to one operation (or one subscription event) may still take.

    Fields that can return megabytes (a session's ``log``) reserve their size before they
    read, so thirty aliased log reads are refused instead of filling memory; the HTTP
    view also checks the encoded answer as a whole."""

    __slots__ = ("max_bytes", "used")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def reserve(self, amount: int, *, field: str) -> None:
        """Raises: InvalidArgument when ``amount`` more would exceed the budget."""
        if self.used + amount > self.max_bytes:
            raise InvalidArgument(
                f"the answer would be larger than {self.max_bytes} bytes "
                "(DELIDEV_GRAPHQL_MAX_RESPONSE_BYTES): read logs in pages with "
                "`offset` and `limit`, or fewer at a time",
                field=field,
            )
        self.used += amount


# Per task: every operation (HTTP request, WebSocket operation) runs in a task of its own,
# and its resolvers in tasks that copy the context.
_BUDGET: ContextVar[ResponseBudget | None] = ContextVar("graphql_response_budget", default=None)


def start_budget(max_bytes: int) -> None:
    _BUDGET.set(ResponseBudget(max_bytes))


class LogReadBudget(FieldExtension):
    """Reserves what a ``log(offset, limit)`` read can return (the session's log size
    past ``offset``, at most ``limit`` characters) before the resolver reads it."""

    async def resolve_async(
        self, next_: AsyncExtensionResolver, source: Any, info: Info[Any, Any], **kwargs: Any
    ) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            offset = kwargs.get("offset") or 0
            limit = kwargs.get("limit") or 0
            size = max(0, int(source.log_size) - max(0, offset))
            budget.reserve(min(size, limit) if limit > 0 else size, field="log")
        return await next_(source, info, **kwargs)


# --- The extension that applies the limits ------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentChecks:
    """What every document is checked against before it runs: the parser's token limit,
    the document limits and the validation rules added to graphql-core's own."""

    max_tokens: int
    limits: DocumentLimits
    rules: tuple[type[ASTValidationRule], ...]

    @property
    def all_rules(self) -> tuple[type[ASTValidationRule], ...]:
        """The rules as the ordinary path runs them (Strawberry's defaults, then ours)."""
        return (*specified_rules, *self.rules)


class Guard(SchemaExtension):
    """Query limits, error mapping and the operation metric in one extension (each
    extension costs every request hook calls and context managers).

    Parsing (with the token limit), the document limits (``limits.check_document``, linear
    in the document, before any validation rule runs) and validation are cached per query
    text: dashboards send the same few documents over and over. A new document of more
    than ``INLINE_CHARS`` is checked on a worker thread: graphql-core's validation is
    quadratic in places (overlapping fields), up to a second for a document within the
    limits, and the event loop must not wait for it. A document that fails to parse is
    left to Strawberry's own parser (same options), which reports the error where this
    extension can map it. After the operation, every error is rewritten with
    ``format_error``.
    """

    def __init__(self, *, checks: DocumentChecks, max_response_bytes: int) -> None:
        self._checks = checks
        self._max_response_bytes = max_response_bytes
        self._errors: list[GraphQLError] | None = None

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        context = self.execution_context
        context.parse_options["max_tokens"] = self._checks.max_tokens
        context.validation_rules = context.validation_rules + self._checks.rules
        yield
        result = self.execution_context.result
        if isinstance(result, GraphQLExecutionResult | ExecutionResult) and result.errors:
            result.errors = [format_error(e) for e in result.errors]
        note_operation(self.execution_context)  # for the log (delidev/request_context.py)
        record_operation(self.execution_context, time.perf_counter() - started)

    async def on_parse(self) -> AsyncIterator[None]:
        context = self.execution_context
        if context.graphql_document is None and context.query:
            found = await checked_document(context.schema._schema, context.query, self._checks)
            document, errors = found
            if document is not None:
                context.graphql_document = document
                self._errors = errors
        yield

    def on_validate(self) -> Iterator[None]:
        if self._errors is not None:
            # Strawberry skips its own validation when errors are set already.
            self.execution_context.pre_execution_errors = list(self._errors)
        yield

    def on_execute(self) -> Iterator[None]:
        start_budget(self._max_response_bytes)
        yield

    def on_stream_result(self, result: Any) -> Iterator[None]:
        """Each result of a subscription (or of an operation sent over a WebSocket)."""
        errors_ = getattr(result, "errors", None)
        if errors_:
            result.errors = [format_error(e) for e in errors_]
        yield
        start_budget(self._max_response_bytes)  # for the next event


INLINE_CHARS = 2_000
"""New documents up to this size are checked on the event loop (well under a millisecond)."""
_CHECKER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="graphql-validate")
CACHED_CHARS = 500_000
"""Checked documents kept, counted in characters of their text: a parsed document takes
~120 bytes per character (its tokens and nodes), so at most ~60 MB, while dashboards send a
few dozen documents of a few KB. A document alone larger than this is not kept."""
Checked = tuple[DocumentNode | None, list[GraphQLError]]


ENTRY_CHARS = 64
"""What an entry costs beyond its text, counted in characters: its key, value and the
cache's own bookkeeping. A document that does not parse holds no parsed nodes, but it is
kept too (a client that repeats it is answered from the cache), so each one counts."""


class _Kept(NamedTuple):
    found: Checked
    weight: int  # characters held: the key's text, the document's, and ENTRY_CHARS


def _weight(query: str, found: Checked) -> int:
    """The characters an entry holds. A short query is its own key and, parsed, its
    document's source (the same string); a long one is keyed by a digest."""
    document = found[0]
    text = len(query) if len(query) <= INLINE_CHARS else 0
    if document is not None and document.loc is not None:
        text = max(text, len(document.loc.source.body))
    return text + ENTRY_CHARS


# Touched only on the event loop's thread: the workers compute, the loop remembers.
_CHECKED: LRUCache[tuple[Any, ...], _Kept] = LRUCache(
    maxsize=CACHED_CHARS, getsizeof=lambda kept: kept.weight
)


def _key(schema: GraphQLSchema, query: str, *rest: Any) -> tuple[Any, ...]:
    """The cache key: a long query by its digest, so that the keys stay small too."""
    if len(query) > INLINE_CHARS:
        query_key: str | bytes = hashlib.sha256(query.encode("utf-8", "surrogatepass")).digest()
    else:
        query_key = query
    return (schema, query_key, *rest)


def _remember(key: tuple[Any, ...], query: str, found: Checked) -> None:
    weight = _weight(query, found)
    if weight <= CACHED_CHARS:
        _CHECKED[key] = _Kept(found, weight)


def checked_inline(schema: GraphQLSchema, query: str, checks: DocumentChecks) -> Checked:
    """``check``'s answer for a document of at most ``INLINE_CHARS``, checked here on the
    event loop, from the cache (filling it)."""
    if len(query) > INLINE_CHARS:
        raise ValueError(f"documents over {INLINE_CHARS} characters are checked off the loop")
    args = (schema, query, checks.max_tokens, checks.limits, checks.all_rules)
    key = _key(*args)
    kept = _CHECKED.get(key)
    if kept is not None:
        return kept.found
    found = check(*args)
    _remember(key, query, found)
    return found


async def checked_document(schema: GraphQLSchema, query: str, checks: DocumentChecks) -> Checked:
    """``check``'s answer for any document, from the cache (filling it); a long new one is
    checked on a worker thread. ``Guard`` and ``query_fast_path`` share the cache."""
    if len(query) <= INLINE_CHARS:
        return checked_inline(schema, query, checks)
    args = (schema, query, checks.max_tokens, checks.limits, checks.all_rules)
    key = _key(*args)
    kept = _CHECKED.get(key)
    if kept is not None:
        return kept.found
    found = await asyncio.get_running_loop().run_in_executor(
        _CHECKER, functools.partial(check, *args)
    )
    _remember(key, query, found)
    return found


def check(
    schema: GraphQLSchema,
    query: str,
    max_tokens: int,
    limits: DocumentLimits,
    rules: tuple[type[ASTValidationRule], ...],
) -> tuple[DocumentNode | None, list[GraphQLError]]:
    """The parsed document (None if it does not parse) and the errors of the limits, or
    else of validation (Strawberry's rules included)."""
    try:
        document = parse(query, max_tokens=max_tokens)
    except GraphQLError:
        return None, []
    too_much = check_document(document, limits)
    if too_much is not None:
        return document, [too_much]
    found = validate_document(schema, document, rules)
    return document, [_TOO_COMPLEX if isinstance(e, ValidationAbortedError) else e for e in found]


# graphql-core gives up on a document whose fields take too long to compare, or whose
# fragments are too much work, with no more than "Validation aborted.".
_TOO_COMPLEX = GraphQLError(
    "the document is too complex to validate (too many fields to compare): "
    "select each field once, or use fewer fragments"
)
