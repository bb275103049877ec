"""Times GraphQL queries and mutations (``delidev_graphql_operation_duration_seconds``, by
operation type, bounded operation name and outcome). Subscriptions are long-lived: they are
counted open by the WebSocket protocols instead (``ws_protocols.py``).

Called by ``limits.Guard`` around each operation rather than from an extension of its own:
every extension costs each request a context manager and hook look-ups per lifecycle step."""

from __future__ import annotations

from strawberry.types import ExecutionContext

from delidev import metrics
from delidev.graphql.context import Context


def record_operation(context: ExecutionContext, seconds: float) -> None:
    """Counts one finished operation (not a subscription)."""
    try:
        kind = context.operation_type.value
    except Exception:  # a document that did not parse has no operation type
        kind = "unknown"
    if kind == "subscription":
        return
    result = context.result
    ok = result is not None and not getattr(result, "errors", None)
    metrics.graphql_operation(
        kind, context.operation_name, ok, seconds, authenticated=authenticated(context.context)
    )


def authenticated(context: object) -> bool:
    """Whether a caller was authenticated while the operation ran (a resolver asked who
    calls: ``__typename`` alone asks nobody)."""
    return isinstance(context, Context) and context.authenticated
