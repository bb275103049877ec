from __future__ import annotations

import pytest

from delidev.services import plans
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


def _bomb(levels: int, field: str = "title") -> str:
    """A plan whose ``field`` is an alias that expands to 9**levels strings."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append(f"tasks: [{{id: a, prompt: go, {field}: *l{levels - 1}}}]")
    return "\n".join(lines)


@pytest.mark.parametrize("field", ["title", "branchName", "prompt", "dependsOn"])
def test_yaml_aliases_are_refused_before_anything_is_built(field: str) -> None:
    """Nine levels: 387 million strings once expanded ("billion laughs")."""
    with pytest.raises(InvalidPlan) as info:
        parse_plan(_bomb(9, field))
    assert info.value.kind == "Malformed"
    assert "YAML alias at line 2" in info.value.message


def test_anchors_without_aliases_are_plain_values() -> None:
    (task,) = parse_plan("tasks:\n  - id: &x a\n    prompt: go")
    assert task.id == "a"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tasks: " + "[" * 5_000, "not valid YAML"),  # libyaml's own limit, or ours
        ("tasks: " + "[" * 17 + "]" * 17, f"deeper than {plans.MAX_PLAN_DEPTH} levels"),
        ("tasks:\n" + "".join(f"{' ' * i}- \n" for i in range(0, 40, 2)), "deeper than"),
        (
            "tasks:\n  - id: a\n    prompt: go\n    x: [" + "1, " * plans.MAX_PLAN_NODES + "]",
            f"more than {plans.MAX_PLAN_NODES} YAML nodes",
        ),
    ],
)
def test_deep_or_huge_plans_are_malformed(text: str, fragment: str) -> None:
    with pytest.raises(InvalidPlan) as info:
        parse_plan(text)
    assert info.value.kind == "Malformed"
    assert fragment in info.value.message


def test_a_plan_at_the_depth_limit_is_parsed() -> None:
    nested = "[" * (plans.MAX_PLAN_DEPTH - 3) + "]" * (plans.MAX_PLAN_DEPTH - 3)
    (task,) = parse_plan(f"tasks:\n  - id: a\n    prompt: go\n    extra: {nested}")
    assert task.id == "a"
