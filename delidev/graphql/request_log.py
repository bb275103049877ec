"""Tells the request's log context (``delidev/request_context.py``) which GraphQL operation
ran and the code of its first error, for the access line and every record after it."""

from __future__ import annotations

from strawberry.types import ExecutionContext

from delidev import request_context


def note_operation(context: ExecutionContext) -> None:
    if request_context.current() is None:
        return
    try:
        kind = context.operation_type.value
    except Exception:  # no document (it did not parse) or no such operation
        kind = "unknown"
    request_context.set_graphql(kind, context.operation_name)
    result = context.result
    errors = getattr(result, "errors", None)
    if errors:
        code = (errors[0].extensions or {}).get("code")
        if code is not None:
            request_context.set_code(str(code))
