"""Changing how soon a task's jobs are handed out (``SetPriority`` / ``setTaskPriority``).

The priority lives on the AgentTasks (the claim orders by ``agent_tasks.priority``): a unit
task's, or a composite's planning task and every node's, changed together.
"""

from __future__ import annotations

from uuid import UUID

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, NotFound
from delidev.services import common
from delidev.services.tasks._shared import C, S, Task, get_task, task_changed

_ENDED = frozenset({S.DONE, S.REJECTED, C.DONE, C.REJECTED})


async def set_task_priority(*, actor: Principal, task_id: UUID, priority: m.TaskPriority) -> Task:
    """Sets the priority of a task that has not ended (of a composite: also its nodes').

    Raises: NotFound, FailedPrecondition (the task is done or rejected).
    """
    task = await get_task(actor=actor, task_id=task_id)
    model = type(task)
    async with common.transaction():
        # Compare-and-set on the task row: a task that ends meanwhile keeps its priority.
        stamped = await model.filter(id=task.id, status__not_in=list(_ENDED)).update(
            **common.changed()
        )
        fresh = await model.get_or_none(id=task.id)
        if fresh is None:  # deleted since it was read
            raise NotFound(f"task {task.id} not found", field="task_id")
        if not stamped:
            kind = "composite task" if isinstance(fresh, m.CompositeTask) else "task"
            raise FailedPrecondition(
                f"{kind} {task.id} is {fresh.status.value}: the priority of a task that has "
                "ended cannot change"
            )
        nodes: list[m.UnitTask] = []
        if isinstance(fresh, m.UnitTask):
            agent_ids = [fresh.agent_task_id]
        else:
            nodes = await m.UnitTask.filter(composite_task_id=fresh.id)
            agent_ids = [fresh.planning_task_id, *(n.agent_task_id for n in nodes)]
        await m.AgentTask.filter(id__in=agent_ids).update(priority=priority.rank)
        task_changed(fresh)
        for node in nodes:
            task_changed(node)
    return fresh
