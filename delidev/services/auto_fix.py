"""Auto-fix runs and the end of a unit task's pull request, as repository events report them.

The webhook receiver calls these after it checked the delivery (signature, replay) and the
repository's settings (auto-fix of review comments / CI failures on, the reviewer filter).

Decisions:

- **Which tasks.** Unit tasks whose linked PR is the event's PR (``pr_urls.pr_key``: scheme
  and host case, trailing slash, ``.git``, ``/files``, ``#...`` do not matter), in the
  repository's workspace, whose repository group contains the repository. A delivery for
  one user's repository never touches another user's task, even one linked to the same URL.
- **Which tasks get an auto-fix run.** Status ``pr_open`` with the PR not merged or closed.
  A PR is linked only by approved → pr_open, so a task in review or approved has none to fix,
  and a done or rejected task is finished.
- **How many.** At most ``max_runs`` (3) auto-fix runs per unit task, and never two at once:
  while one is queued or running (an automatic retry of it included), a trigger queues
  nothing and the reason is logged. The unit task's row is locked while this is decided, so
  two replicas receiving one trigger at once queue one run.
- **The run.** A new AgentTask linked by ``UnitTaskAutoFixTask``, with the agent type, model,
  scheduling (priority, labels, run time limit) and base remotes of the task's own AgentTask;
  one queued session of kind ``auto_fix``, claimed, waited for and budgeted as any job. It
  expects no secrets: a repository event starts it, and nobody is there to send them. Its
  job carries the unit task's id, title and branch (the worker pushes onto the PR's branch)
  and the auto-fix prompt (the comments or the failing check, the PR link, the task's
  title), bounded in size.
- **When it ends.** The unit task keeps its status (``pr_open``) and its PR: a successful
  auto-fix run never sends the task back to review (``sessions.complete_session`` moves a
  task only for runs of kind ``unit_task``); its reported end commit becomes the task's.
- **Closed PRs.** Merged → the task becomes ``done`` through ``finish_unit_task``, the rule
  UpdateStatus applies (approved | pr_open → done; a composite advances); in another state
  only the PR state is recorded. Closed unmerged → the PR state ``closed`` is recorded and
  the status is left alone. Either way the task's queued auto-fix runs stop and running ones
  are asked to, as the task owner's Stop would (a closed PR needs no fixing). Reopened
  after closing unmerged → the PR state is ``open`` again (a merged PR stays merged).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from tortoise.expressions import Q

from delidev import events, metrics
from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import FailedPrecondition, NotFound
from delidev.services import common
from delidev.services import sessions as session_service
from delidev.services import tasks as task_service
from delidev.services.pr_urls import pr_key
from delidev.services.tasks._shared import (
    ACTIVE,
    Scheduling,
    closed_composite,
    queue_session,
    task_changed,
)

log = logging.getLogger(__name__)

S = m.UnitTaskStatus
PR = m.PullRequestState
Trigger = m.AutoFixTrigger

MAX_AUTO_FIX_RUNS = 3
"""Auto-fix runs one unit task may get (FACTS.md: at most 3 attempts)."""
MAX_PROMPT_CHARS = 20_000
"""An auto-fix prompt is cut to about this many characters (and says so)."""
MAX_COMMENT_CHARS = 4_000
MAX_SUMMARY_CHARS = 12_000
MAX_LINE_CHARS = 300
"""Authors, paths, check names, titles and links: one line each, this long at most."""


@dataclass(frozen=True, slots=True)
class ReviewComment:
    author: str
    body: str
    url: str | None = None
    path: str | None = None
    line: int | None = None


# Entry points ------------------------------------------------------------------------------


async def review_feedback(
    *,
    repository_id: UUID,
    pr_url: str,
    comments: Sequence[ReviewComment],
    max_runs: int = MAX_AUTO_FIX_RUNS,
) -> list[UUID]:
    """Queues an auto-fix run for the review comments on each matching task's PR; the ids of
    the AgentTasks queued (none without comments). Raises: NotFound (the repository)."""
    if not comments:
        return []
    units = await matching_unit_tasks(repository_id=repository_id, pr_url=pr_url)
    queued = []
    for unit in units:
        prompt = review_prompt(unit, pr_url=pr_url, comments=comments)
        agent_id = await _queue_run(
            unit.id, trigger=Trigger.REVIEW_COMMENTS, prompt=prompt, max_runs=max_runs
        )
        if agent_id is not None:
            queued.append(agent_id)
    return queued


async def check_failed(
    *,
    repository_id: UUID,
    pr_url: str,
    check_name: str,
    summary: str,
    details_url: str | None,
    max_runs: int = MAX_AUTO_FIX_RUNS,
) -> list[UUID]:
    """Queues an auto-fix run for a failed check (run or pipeline) on each matching task's
    PR; the ids of the AgentTasks queued. Raises: NotFound (the repository)."""
    units = await matching_unit_tasks(repository_id=repository_id, pr_url=pr_url)
    queued = []
    for unit in units:
        prompt = check_prompt(
            unit, pr_url=pr_url, check_name=check_name, summary=summary, details_url=details_url
        )
        agent_id = await _queue_run(
            unit.id, trigger=Trigger.CHECK_FAILED, prompt=prompt, max_runs=max_runs
        )
        if agent_id is not None:
            queued.append(agent_id)
    return queued


async def pull_request_closed(*, repository_id: UUID, pr_url: str, merged: bool) -> list[UUID]:
    """Merged: each matching task becomes done (when approved or pr_open); closed unmerged: the
    PR state is recorded. The ids of the unit tasks changed (a redelivery changes none).
    Raises: NotFound (the repository)."""
    state = PR.MERGED if merged else PR.CLOSED
    changed = []
    for unit in await matching_unit_tasks(repository_id=repository_id, pr_url=pr_url):
        await _stop_auto_fix_runs(unit)
        fields: dict[str, object] = {"pr_state": state, "pr_state_changed_at": common.now()}
        if merged and unit.status in (S.APPROVED, S.PR_OPEN):
            try:
                await task_service.finish_unit_task(unit, **fields)
            except FailedPrecondition:  # it moved meanwhile: the PR state is still recorded
                pass
            except NotFound:  # deleted meanwhile
                continue
            else:
                changed.append(unit.id)
                continue
        unrecorded = Q(pr_state__isnull=True) | ~Q(pr_state=state)
        if await m.UnitTask.filter(unrecorded, id=unit.id).update(**common.changed(**fields)):
            task_changed(unit)
            changed.append(unit.id)
    return changed


async def pull_request_reopened(*, repository_id: UUID, pr_url: str) -> list[UUID]:
    """A PR closed unmerged is open again: its tasks' PR state says so (a merged PR cannot be
    reopened; its done task is left alone). The ids of the unit tasks changed (a redelivery
    changes none). Raises: NotFound (the repository)."""
    changed = []
    for unit in await matching_unit_tasks(repository_id=repository_id, pr_url=pr_url):
        reopened = await m.UnitTask.filter(id=unit.id, pr_state=PR.CLOSED).update(
            **common.changed(pr_state=PR.OPEN, pr_state_changed_at=common.now())
        )
        if reopened:
            task_changed(unit)
            changed.append(unit.id)
    return changed


async def _stop_auto_fix_runs(unit: m.UnitTask) -> None:
    """A closed PR needs no fixing: its task's queued auto-fix runs stop, running ones are
    asked to (as its owner's Stop would)."""
    fixes = await m.UnitTaskAutoFixTask.filter(unit_task_id=unit.id).values_list(
        "agent_task_id", flat=True
    )
    if not fixes:
        return
    active = await m.AgentSession.filter(
        agent_task_id__in=list(fixes), status__in=ACTIVE, stop_requested=False
    ).values_list("id", flat=True)
    if not active:
        return
    owner = await m.Workspace.get_or_none(id=unit.workspace_id).values_list("user_id", flat=True)
    actor = LOCAL_USER if owner is None else Principal(kind="user", user_id=UUID(str(owner)))
    for session_id in active:
        with contextlib.suppress(FailedPrecondition, NotFound):  # it ended meanwhile
            await session_service.stop_session(actor=actor, session_id=UUID(str(session_id)))
            log.info("auto-fix run %s of task %s stopped: its PR was closed", session_id, unit.id)


# Matching ----------------------------------------------------------------------------------


async def matching_unit_tasks(*, repository_id: UUID, pr_url: str) -> list[m.UnitTask]:
    """Unit tasks linked to the PR ``pr_url`` whose repository group contains the repository
    (in its workspace). Raises: NotFound (the repository)."""
    repository = await m.Repository.get_or_none(id=repository_id)
    if repository is None:
        raise NotFound(f"repository {repository_id} not found", field="repository_id")
    key = pr_key(pr_url)
    if key is None:
        return []
    return list(
        await m.UnitTask.filter(
            pr_key=key,
            workspace_id=repository.workspace_id,
            repository_group__members__repository_id=repository.id,
        )
        .distinct()
        .order_by("created_at")
    )


# Queuing -----------------------------------------------------------------------------------


async def _queue_run(
    unit_id: UUID, *, trigger: m.AutoFixTrigger, prompt: str, max_runs: int
) -> UUID | None:
    """A new auto-fix AgentTask with a queued run on the unit task, unless a rule says no
    (logged); its id."""
    async with common.transaction():
        # The row's lock serialises triggers of one task (across replicas on PostgreSQL;
        # SQLite's transactions are serial anyway).
        unit = await m.UnitTask.filter(id=unit_id).select_for_update().first()
        if unit is None:
            return None
        refusal = await _refusal(unit, max_runs=max_runs)
        if refusal is not None:
            log.info("no auto-fix run (%s) for task %s: %s", trigger.value, unit.id, refusal)
            return None
        own = await common.get_row(m.AgentTask, id=unit.agent_task_id)
        agent = Scheduling.of(own).agent_task(
            ai_agent_type=own.ai_agent_type,
            ai_agent_model=own.ai_agent_model,
            expects_secrets=False,
            workspace_id=unit.workspace_id,
        )
        await agent.save(force_create=True)
        remotes = await m.AgentTaskBaseRemote.filter(agent_task_id=own.id)
        await m.AgentTaskBaseRemote.bulk_create(
            [
                m.AgentTaskBaseRemote(
                    agent_task_id=agent.id,
                    git_remote_dir_path=r.git_remote_dir_path,
                    git_branch_name=r.git_branch_name,
                )
                for r in remotes
            ]
        )
        await m.UnitTaskAutoFixTask.create(
            unit_task_id=unit.id, agent_task_id=agent.id, trigger=trigger, prompt=prompt
        )
        await queue_session(agent, kind=m.JobKind.AUTO_FIX, attempt=1)
        task_changed(unit)
    log.info("auto-fix run (%s) queued for task %s", trigger.value, unit.id)
    metrics.auto_fix_queued(trigger.value)
    events.publish(events.JobQueued())
    return agent.id


async def _refusal(unit: m.UnitTask, *, max_runs: int) -> str | None:
    """Why the unit task gets no auto-fix run now, or None."""
    if unit.status != S.PR_OPEN:
        return f"it is {unit.status.value}, not pr_open"
    if unit.pr_state in (PR.MERGED, PR.CLOSED):
        return f"its pull request is {unit.pr_state.value}"
    closed = await closed_composite(unit)
    if closed is not None:
        return closed
    fixes = await m.UnitTaskAutoFixTask.filter(unit_task_id=unit.id).values_list(
        "agent_task_id", flat=True
    )
    if len(fixes) >= max_runs:
        return f"it had {len(fixes)} auto-fix runs, the most allowed ({max_runs})"
    if fixes and await m.AgentSession.exists(agent_task_id__in=list(fixes), status__in=ACTIVE):
        return "an auto-fix run of it is queued or running"
    return None


# Prompts -----------------------------------------------------------------------------------


def _line(text: str | None, limit: int = MAX_LINE_CHARS) -> str:
    """One line of outside text: whitespace and control characters folded, bounded."""
    folded = re.sub(r"[\s\x00-\x1f\x7f]+", " ", text or "").strip()
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def _cut(text: str, limit: int, what: str) -> str:
    """``text`` up to ``limit`` characters, saying so when it was cut."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[{what} cut: {len(text) - limit} more characters not shown]"


def _header(unit: m.UnitTask, pr_url: str) -> list[str]:
    """The task (its title, else its prompt's first line), the PR and the branch to push to."""
    title = unit.title or next(iter(unit.prompt.strip().splitlines()), "")
    lines = [
        "Fix the pull request of this task.",
        "",
        f"Task: {_line(title)}",
        f"Pull request: {_line(pr_url, 2048)}",
    ]
    if unit.branch_name:
        lines.append(
            f"Branch: {_line(unit.branch_name)} (commit and push onto this branch; "
            "do not open another pull request)"
        )
    return [*lines, ""]


def review_prompt(unit: m.UnitTask, *, pr_url: str, comments: Sequence[ReviewComment]) -> str:
    """The prompt of an auto-fix run for review comments, at most about MAX_PROMPT_CHARS."""
    parts = [*_header(unit, pr_url), f"## Review comments to address ({len(comments)})", ""]
    size = sum(len(p) + 1 for p in parts)
    shown = 0
    for i, comment in enumerate(comments, 1):
        where = _line(comment.path) if comment.path else ""
        if where and comment.line is not None:
            where = f"{where}:{comment.line}"
        head = f"### {i}. {_line(comment.author) or 'someone'}" + (f" on {where}" if where else "")
        block = [head, _cut(comment.body, MAX_COMMENT_CHARS, "comment")]
        if comment.url:
            block.append(f"({_line(comment.url, 2048)})")
        text = "\n".join(block) + "\n"
        if size + len(text) > MAX_PROMPT_CHARS:
            break
        parts.append(text)
        size += len(text) + 1
        shown += 1
    if shown < len(comments):
        parts.append(
            f"[{len(comments) - shown} more comment(s) not shown: the prompt is limited to "
            f"{MAX_PROMPT_CHARS} characters; read them on the pull request]"
        )
    return "\n".join(parts).rstrip() + "\n"


def check_prompt(
    unit: m.UnitTask, *, pr_url: str, check_name: str, summary: str, details_url: str | None
) -> str:
    """The prompt of an auto-fix run for a failed check, at most about MAX_PROMPT_CHARS."""
    parts = [
        *_header(unit, pr_url),
        f"## Failing check: {_line(check_name) or 'unnamed check'}",
        "",
        "Make this check pass.",
    ]
    if details_url:
        parts.append(f"Details: {_line(details_url, 2048)}")
    parts += ["", _cut(summary or "(the check gave no output)", MAX_SUMMARY_CHARS, "output")]
    return "\n".join(parts).rstrip() + "\n"
