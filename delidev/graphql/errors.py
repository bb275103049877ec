"""The one place where domain errors become GraphQL errors.

Every error gets ``extensions.code`` (a Connect-style code name), ``extensions.delidevCode``
(the specification's number) and, for bad input, ``extensions.field``. Three kinds:

- a domain error raised by a service: its class decides the code;
- a request error found by graphql-core (syntax, validation, limits, and variables or
  arguments that do not coerce to their types): INVALID_ARGUMENT with graphql-core's
  message, which describes the request, never the server;
- anything else: logged and masked as INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from graphql import (
    ArgumentNode,
    ASTValidationRule,
    DocumentNode,
    GraphQLSchema,
    GraphQLSyntaxError,
    ObjectFieldNode,
    ValueNode,
    VariableDefinitionNode,
    VariableNode,
    Visitor,
    parse,
    visit,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.error import GraphQLError
from graphql.validation.validate import ValidationAbortedError
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.schema.schema import validate_document
from strawberry.types.execution import ExecutionResult

from delidev import errors
from delidev.graphql.limits import DocumentLimits, check_document, start_budget

log = logging.getLogger(__name__)

GRAPHQL_CODES: dict[type[errors.DeliDevError], str] = {
    errors.DeliDevError: "INTERNAL",
    errors.InvalidArgument: "INVALID_ARGUMENT",
    errors.Unauthenticated: "UNAUTHENTICATED",
    errors.PermissionDenied: "PERMISSION_DENIED",
    errors.NotFound: "NOT_FOUND",
    errors.AlreadyExists: "ALREADY_EXISTS",
    errors.FailedPrecondition: "FAILED_PRECONDITION",
    errors.Conflict: "ABORTED",
    errors.WorkerUnavailable: "UNAVAILABLE",
    errors.Unavailable: "UNAVAILABLE",
    errors.Unimplemented: "UNIMPLEMENTED",
    errors.Internal: "INTERNAL",
}


def graphql_code(error_type: type[errors.DeliDevError]) -> str:
    """The GraphQL code of a domain error class (a subclass maps like its nearest parent)."""
    for cls in error_type.__mro__:
        if cls in GRAPHQL_CODES:
            return GRAPHQL_CODES[cls]
    return "INTERNAL"


# What Strawberry raises about the operation asked for (none, an unknown one, or one of a
# kind the transport does not run): the caller's business, with a message about it.
_REQUEST_ERRORS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)


def _request_error_cause(error: GraphQLError) -> tuple[bool, BaseException | None]:
    """Whether graphql-core raised ``error`` about the request, and the exception of a
    scalar's own code beneath it, if any.

    graphql-core reports a variable that does not coerce as a GraphQLError without a path
    around the GraphQLError of the failed coercion (which may in turn wrap what a scalar
    raised), and an argument that does not coerce at run time (a variable's default
    overridden by null) with the field's path, pointing at the value in the document.
    Strawberry wraps a crash outside the resolvers without a path, directly around the
    exception; a resolver's failure or an unserializable result has a path and points at
    the field, never at a value.
    """
    cause = error.original_error
    if isinstance(cause, _REQUEST_ERRORS):
        return True, None  # e.g. a query sent where only subscriptions run (legacy graphql-ws)
    depth = 0
    while isinstance(cause, GraphQLError):
        cause, depth = cause.original_error, depth + 1
    if error.path is None:
        return cause is None or depth > 0, cause
    points_at_value = any(isinstance(node, ValueNode) for node in error.nodes or ())
    return depth > 0 and points_at_value, cause


def _variable_name(error: GraphQLError) -> str | None:
    """The variable an input error points at: the caller's name for the bad value."""
    for node in error.nodes or ():
        if isinstance(node, VariableDefinitionNode):
            return node.variable.name.value
        if isinstance(node, VariableNode):
            return node.name.value
    return None


def _argument_path(error: GraphQLError) -> str | None:
    """The argument (and input fields) holding a bad value typed into the document itself,
    dotted (``input.name``): graphql-core points at the value, not at its name."""
    value = next((n for n in error.nodes or () if isinstance(n, ValueNode)), None)
    if value is None or value.loc is None or error.source is None:
        return None
    start = value.loc.start
    try:
        document = parse(error.source)
    except GraphQLSyntaxError:
        return None
    names: list[str] = []

    class Enclosing(Visitor):
        def enter(self, node: Any, *_: Any) -> None:
            if not isinstance(node, ArgumentNode | ObjectFieldNode):
                return
            where = node.value.loc
            if where is not None and where.start <= start < where.end:
                names.append(node.name.value)

    visit(document, Enclosing())
    return ".".join(names) or None


def format_error(error: GraphQLError) -> GraphQLError:
    if error.original_error is None and "delidevCode" in (error.extensions or {}):
        return error  # formatted already (a result seen by two hooks)
    original = error.original_error
    if isinstance(original, errors.DeliDevError):
        extensions: dict[str, Any] = {
            "code": graphql_code(type(original)),
            "delidevCode": original.code,
        }
        if original.field:
            extensions["field"] = original.field
        return GraphQLError(
            original.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=extensions,
        )
    is_request_error, cause = _request_error_cause(error)
    if is_request_error:
        message = error.message
        if cause is not None and str(cause):
            # graphql-core quotes the exception a scalar raised; its text is the
            # server's business (it may name internals), the rest of the message is not.
            message = message.replace(str(cause), "invalid value")
        extensions = {
            **(error.extensions or {}),
            "code": "INVALID_ARGUMENT",
            "delidevCode": errors.InvalidArgument.code,
        }
        field = _variable_name(error) or _argument_path(error)
        if field is not None:
            extensions["field"] = field
        # Built afresh, without original_error: no traceback travels with the answer.
        return GraphQLError(
            message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=extensions,
        )
    log.error("unexpected error in GraphQL resolver at %s", error.path, exc_info=original)
    return GraphQLError(
        "internal error",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": "INTERNAL", "delidevCode": errors.Internal.code},
    )


class Guard(SchemaExtension):
    """Query limits and error mapping in one extension (each extension costs hook calls).

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

    def __init__(
        self,
        *,
        max_tokens: int,
        limits: DocumentLimits,
        rules: tuple[type[ASTValidationRule], ...],
        max_response_bytes: int,
    ) -> None:
        self._max_tokens = max_tokens
        self._max_response_bytes = max_response_bytes
        self._limits = limits
        self._rules = rules
        self._errors: list[GraphQLError] | None = None

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self._max_tokens
        context.validation_rules = context.validation_rules + self._rules
        yield
        result = self.execution_context.result
        if isinstance(result, GraphQLExecutionResult | ExecutionResult) and result.errors:
            result.errors = [format_error(e) for e in result.errors]

    async def on_parse(self) -> AsyncIterator[None]:
        context = self.execution_context
        if context.graphql_document is None and context.query:
            key = (
                context.schema._schema,
                context.query,
                self._max_tokens,
                self._limits,
                context.validation_rules,
            )
            found = _CHECKED.get(key)
            if found is None:
                if len(context.query) > INLINE_CHARS:
                    found = await asyncio.get_running_loop().run_in_executor(
                        _CHECKER, functools.partial(check, *key)
                    )
                else:
                    found = check(*key)
                _remember(key, found)
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
_CHECKED_KEPT = 1024
# Touched only on the event loop's thread: the workers compute, the loop remembers.
_CHECKED: OrderedDict[tuple[Any, ...], tuple[DocumentNode | None, list[GraphQLError]]] = (
    OrderedDict()
)


def _remember(key: tuple[Any, ...], found: tuple[DocumentNode | None, list[GraphQLError]]) -> None:
    _CHECKED[key] = found
    _CHECKED.move_to_end(key)
    if len(_CHECKED) > _CHECKED_KEPT:
        _CHECKED.popitem(last=False)


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
