"""PLAN.yaml: parsing and validation of a composite task's plan.

A plan comes from a worker, so its YAML is walked as a stream of events (libyaml's
parser: iterative, and fast) before anything is built from it: an alias (``*name``) is
refused, since the plan format needs none and a few of them expand to billions of nodes
("billion laughs") when a value is later turned into text; so is nesting deeper than a
plan can use, or more nodes than its task limit allows. Only then is the document built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from delidev.errors import InvalidArgument

MAX_PLAN_TASKS = 1_000
MAX_PLAN_BYTES = 1_000_000
MAX_PLAN_DEPTH = 16
"""Deepest nesting of mappings and lists; a plan needs four (tasks, a task, dependsOn)."""
MAX_PLAN_NODES = 100 * MAX_PLAN_TASKS
"""YAML nodes (scalars, lists, mappings) in one plan: room for long dependsOn lists."""

# libyaml when PyYAML was built with it (its wheels are): the pure-Python parser needs
# seconds for a large plan, and minutes for a deep one.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class InvalidPlan(InvalidArgument):
    """A plan that cannot run; ``kind`` is EmptyPlan, DuplicateTaskId, InvalidDependency,
    EmptyPrompt, CyclicDependency, Malformed or (checked by the task service)
    InvalidBranchName."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}", field="plan_yaml")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class PlanTask:
    id: str
    title: str
    prompt: str
    branch_name: str | None
    depends_on: tuple[str, ...]


def parse_plan(text: str) -> list[PlanTask]:
    """The tasks of a PLAN.yaml, in file order. Raises: InvalidPlan."""
    if len(text.encode()) > MAX_PLAN_BYTES:
        raise InvalidPlan("Malformed", f"the plan is larger than {MAX_PLAN_BYTES} bytes")
    try:
        _check_shape(text)
        document = yaml.load(text, Loader=_Loader)  # a safe loader (see _Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidPlan("Malformed", f"the plan is not valid YAML{where}") from None
    if document is None:
        raise InvalidPlan("EmptyPlan", "the plan has no tasks")
    if not isinstance(document, dict) or not isinstance(document.get("tasks", []), list):
        raise InvalidPlan("Malformed", "the plan must be a mapping with a `tasks` list")
    raw_tasks = document.get("tasks") or []
    if not raw_tasks:
        raise InvalidPlan("EmptyPlan", "the plan has no tasks")
    if len(raw_tasks) > MAX_PLAN_TASKS:
        raise InvalidPlan("Malformed", f"the plan has more than {MAX_PLAN_TASKS} tasks")
    tasks = [_task(i, raw) for i, raw in enumerate(raw_tasks)]
    validate_plan(tasks)
    return tasks


def _check_shape(text: str) -> None:
    """Refuses aliases, deep nesting and too many nodes before the document is built.
    Raises: InvalidPlan, yaml.YAMLError."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            raise InvalidPlan(
                "Malformed", f"the plan uses a YAML alias{_at(event)}; plans take none"
            )
        if isinstance(event, yaml.NodeEvent):  # scalars, and the start of lists and mappings
            nodes += 1
            if nodes > MAX_PLAN_NODES:
                raise InvalidPlan(
                    "Malformed", f"the plan has more than {MAX_PLAN_NODES} YAML nodes"
                )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_PLAN_DEPTH:
                raise InvalidPlan(
                    "Malformed",
                    f"the plan nests lists and mappings deeper than {MAX_PLAN_DEPTH} levels"
                    f"{_at(event)}",
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _at(event: yaml.Event) -> str:
    mark = event.start_mark
    return f" at line {mark.line + 1}" if mark is not None else ""


def _task(index: int, raw: object) -> PlanTask:
    if not isinstance(raw, dict):
        raise InvalidPlan("Malformed", f"task #{index + 1} is not a mapping")
    task_id = raw.get("id")
    if not isinstance(task_id, str | int) or not str(task_id).strip():
        raise InvalidPlan("Malformed", f"task #{index + 1} has no id")
    task_id = str(task_id).strip()
    if len(task_id) > 255:
        raise InvalidPlan("Malformed", f"task id {task_id[:32]!r}… is longer than 255 characters")
    prompt = raw.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidPlan("Malformed", f"task {task_id!r}: prompt must be text")
    title = raw.get("title")
    branch = raw.get("branchName")
    depends = raw.get("dependsOn") or []
    if isinstance(depends, str):
        depends = [depends]
    if not isinstance(depends, list) or not all(isinstance(d, str | int) for d in depends):
        raise InvalidPlan("Malformed", f"task {task_id!r}: dependsOn must be a list of ids")
    return PlanTask(
        id=task_id,
        title=str(title).strip()[:255] if title else task_id,
        prompt=(prompt or "").strip(),
        branch_name=str(branch).strip() if branch else None,
        depends_on=tuple(dict.fromkeys(str(d).strip() for d in depends)),
    )


def validate_plan(tasks: Sequence[PlanTask]) -> None:
    """Raises: InvalidPlan (the first problem found, in a fixed order of checks)."""
    if not tasks:
        raise InvalidPlan("EmptyPlan", "the plan has no tasks")
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise InvalidPlan("DuplicateTaskId", f"task id {task.id!r} appears more than once")
        seen.add(task.id)
    for task in tasks:
        for dep in task.depends_on:
            if dep not in seen:
                raise InvalidPlan(
                    "InvalidDependency", f"task {task.id!r} depends on unknown task {dep!r}"
                )
    for task in tasks:
        if not task.prompt:
            raise InvalidPlan("EmptyPrompt", f"task {task.id!r} has an empty prompt")
    cycle = find_cycle(tasks)
    if cycle:
        raise InvalidPlan("CyclicDependency", "tasks depend on each other: " + " → ".join(cycle))


def find_cycle(tasks: Sequence[PlanTask]) -> list[str] | None:
    """A dependency cycle as a path (first id repeated at the end), or None."""
    deps = {t.id: t.depends_on for t in tasks}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in deps:
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                state[node] = 1
                path.append(node)
            children = deps[node]
            if index < len(children):
                stack.append((node, index + 1))
                child = children[index]
                if state.get(child) == 1:
                    return [*path[path.index(child) :], child]
                if not state.get(child):
                    stack.append((child, 0))
            else:
                state[node] = 2
                path.pop()
    return None
