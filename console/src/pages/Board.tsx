// The board: a workspace's tasks by status, live through `taskUpdated`; composite tasks
// show their plan's nodes. Node tasks appear inside their composite, not on their own.
import { useEffect, useMemo, useState } from "preact/hooks";
import { AiAgentType } from "../gen/delidev/v1/common_pb";
import { TaskPriority } from "../gen/delidev/v1/task_pb";
import { errorText, gql, reconnections, subscribe, taskApi } from "../api";
import { AGENT_TYPES, PRIORITIES, ago, label, titleOf } from "../format";
import {
  TASKS,
  TASK_UPDATED,
  WORKSPACE_SETUP,
  type Group,
  type Repository,
  type TaskSummary,
  normalize,
} from "../queries";
import { go, href } from "../router";
import { useStore } from "../store";
import { dollars } from "../money";
import { Dag } from "./Dag";

const COLUMNS: { title: string; statuses: string[] }[] = [
  { title: "In progress", statuses: ["IN_PROGRESS", "PLANNING"] },
  { title: "Needs review", statuses: ["IN_REVIEW", "PENDING_APPROVAL"] },
  { title: "Approved / PR open", statuses: ["APPROVED", "PR_OPEN"] },
  { title: "Done", statuses: ["DONE"] },
  { title: "Rejected", statuses: ["REJECTED"] },
];
const STATUSES = [...new Set(COLUMNS.flatMap((c) => c.statuses))];
const MAX_TASKS = 2000; // pages of 100; a board of more is a list to search, not to look at

interface Setup {
  repositories: Repository[];
  repositoryGroups: Group[];
}

export function groupName(g: Group, repos: Repository[]): string {
  if (g.name) return g.name;
  return g.repositoryIds.map((id) => repos.find((r) => r.id === id)?.name ?? id).join(" + ");
}

export function Board({ workspaceId }: { workspaceId: string }) {
  const [tasks, setTasks] = useState<Map<string, TaskSummary> | null>(null);
  const [setup, setSetup] = useState<Setup | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [groupFilter, setGroupFilter] = useState("");
  const [statusFilter, setStatusFilter] = useState("");
  const [creating, setCreating] = useState(false);
  const back = useStore(reconnections);

  useEffect(() => {
    let live = true;
    setTasks(null);
    const load = () =>
      (async () => {
        const s = await gql<{ workspace: Setup }>(WORKSPACE_SETUP, { id: workspaceId });
        if (live) setSetup(s.workspace);
        const all = new Map<string, TaskSummary>();
        let after: string | null = null;
        do {
          const page: {
            tasks: { pageInfo: { hasNextPage: boolean; endCursor: string | null }; edges: { node: TaskSummary }[] };
          } = await gql(TASKS, { workspaceId, after });
          for (const e of page.tasks.edges) all.set(e.node.id, normalize(e.node));
          after = page.tasks.pageInfo.hasNextPage ? page.tasks.pageInfo.endCursor : null;
        } while (after && all.size < MAX_TASKS);
        if (live) {
          setTasks(all);
          setError(null);
        }
      })().catch((e) => live && setError(errorText(e)));
    void load();
    const stop = subscribe<{ taskUpdated: { taskId: string; deleted: boolean; task: TaskSummary | null } }>(
      TASK_UPDATED,
      { workspaceId },
      ({ taskUpdated: u }) =>
        setTasks((current) => {
          const next = new Map(current ?? []);
          if (u.deleted || !u.task) next.delete(u.taskId);
          else next.set(u.taskId, normalize(u.task));
          return next;
        }),
      (message) => setError(message),
      () => void load(), // the server may have missed changes: show them all again
    );
    return () => {
      live = false;
      stop();
    };
  }, [workspaceId, back]);

  const shown = useMemo(
    () =>
      [...(tasks?.values() ?? [])]
        .filter((t) => !t.compositeTaskId)
        .filter((t) => !groupFilter || t.repositoryGroupId === groupFilter)
        .filter((t) => !statusFilter || t.status === statusFilter)
        .sort((a, b) => b.createdAt.localeCompare(a.createdAt)),
    [tasks, groupFilter, statusFilter],
  );
  const repos = setup?.repositories ?? [];
  const groups = setup?.repositoryGroups ?? [];

  return (
    <section class="board">
      <div class="page-head">
        <h1>Board</h1>
        <div class="filters">
          <label>
            Group{" "}
            <select value={groupFilter} onChange={(e) => setGroupFilter((e.target as HTMLSelectElement).value)}>
              <option value="">all</option>
              {groups.map((g) => (
                <option value={g.id}>{groupName(g, repos)}</option>
              ))}
            </select>
          </label>
          <label>
            Status{" "}
            <select value={statusFilter} onChange={(e) => setStatusFilter((e.target as HTMLSelectElement).value)}>
              <option value="">all</option>
              {STATUSES.map((s) => (
                <option value={s}>{label(s)}</option>
              ))}
            </select>
          </label>
          <button class="primary" onClick={() => setCreating(!creating)} aria-expanded={creating}>
            New task
          </button>
        </div>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {creating && <NewTask groups={groups} repos={repos} onDone={() => setCreating(false)} />}
      {tasks === null ? (
        <p class="muted">Loading tasks…</p>
      ) : (
        <div class="columns">
          {COLUMNS.map((c) => {
            const inColumn = shown.filter((t) => c.statuses.includes(t.status));
            return (
              <section class="column" aria-label={c.title} data-testid={`column-${c.statuses[0]}`}>
                <h2>
                  {c.title} <span class="count">{inColumn.length}</span>
                </h2>
                {inColumn.map((t) => (
                  <TaskCard key={t.id} task={t} />
                ))}
              </section>
            );
          })}
        </div>
      )}
    </section>
  );
}

function TaskCard({ task }: { task: TaskSummary }) {
  const s = task.latestSession;
  return (
    <a class="card task-card" href={href({ page: "task", id: task.id })} data-testid="task-card" data-status={task.status}>
      <span class="title">{titleOf(task)}</span>
      <span class="meta">
        <span class={`badge status-${task.status.toLowerCase()}`}>{label(task.status)}</span>
        {task.__typename === "CompositeTask" && <span class="badge">composite</span>}
        {task.priority !== "NORMAL" && <span class="badge">{label(task.priority)}</span>}
        {s && <span class={`badge session-${s.status.toLowerCase()}`}>run {label(s.status)}</span>}
        {task.usage.costMicros > 0 && <span class="badge" title="cost so far">{dollars(task.usage.costMicros)}</span>}
        <span class="muted">{ago(task.updatedAt)}</span>
      </span>
      {task.wait && (
        <span class="wait" title={task.wait.detail}>
          waiting: {label(task.wait.reason)}
          {task.wait.position != null && ` (#${task.wait.position})`}
          {task.wait.detail && ` — ${task.wait.detail}`}
        </span>
      )}
      {task.nodes && task.nodes.length > 0 && <Dag nodes={task.nodes} compact />}
    </a>
  );
}

function NewTask({ groups, repos, onDone }: { groups: Group[]; repos: Repository[]; onDone: () => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  if (groups.length === 0) {
    return (
      <p class="card">
        A task runs on a repository group. <a href="#/setup">Add a repository and a group</a> first.
      </p>
    );
  }
  const submit = async (e: Event) => {
    e.preventDefault();
    const f = new FormData(e.target as HTMLFormElement);
    const common = {
      repositoryGroupId: String(f.get("group")),
      prompt: String(f.get("prompt")),
      title: String(f.get("title") || "") || undefined,
      priority: TaskPriority[String(f.get("priority")) as keyof typeof TaskPriority],
    };
    const agent = AiAgentType[String(f.get("agent")) as keyof typeof AiAgentType];
    setBusy(true);
    setError(null);
    try {
      const r =
        f.get("composite") === "on"
          ? await taskApi.createComposite({ ...common, executionAgentType: agent, planningAgentType: agent })
          : await taskApi.createUnit({ ...common, aiAgentType: agent });
      const task = r.task?.task.value;
      onDone();
      if (task) go({ page: "task", id: task.id });
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card new-task" onSubmit={submit} aria-label="New task">
      <label>
        Repository group
        <select name="group" required>
          {groups.map((g) => (
            <option value={g.id}>{groupName(g, repos)}</option>
          ))}
        </select>
      </label>
      <label>
        Title <input name="title" maxLength={500} />
      </label>
      <label class="wide">
        Prompt <textarea name="prompt" required rows={4} />
      </label>
      <label>
        Agent
        <select name="agent">
          {AGENT_TYPES.map((a) => (
            <option value={a}>{label(a)}</option>
          ))}
        </select>
      </label>
      <label>
        Priority
        <select name="priority" defaultValue="NORMAL">
          {PRIORITIES.map((p) => (
            <option value={p} selected={p === "NORMAL"}>
              {label(p)}
            </option>
          ))}
        </select>
      </label>
      <label class="check">
        <input type="checkbox" name="composite" /> Composite (an agent plans several tasks first)
      </label>
      <div class="actions">
        <button type="submit" class="primary" disabled={busy}>
          Create task
        </button>
        <button type="button" onClick={onDone}>
          Cancel
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}
