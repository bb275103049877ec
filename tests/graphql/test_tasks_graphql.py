from __future__ import annotations

from typing import Any

import httpx
import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import tasks
from tests.conftest import SqlCounter
from tests.factories import (
    finish_latest,
    make_group,
    make_repository,
    make_workspace,
    start_latest,
)

PLAN = """
tasks:
  - id: a
    prompt: first
  - id: b
    prompt: second
    dependsOn: [a]
"""

NESTED = """
query($first: Int) {
  tasks(first: $first) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges {
      cursor
      node {
        id prompt
        ... on UnitTask {
          status branchName latestSession { status attempt }
          agentTask { id sessions { id status } baseRemotes { gitBranchName } }
        }
        ... on CompositeTask {
          compositeStatus: status planYaml
          planningTask { sessions { status } }
          nodes {
            planId state dependsOnNodeIds
            unitTask { id status agentTask { sessions { id } } }
          }
        }
      }
    }
  }
}
"""


async def _gql(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _populate(n: int) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws), await make_repository(ws)])
    for i in range(n):
        await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt=f"u{i}")
        composite = await tasks.create_composite_task(
            actor=LOCAL_USER, repository_group_id=group.id, prompt=f"c{i}"
        )
        await finish_latest(composite.planning_task_id, plan_yaml=PLAN)
        await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)


async def test_nested_task_query_statement_count_is_constant(
    http: httpx.AsyncClient, sql_counter: SqlCounter
) -> None:
    await _populate(2)
    sql_counter.reset()
    small = await _gql(http, NESTED, first=100)
    assert "errors" not in small, small
    few = len(sql_counter.statements)
    assert few > 0  # the counter sees this test's statements
    await _populate(8)
    sql_counter.reset()
    large = await _gql(http, NESTED, first=100)
    assert large["data"]["tasks"]["totalCount"] == 20
    composites = [e["node"] for e in large["data"]["tasks"]["edges"] if "nodes" in e["node"]]
    assert len(composites) == 10
    assert all(len(c["nodes"]) == 2 for c in composites)
    assert {n["state"] for c in composites for n in c["nodes"]} == {"QUEUED", "WAITING"}
    # No query per row (that would add 8 or more); a DataLoader batch may be split in two
    # when resolvers queue their loads in different ticks of the event loop.
    assert len(sql_counter.statements) <= few + 2, sql_counter.statements


async def test_relay_paging(http: httpx.AsyncClient) -> None:
    await _populate(3)  # 6 top-level tasks
    seen: list[str] = []
    after = None
    while True:
        body = await _gql(
            http,
            "query($after: String) { tasks(first: 4, after: $after) { totalCount "
            "pageInfo { hasNextPage endCursor } edges { node { id } } } }",
            after=after,
        )
        page = body["data"]["tasks"]
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(seen) == len(set(seen)) == 6
    bad = await _gql(http, '{ tasks(after: "nope") { totalCount } }')
    assert bad["errors"][0]["extensions"]["field"] == "after"
    # Regression: a page too large was named "limit", an argument this query has not.
    for first in (501, -1):
        large = await _gql(http, f"{{ tasks(first: {first}) {{ totalCount }} }}")
        assert large["errors"][0]["extensions"]["field"] == "first"
        assert large["errors"][0]["message"] == "first must be between 0 and 500"


@pytest.mark.usefixtures("database")
async def test_review_flow_through_mutations(http: httpx.AsyncClient) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    body = await _gql(
        http,
        "mutation($i: CreateUnitTaskInput!) { createUnitTask(input: $i) { id status "
        "latestSession { id status } } }",
        i={"repositoryGroupId": str(group.id), "prompt": "Do it", "aiAgentType": "AMP"},
    )
    created = body["data"]["createUnitTask"]
    assert created["status"] == "IN_PROGRESS"
    assert created["latestSession"]["status"] == "QUEUED"
    task = await m.UnitTask.get(id=created["id"])
    await finish_latest(task.agent_task_id)
    body = await _gql(
        http,
        "mutation($id: ID!) { approveTask(id: $id) { ... on UnitTask { status } } }",
        id=created["id"],
    )
    assert body["data"]["approveTask"]["status"] == "APPROVED"
    body = await _gql(http, "mutation($id: ID!) { approveTask(id: $id) { id } }", id=created["id"])
    error = body["errors"][0]
    assert error["extensions"]["code"] == "FAILED_PRECONDITION"
    assert "approved" in error["message"]
    body = await _gql(
        http,
        "mutation($id: ID!) { updateTaskStatus(id: $id, status: PR_OPEN, "
        'linkedPrUrl: "https://github.com/a/b/pull/9") { status linkedPrUrl } }',
        id=created["id"],
    )
    assert body["data"]["updateTaskStatus"] == {
        "status": "PR_OPEN",
        "linkedPrUrl": "https://github.com/a/b/pull/9",
    }
    body = await _gql(http, "query($id: ID!) { task(id: $id) { __typename id } }", id=created["id"])
    assert body["data"]["task"]["__typename"] == "UnitTask"
    body = await _gql(http, "mutation($id: ID!) { deleteTask(id: $id) }", id=created["id"])
    assert body["data"]["deleteTask"] is True


# The console's board fragment (console/src/queries.ts), with the scheduling fields, and
# written with a named fragment, an inline fragment and aliases.
BOARD_FIELDS = """
fragment Summary on Task {
  __typename id title prompt
  spent: usage { costMicros inputTokens outputTokens }
  ... on UnitTask {
    unitStatus: status priority requiredLabels maxRunSeconds
    wait { reason since detail until position }
    latestSession { id status attempt error }
  }
  ... on CompositeTask {
    compositeStatus: status priority wait { reason position }
    latestSession { id status attempt }
    nodes { id planId state unitTask { id status priority latestSession { status } } }
  }
}
"""
BOARD = BOARD_FIELDS + "query { tasks(first: 100) { edges { node { ...Summary } } } }"
ONE = BOARD_FIELDS + "query($id: ID!) { task(id: $id) { ...Summary } }"


async def test_a_listed_task_reads_as_the_same_task_read_alone(http: httpx.AsyncClient) -> None:
    """The list prefetches what its items' fields read (one batch per loader) and the fields
    answer from it; a task read alone has its fields load on their own. Both must agree,
    field for field, over unit and composite tasks in every state the board shows."""
    await _populate(2)
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    finished = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="done one"
    )
    await finish_latest(finished.agent_task_id)
    running = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="running one"
    )
    await start_latest(running.agent_task_id)
    listed = await _gql(http, BOARD)
    assert "errors" not in listed, listed
    nodes = [e["node"] for e in listed["data"]["tasks"]["edges"]]
    assert len(nodes) == 6
    assert {n.get("unitStatus") or n.get("compositeStatus") for n in nodes} >= {
        "IN_PROGRESS",
        "IN_REVIEW",
    }
    for node in nodes:
        alone = await _gql(http, ONE, id=node["id"])
        assert "errors" not in alone, alone
        assert alone["data"]["task"] == node


async def test_a_list_that_asks_for_no_loaded_field_still_answers(
    http: httpx.AsyncClient,
) -> None:
    await _populate(1)
    plain = await _gql(http, "{ tasks { edges { node { id prompt } } } }")
    assert len(plain["data"]["tasks"]["edges"]) == 2
    skipped = await _gql(
        http,
        "query($no: Boolean!) { tasks { edges { node { id "
        "... on UnitTask { priority @include(if: $no) latestSession @skip(if: true) { id } } "
        "} } } }",
        no=False,
    )
    assert "errors" not in skipped, skipped
    assert all("priority" not in e["node"] for e in skipped["data"]["tasks"]["edges"])
