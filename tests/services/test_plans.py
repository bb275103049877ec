from __future__ import annotations

import pytest

from delidev.services.plans import InvalidPlan, parse_plan


def test_parse_a_diamond() -> None:
    tasks = parse_plan(
        """
tasks:
  - id: db
    prompt: "Create the schema"
  - id: api
    title: Build API
    prompt: Build it
    branchName: feat/api
    dependsOn: [db]
  - id: ui
    prompt: UI
    dependsOn: [db]
  - id: e2e
    prompt: Tests
    dependsOn: [api, ui, api]
"""
    )
    assert [t.id for t in tasks] == ["db", "api", "ui", "e2e"]
    assert tasks[0].title == "db"
    assert (tasks[1].title, tasks[1].branch_name) == ("Build API", "feat/api")
    assert tasks[3].depends_on == ("api", "ui")


def test_a_long_chain_of_200() -> None:
    lines = ["tasks:"]
    for i in range(200):
        lines.append(f"  - id: t{i}\n    prompt: step {i}")
        if i:
            lines.append(f"    dependsOn: [t{i - 1}]")
    tasks = parse_plan("\n".join(lines))
    assert len(tasks) == 200


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", "EmptyPlan"),
        ("tasks: []", "EmptyPlan"),
        ("tasks:\n  - id: a\n    prompt: x\n  - id: a\n    prompt: y", "DuplicateTaskId"),
        ("tasks:\n  - id: a\n    prompt: x\n    dependsOn: [b]", "InvalidDependency"),
        ("tasks:\n  - id: a\n    prompt: '   '", "EmptyPrompt"),
        ("tasks:\n  - id: a\n    prompt: x\n    dependsOn: [a]", "CyclicDependency"),
        (
            "tasks:\n  - id: a\n    prompt: x\n    dependsOn: [c]\n  - id: b\n    prompt: y\n"
            "    dependsOn: [a]\n  - id: c\n    prompt: z\n    dependsOn: [b]",
            "CyclicDependency",
        ),
        ("tasks: [", "Malformed"),
        ("- just a list", "Malformed"),
        ("tasks:\n  - prompt: x", "Malformed"),
        ("tasks:\n  - id: a\n    prompt: x\n    dependsOn: {b: 1}", "Malformed"),
    ],
)
def test_invalid_plans(text: str, kind: str) -> None:
    with pytest.raises(InvalidPlan) as info:
        parse_plan(text)
    assert info.value.kind == kind
    assert info.value.message.startswith(kind)
    assert info.value.field == "plan_yaml"


def test_cycle_message_names_the_path() -> None:
    with pytest.raises(InvalidPlan) as info:
        parse_plan(
            "tasks:\n  - id: a\n    prompt: x\n    dependsOn: [b]\n"
            "  - id: b\n    prompt: y\n    dependsOn: [a]"
        )
    assert "a → b → a" in info.value.message or "b → a → b" in info.value.message
