"""The schema, built in one place: the root types (``queries``, ``mutations``,
``subscriptions``), the query limits extension, the introspection rule, and (when tracing is
on, ``delidev/tracing.py``) Strawberry's OpenTelemetry extension, trimmed (``OperationSpans``)."""

from __future__ import annotations

from collections.abc import Callable, Generator

import strawberry
from graphql import ASTValidationRule, NoSchemaIntrospectionCustomRule
from graphql.error import GraphQLError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from strawberry.extensions import LifecycleStep, SchemaExtension
from strawberry.extensions.tracing import OpenTelemetryExtension
from strawberry.types import ExecutionContext

from delidev import tracing
from delidev.graphql.limits import DocumentChecks, DocumentLimits, Guard
from delidev.graphql.mutations import Mutation
from delidev.graphql.queries import Query
from delidev.graphql.subscriptions import Subscription
from delidev.graphql.task_types import CompositeTask, UnitTask
from delidev.settings import Settings


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Domain errors and request errors are the caller's business, not the log's;
        # unexpected errors are logged by DomainErrors before being masked.
        return None


class OperationSpans(OpenTelemetryExtension):
    """Strawberry's ``OpenTelemetryExtension`` (a span per operation, its parse and validation
    under it) without its span per resolved field: that hook makes the resolution of every
    field async, which cost a third of a small query's throughput even with sampling off. The
    operation's span is the current one while it runs instead, so the database statements it
    sends are its children. Nothing in a request the sampler dropped."""

    resolve = SchemaExtension.resolve  # type: ignore[assignment]  # not a hook here: see above

    _off = False

    def on_operation(self) -> Generator[None, None, None]:
        self._off = tracing.unsampled()
        if self._off:
            yield
            return
        steps = super().on_operation()
        next(steps)
        span = self._span_holder[LifecycleStep.OPERATION]
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)
            next(steps, None)

    def on_validate(self) -> Generator[None, None, None]:
        if self._off:
            yield
        else:
            yield from super().on_validate()

    def on_parse(self) -> Generator[None, None, None]:
        if self._off:
            yield
        else:
            yield from super().on_parse()


def introspection_enabled(settings: Settings) -> bool:
    """Schema introspection: on in single-user mode, off in multi-user mode (anyone may call
    /graphql there), unless DELIDEV_GRAPHQL_INTROSPECTION says otherwise."""
    if settings.graphql_introspection is None:
        return settings.single_user_mode
    return settings.graphql_introspection


def document_checks(settings: Settings) -> DocumentChecks:
    """The checks every document passes before it runs, by either path (``Guard``,
    ``query_fast_path``). The rules are built once: the validation cache keys on them."""
    rules: tuple[type[ASTValidationRule], ...] = ()
    if not introspection_enabled(settings):
        rules = (NoSchemaIntrospectionCustomRule,)
    limits = DocumentLimits(
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_fields=settings.graphql_max_fields,
        max_fragments=settings.graphql_max_fragments,
    )
    return DocumentChecks(max_tokens=settings.graphql_max_tokens, limits=limits, rules=rules)


def build_schema(settings: Settings, tracer_provider: TracerProvider | None = None) -> Schema:
    checks = document_checks(settings)
    # Outermost, so that the operation's span covers the other extensions' work.
    traced: list[Callable[[], SchemaExtension]] = []
    if tracer_provider is not None:
        traced.append(lambda: OperationSpans(tracer_provider=tracer_provider))
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[UnitTask, CompositeTask],
        extensions=[
            *traced,
            lambda: Guard(checks=checks, max_response_bytes=settings.graphql_max_response_bytes),
        ],
    )
