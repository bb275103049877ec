"""Times GraphQL queries and mutations (``delidev_graphql_operation_duration_seconds``, by
operation type, bounded operation name and outcome). Subscriptions are long-lived: they are
counted open by the WebSocket protocols instead (``ws_protocols.py``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from strawberry.extensions import SchemaExtension

from delidev import metrics


class OperationMetrics(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        context = self.execution_context
        try:
            kind = context.operation_type.value
        except Exception:  # a document that did not parse has no operation type
            kind = "unknown"
        if kind == "subscription":
            return
        result = context.result
        ok = result is not None and not getattr(result, "errors", None)
        metrics.graphql_operation(kind, context.operation_name, ok, time.perf_counter() - started)
