"""Unit tasks, composite tasks and their review workflow (DESIGN.md §5).

A task's work runs as AgentSessions of its AgentTask: queuing a session is what hands a
job to the workers. State changes are compare-and-set updates, so of two concurrent calls
on one task exactly one wins and the other gets FailedPrecondition naming both states.

One module per concern; callers import the names below from here:

- ``units``: unit tasks and the review workflow of every task (approve, reject, request
  changes, pr_open/done, retry, delete);
- ``composites``: composite tasks, their plans, plan → DAG of nodes, node progress;
- ``views``: the read models both APIs use (listing, node states, ``TaskBundle``);
- ``priority``: changing a task's priority;
- ``branches``: branch names;
- ``_shared``: the lookup, the compare-and-set move and run queuing the others share.
"""

from delidev.services.tasks._shared import Task, get_task, latest_sessions
from delidev.services.tasks.branches import branch_name_for, sanitize_branch
from delidev.services.tasks.composites import (
    advance_composite,
    create_composite_task,
    submit_plan,
)
from delidev.services.tasks.priority import set_task_priority
from delidev.services.tasks.units import (
    approve_task,
    create_unit_task,
    delete_task,
    finish_unit_task,
    get_unit_task,
    reject_task,
    request_changes,
    retry_task,
    update_task_status,
)
from delidev.services.tasks.views import (
    NodeState,
    NodeView,
    TaskBundle,
    agent_tasks_by_id,
    auto_fix_agent_task_ids,
    base_remotes_of,
    composite_nodes,
    list_tasks,
    load_task_bundle,
    load_task_view,
    node_state,
    task_waits,
)

__all__ = [
    "NodeState",
    "NodeView",
    "Task",
    "TaskBundle",
    "advance_composite",
    "agent_tasks_by_id",
    "approve_task",
    "auto_fix_agent_task_ids",
    "base_remotes_of",
    "branch_name_for",
    "composite_nodes",
    "create_composite_task",
    "create_unit_task",
    "delete_task",
    "finish_unit_task",
    "get_task",
    "get_unit_task",
    "latest_sessions",
    "list_tasks",
    "load_task_bundle",
    "load_task_view",
    "node_state",
    "reject_task",
    "request_changes",
    "retry_task",
    "sanitize_branch",
    "set_task_priority",
    "submit_plan",
    "task_waits",
    "update_task_status",
]
