"""The app's background sweep, driven by an injected time instead of waiting for it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.background import Sweeper
from delidev.services import tasks, workers
from tests.factories import make_group, make_repository, make_workspace


async def test_one_pass_of_the_apps_sweeper_as_of_a_later_time(app: Any) -> None:
    sweeper: Sweeper = app.state.sweeper
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    registered = await workers.register_worker(name="bg", endpoint_url="http://w:54872")
    worker = registered.worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    await sweeper.sweep()  # now: the worker has just beaten, nothing changes
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.BUSY

    later = dt.datetime.now(dt.UTC) + sweeper.interval * workers.MISSED_BEATS * 2
    await sweeper.sweep(later)
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.UNHEALTHY
    lost = await m.AgentSession.get(id=job.session.id)
    assert lost.status == m.AgentSessionStatus.LOST
    runs = await m.AgentSession.filter(agent_task_id=task.agent_task_id).order_by("attempt")
    assert [r.status for r in runs] == [m.AgentSessionStatus.LOST, m.AgentSessionStatus.QUEUED]
