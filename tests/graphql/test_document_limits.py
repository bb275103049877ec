"""Document limits (depth, aliases, fields, fragments) in time linear in the document.

Fragments that each spread the previous one twice used to make the limit checks take
2^n steps on the event loop; the reference for the counts is Strawberry's own limiters,
which expand every spread (fine on small documents)."""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx
import pytest
from graphql import parse
from graphql.language import ast
from hypothesis import given, settings
from hypothesis import strategies as st
from strawberry.extensions.max_aliases import count_fields_with_alias
from strawberry.extensions.query_depth_limiter import determine_depth

from delidev.graphql import limits
from delidev.graphql.limits import Cost, DocumentLimits, check_document, document_costs

LIMITS = DocumentLimits(max_depth=12, max_aliases=30, max_fields=2_000, max_fragments=100)


def doubling(levels: int, on: str = "Workspace", leaf: str = "id name") -> str:
    """F<levels> expands to 2^levels copies of F0: each fragment spreads the previous twice."""
    fragments = [f"fragment F0 on {on} {{ {leaf} }}"]
    fragments += [
        f"fragment F{i} on {on} {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, levels + 1)
    ]
    return f"{{ workspaces {{ items {{ ...F{levels} }} }} }} " + " ".join(fragments)


def test_doubling_fragments_are_counted_exactly() -> None:
    ((_, cost),) = document_costs(parse(doubling(40)))
    assert cost == Cost(depth=2, aliases=0, fields=2 + 2 * 2**40)
    error = check_document(parse(doubling(40)), LIMITS)
    assert error is not None
    assert f"{2 + 2 * 2**40} fields selected" in error.message


def test_the_check_visits_each_node_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work grows with the text, not with the expanded document: 4x the fragments, at most
    4x the steps (the old limiters took 2^30 times more)."""
    calls = 0
    original = limits._field_cost

    def counting(field: Any, inner: Cost) -> Cost:
        nonlocal calls
        calls += 1
        return original(field, inner)

    monkeypatch.setattr(limits, "_field_cost", counting)
    steps = []
    for levels in (10, 40):
        calls = 0
        check_document(parse(doubling(levels)), DocumentLimits(12, 30, 2_000, 1_000))
        steps.append(calls)
    assert steps[1] <= 4 * steps[0] + 10, steps


def test_too_many_fragments_are_refused() -> None:
    document = parse(
        "{ workspaces { totalCount } } "
        + " ".join(f"fragment F{i} on Workspace {{ id }}" for i in range(101))
    )
    error = check_document(document, LIMITS)
    assert error is not None
    assert error.message == "101 fragments defined. Allowed: 100"


def test_a_fragment_cycle_terminates() -> None:
    document = parse(
        "{ workspaces { items { ...A } } } "
        "fragment A on Workspace { id ...B } fragment B on Workspace { name ...A }"
    )
    assert check_document(document, LIMITS) is None  # validation refuses the cycle


# --- Property: the linear computation agrees with Strawberry's expanding limiters --------

NAMES = ("a", "b", "c", "__typename", "__type")


def _field(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    name = st.sampled_from(NAMES)
    alias = st.sampled_from(["", "x: ", "y: "])
    nested = st.lists(children, min_size=1, max_size=3).map(lambda s: " { " + " ".join(s) + " }")
    return st.tuples(alias, name, st.one_of(st.just(""), nested)).map("".join)


_SELECTIONS = st.recursive(
    st.sampled_from(NAMES) | st.sampled_from([f"...F{j}" for j in range(4)]),
    lambda inner: _field(inner) | inner.map(lambda s: f"... on T {{ {s} }}"),
    max_leaves=6,
)
_BODY = st.lists(_SELECTIONS, min_size=1, max_size=4).map(" ".join)
_SPREAD = re.compile(r"\.\.\.F(\d)")


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Fragments F0..F<n-1>, each spreading only earlier ones, then the operation (which
    may spread any): acyclic, as validation demands."""
    count = draw(st.integers(0, 4))
    definitions: list[str] = []
    for i in range(count + 1):

        def earlier(match: re.Match[str], i: int = i) -> str:
            return f"...F{int(match[1]) % i}" if i else "a"

        body = _SPREAD.sub(earlier, draw(_BODY))
        definitions.append(f"fragment F{i} on T {{ {body} }}" if i < count else f"{{ {body} }}")
    return " ".join(definitions)


def _strawberry_depth(
    operation: ast.OperationDefinitionNode, fragments: dict[str, ast.FragmentDefinitionNode]
) -> int:
    """The depth Strawberry's limiter computes (its context is used only to report)."""
    return determine_depth(
        node=operation,
        fragments=fragments,
        depth_so_far=0,
        max_depth=10**6,
        context=None,  # type: ignore[arg-type]  # never reached below the limit
        operation_name="test",
        should_ignore=None,
    )


def _naive_fields(node: Any, fragments: dict[str, ast.FragmentDefinitionNode]) -> int:
    if node.selection_set is None:
        return 0
    total = 0
    for selection in node.selection_set.selections:
        if isinstance(selection, ast.FragmentSpreadNode):
            total += _naive_fields(fragments[selection.name.value], fragments)
        else:
            total += isinstance(selection, ast.FieldNode) + _naive_fields(selection, fragments)
    return total


@settings(max_examples=200, deadline=None, derandomize=True)
@given(documents())
def test_costs_match_an_expanding_reference(text: str) -> None:
    document = parse(text)
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, ast.FragmentDefinitionNode)
    }
    ((operation, cost),) = document_costs(document)
    assert cost.aliases == count_fields_with_alias(operation, fragments)
    assert cost.depth == _strawberry_depth(operation, fragments)
    assert cost.fields == _naive_fields(operation, fragments)


# --- Through the app ---------------------------------------------------------------------


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        (doubling(30), "fields selected (fragments expanded). Allowed: 2000"),
        (doubling(3, leaf="a1: id a2: id a3: id a4: id"), "32 aliases found. Allowed: 30"),
    ],
)
async def test_hostile_documents_are_refused_before_validation(
    http: httpx.AsyncClient, query: str, fragment: str
) -> None:
    response = await http.post("/graphql", json={"query": query})
    assert response.status_code == 200
    (error,) = response.json()["errors"]
    assert fragment in error["message"]
    assert error["extensions"]["code"] == "INVALID_ARGUMENT"


@pytest.mark.usefixtures("database")
async def test_introspection_queries_pass_the_depth_limit(http: httpx.AsyncClient) -> None:
    from graphql import get_introspection_query

    response = await http.post("/graphql", json={"query": get_introspection_query()})
    assert "errors" not in response.json(), response.text


@pytest.mark.usefixtures("database")
async def test_large_new_documents_are_validated_off_the_event_loop(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """graphql-core's overlapping-fields rule is quadratic (until a budget makes it give
    up): a document within the limits can take a second to validate, which must not be a
    second of the event loop's time."""
    threads: list[str] = []

    def spying(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args)

    original = limits.check
    monkeypatch.setattr(limits, "check", spying)
    small = "{ workspaces { totalCount } }"
    large = "{ workspaces { items { " + "repositories { name } " * 120 + "} } }"
    assert len(large) > limits.INLINE_CHARS
    for query in (small, large, large):  # the second large one comes from the cache
        response = await http.post("/graphql", json={"query": query})
        assert "errors" not in response.json(), response.text
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("graphql-validate")
    assert len(threads) == 2


@pytest.mark.usefixtures("database")
async def test_a_document_too_complex_to_validate_says_so(http: httpx.AsyncClient) -> None:
    query = "{ workspaces { items { " + "repositories { name } " * 600 + "} } }"
    response = await http.post("/graphql", json={"query": query})
    (error,) = response.json()["errors"]
    assert error["message"].startswith("the document is too complex to validate")
    assert error["extensions"]["code"] == "INVALID_ARGUMENT"
