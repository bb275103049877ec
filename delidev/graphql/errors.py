"""The one place where domain errors become GraphQL errors.

Every error gets ``extensions.code`` (a Connect-style code name, ``Code``),
``extensions.delidevCode`` (the specification's number, from ``delidev/errors.py``) and, for
bad input, ``extensions.field``: the argument or input field at fault, as the client wrote
it (camelCase, ``argument_name``). Three kinds:

- a domain error raised by a service: its class decides the code;
- a request error found by graphql-core (syntax, validation, limits, and variables or
  arguments that do not coerce to their types): INVALID_ARGUMENT with graphql-core's
  message, which describes the request, never the server;
- anything else: logged and masked as INTERNAL.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from graphql import (
    ArgumentNode,
    GraphQLSyntaxError,
    ObjectFieldNode,
    ValueNode,
    VariableDefinitionNode,
    VariableNode,
    Visitor,
    parse,
    visit,
)
from graphql.error import GraphQLError
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.utils.str_converters import to_camel_case

from delidev import db_outage, errors

log = logging.getLogger(__name__)


class Code(StrEnum):
    """The names ``extensions.code`` takes: those of the Connect codes."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


GRAPHQL_CODES: dict[type[errors.DeliDevError], Code] = {
    errors.DeliDevError: Code.INTERNAL,
    errors.InvalidArgument: Code.INVALID_ARGUMENT,
    errors.Unauthenticated: Code.UNAUTHENTICATED,
    errors.PermissionDenied: Code.PERMISSION_DENIED,
    errors.NotFound: Code.NOT_FOUND,
    errors.AlreadyExists: Code.ALREADY_EXISTS,
    errors.FailedPrecondition: Code.FAILED_PRECONDITION,
    errors.Conflict: Code.ABORTED,
    errors.WorkerUnavailable: Code.UNAVAILABLE,
    errors.Unavailable: Code.UNAVAILABLE,
    errors.Unimplemented: Code.UNIMPLEMENTED,
    errors.Internal: Code.INTERNAL,
}


def graphql_code(error_type: type[errors.DeliDevError]) -> Code:
    """The GraphQL code of a domain error class (a subclass maps like its nearest parent)."""
    for cls in error_type.__mro__:
        if cls in GRAPHQL_CODES:
            return GRAPHQL_CODES[cls]
    return Code.INTERNAL


def error_extensions(error_type: type[errors.DeliDevError]) -> dict[str, Any]:
    """``extensions.code`` and ``extensions.delidevCode`` of an error of ``error_type``."""
    return {"code": graphql_code(error_type), "delidevCode": error_type.code}


def argument_name(field: str) -> str:
    """The GraphQL name of the argument or input field a service error names.

    Services name a value after their Python parameter (``from_offset``,
    ``pr_review.changed_files_count``); GraphQL clients know it by the name Strawberry gives
    that parameter (``fromOffset``, ``prReview.changedFilesCount``). Names given by the
    resolvers (``sessionId``) are camelCase already and stay as they are."""
    return ".".join(to_camel_case(part) for part in field.split("."))


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
    is_domain = isinstance(original, errors.DeliDevError)
    if original is not None and not is_domain and db_outage.is_outage(original):
        original = db_outage.refused(original, "GraphQL")  # the domain's Unavailable
    if isinstance(original, errors.DeliDevError):
        extensions = error_extensions(type(original))
        if original.field:
            extensions["field"] = argument_name(original.field)
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
        extensions = {**(error.extensions or {}), **error_extensions(errors.InvalidArgument)}
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
        extensions=error_extensions(errors.Internal),
    )
