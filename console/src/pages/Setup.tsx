// Setup: workspaces, repositories (added by URL), repository groups and todo items.
import { useEffect, useState } from "preact/hooks";
import { allPages, errorText, gql, groupApi, repositoryApi, timestampDate, todoApi, workspaceApi } from "../api";
import { BudgetPeriod, type Workspace as ProtoWorkspace } from "../gen/delidev/v1/workspace_pb";
import { dollars, parseDollars } from "../money";
import { TodoItemSource, TodoItemStatus } from "../gen/delidev/v1/todo_pb";
import { label, webLink } from "../format";
import { TODOS, WORKSPACE_SETUP, type Group, type Repository, type Todo, type Workspace } from "../queries";
import { useStore } from "../store";
import { loadWorkspaces, workspaceId, workspaces } from "../workspace";
import { groupName } from "./Board";

interface Detail extends Workspace {
  repositories: Repository[];
  repositoryGroups: Group[];
}

function field(form: HTMLFormElement, name: string): string {
  return String(new FormData(form).get(name) ?? "").trim();
}

export function Setup() {
  const chosen = useStore(workspaceId);
  const list = useStore(workspaces);
  const [detail, setDetail] = useState<Detail | null>(null);
  const [todos, setTodos] = useState<Todo[]>([]);
  const [error, setError] = useState<string | null>(null);

  const reload = async () => {
    if (!chosen) {
      setDetail(null);
      return;
    }
    try {
      const [d, t] = await Promise.all([
        gql<{ workspace: Detail }>(WORKSPACE_SETUP, { id: chosen }),
        allPages(
          async (offset) =>
            (await gql<{ todoItems: { totalCount: number; items: Todo[] } }>(TODOS, { workspaceId: chosen, offset }))
              .todoItems,
        ),
      ]);
      setDetail(d.workspace);
      setTodos(t);
    } catch (e) {
      setError(errorText(e));
    }
  };
  useEffect(() => {
    void reload();
  }, [chosen]);

  /** Runs a change, shows the server's refusal if any, and re-reads on success. */
  const act = (change: () => Promise<unknown>, form?: HTMLFormElement) => async () => {
    setError(null);
    try {
      await change();
      form?.reset();
      await reload();
    } catch (e) {
      setError(errorText(e));
    }
  };

  return (
    <section class="setup">
      <h1>Setup</h1>
      {error && (
        <p class="error" role="alert" data-testid="setup-error">
          {error}
        </p>
      )}
      <h2>Workspaces</h2>
      <ul class="plain">
        {(list ?? []).map((w) => (
          <li>
            <button class="link" onClick={() => workspaceId.set(w.id)} aria-pressed={w.id === chosen}>
              {w.name}
            </button>
            {w.id === chosen && <span class="muted"> (shown)</span>}
          </li>
        ))}
      </ul>
      <form
        aria-label="New workspace"
        onSubmit={(e) => {
          e.preventDefault();
          const form = e.target as HTMLFormElement;
          void act(async () => {
            const r = await workspaceApi.create({ name: field(form, "name") });
            await loadWorkspaces();
            if (r.workspace) workspaceId.set(r.workspace.id);
          }, form)();
        }}
      >
        <input name="name" aria-label="Workspace name" placeholder="Workspace name" required />
        <button type="submit">Create workspace</button>
      </form>

      {detail && (
        <>
          <h2>Repositories of {detail.name}</h2>
          <ul class="plain">
            {detail.repositories.map((r) => (
              <li data-testid="repository">
                <strong>{r.name}</strong> <span class="muted">{r.remoteUrl}</span>{" "}
                <button class="link danger" onClick={act(() => repositoryApi.remove({ repositoryId: r.id }))}>
                  remove
                </button>
              </li>
            ))}
          </ul>
          <form
            aria-label="Add repository"
            onSubmit={(e) => {
              e.preventDefault();
              const form = e.target as HTMLFormElement;
              void act(() => repositoryApi.add({ workspaceId: detail.id, remoteUrl: field(form, "url") }), form)();
            }}
          >
            <input name="url" aria-label="Repository URL" placeholder="https://github.com/owner/repo" required />
            <button type="submit">Add repository</button>
          </form>

          <h2>Repository groups</h2>
          <ul class="plain">
            {detail.repositoryGroups.map((g) => (
              <li data-testid="group">
                <strong>{groupName(g, detail.repositories)}</strong>{" "}
                {g.defaultRequiredLabels.length > 0 && <span class="muted">needs {g.defaultRequiredLabels.join(", ")} </span>}
                <button class="link danger" onClick={act(() => groupApi.delete({ groupId: g.id }))}>
                  delete
                </button>
              </li>
            ))}
          </ul>
          {detail.repositories.length > 0 && (
            <form
              aria-label="New repository group"
              onSubmit={(e) => {
                e.preventDefault();
                const form = e.target as HTMLFormElement;
                const ids = new FormData(form).getAll("repo").map(String);
                const labels = field(form, "labels").split(",").map((s) => s.trim()).filter(Boolean);
                void act(
                  () =>
                    groupApi.create({
                      workspaceId: detail.id,
                      name: field(form, "name") || undefined,
                      repositoryIds: ids,
                      defaultRequiredLabels: labels,
                    }),
                  form,
                )();
              }}
            >
              <input name="name" aria-label="Group name" placeholder="Group name (optional)" />
              <fieldset>
                <legend>Repositories</legend>
                {detail.repositories.map((r) => (
                  <label class="check">
                    <input type="checkbox" name="repo" value={r.id} /> {r.name}
                  </label>
                ))}
              </fieldset>
              <input name="labels" aria-label="Required labels" placeholder="required labels, e.g. os=linux" />
              <button type="submit">Create group</button>
            </form>
          )}

          <h2>Todo items</h2>
          <ul class="plain">
            {todos.map((t) => {
              const url = t.data.__typename === "IssueTriageData" ? t.data.issueUrl : t.data.prUrl;
              const title = t.data.__typename === "IssueTriageData" ? t.data.issueTitle : t.data.prTitle;
              return (
                <li data-testid="todo" data-status={t.status}>
                  <span class="badge">{label(t.type)}</span>{" "}
                  {webLink(url) ? (
                    <a href={webLink(url)} target="_blank" rel="noopener noreferrer">
                      {title}
                    </a>
                  ) : (
                    <span data-testid="not-a-link">{title}</span>
                  )}{" "}
                  <span class="badge">{label(t.status)}</span>{" "}
                  {t.status === "PENDING" && (
                    <button class="link" onClick={act(() => todoApi.updateStatus({ itemId: t.id, status: TodoItemStatus.IN_PROGRESS }))}>
                      start
                    </button>
                  )}
                  {(t.status === "PENDING" || t.status === "IN_PROGRESS") && (
                    <>
                      {" "}
                      <button class="link" onClick={act(() => todoApi.updateStatus({ itemId: t.id, status: TodoItemStatus.COMPLETED }))}>
                        complete
                      </button>{" "}
                      <button class="link danger" onClick={act(() => todoApi.dismiss({ itemId: t.id }))}>
                        dismiss
                      </button>
                    </>
                  )}
                </li>
              );
            })}
          </ul>
          {detail.repositories.length > 0 && (
            <form
              aria-label="New todo item"
              onSubmit={(e) => {
                e.preventDefault();
                const form = e.target as HTMLFormElement;
                const kind = field(form, "kind");
                const url = field(form, "url");
                const title = field(form, "title");
                void act(
                  () =>
                    todoApi.create({
                      repositoryId: field(form, "repo"),
                      source: TodoItemSource.MANUAL,
                      data:
                        kind === "pr"
                          ? { case: "prReview", value: { prUrl: url, prTitle: title, changedFilesCount: 0 } }
                          : { case: "issueTriage", value: { issueUrl: url, issueTitle: title } },
                    }),
                  form,
                )();
              }}
            >
              <select name="kind" aria-label="Kind">
                <option value="issue">issue triage</option>
                <option value="pr">pull request review</option>
              </select>
              <select name="repo" aria-label="Repository">
                {detail.repositories.map((r) => (
                  <option value={r.id}>{r.name}</option>
                ))}
              </select>
              <input name="url" aria-label="Item URL" placeholder="https://github.com/owner/repo/issues/1" required />
              <input name="title" aria-label="Item title" placeholder="Title" required />
              <button type="submit">Add todo</button>
            </form>
          )}

          <Budgets workspaceId={detail.id} />

          <h2>Danger zone</h2>
          <button
            class="danger"
            onClick={act(async () => {
              if (!confirm(`Delete workspace ${detail.name} with its repositories and tasks?`)) return;
              await workspaceApi.delete({ workspaceId: detail.id });
              workspaceId.set(null);
              await loadWorkspaces();
            })}
          >
            Delete workspace {detail.name}
          </button>
        </>
      )}
    </section>
  );
}

/** The workspace's budgets and what it spent (Connect: WorkspaceService.Get / GetUsage). */
function Budgets({ workspaceId }: { workspaceId: string }) {
  const [ws, setWs] = useState<ProtoWorkspace | null>(null);
  const [spent, setSpent] = useState<bigint | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState(false);
  const load = async () => {
    try {
      const [got, used] = await Promise.all([
        workspaceApi.get({ workspaceId }),
        workspaceApi.getUsage({ workspaceId, days: 30 }),
      ]);
      setWs(got.workspace ?? null);
      setSpent(used.total?.costMicros ?? 0n);
    } catch (e) {
      setError(errorText(e));
    }
  };
  useEffect(() => {
    void load();
  }, [workspaceId]);
  if (!ws) return null;
  const submit = async (e: Event) => {
    e.preventDefault();
    const form = e.target as HTMLFormElement;
    const monthly = field(form, "monthly");
    const task = field(form, "task");
    const monthlyMicros = monthly ? parseDollars(monthly) : 0n;
    const taskMicros = task ? parseDollars(task) : 0n;
    if (monthlyMicros === null || taskMicros === null) {
      setError("A budget is an amount in dollars, like 250 or 12.50");
      return;
    }
    setError(null);
    setSaved(false);
    try {
      const r = await workspaceApi.update({
        workspaceId,
        monthlyBudgetMicros: monthlyMicros,
        taskBudgetMicros: taskMicros,
        budgetPeriod: Number(field(form, "period")) as BudgetPeriod,
        budgetWarningPercent: Number(field(form, "percent")),
      });
      setWs(r.workspace ?? ws);
      setSaved(true);
    } catch (err) {
      setError(errorText(err));
    }
  };
  return (
    <section aria-label="Budgets">
      <h2>Budgets</h2>
      <p data-testid="spent">
        Spent in the last 30 days: <strong>{dollars(spent ?? 0n)}</strong>
        {ws.budgetBlockedUntil && (
          <span class="error">
            {" "}
            — over budget: new runs wait until{" "}
            {timestampDate(ws.budgetBlockedUntil).toLocaleString()} or a higher budget
          </span>
        )}
      </p>
      <form onSubmit={(e) => void submit(e)} aria-label="Budgets">
        <label>
          Budget{" "}
          <input
            name="monthly"
            aria-label="Workspace budget (USD)"
            placeholder="none"
            defaultValue={ws.monthlyBudgetMicros ? dollars(ws.monthlyBudgetMicros, true).slice(1) : ""}
            inputMode="decimal"
          />
        </label>
        <select name="period" aria-label="Budget period" defaultValue={String(ws.budgetPeriod || BudgetPeriod.MONTH)}>
          <option value={String(BudgetPeriod.MONTH)} selected={ws.budgetPeriod !== BudgetPeriod.ROLLING_30_DAYS}>
            per calendar month
          </option>
          <option value={String(BudgetPeriod.ROLLING_30_DAYS)} selected={ws.budgetPeriod === BudgetPeriod.ROLLING_30_DAYS}>
            per 30 days
          </option>
        </select>
        <label>
          Per task{" "}
          <input
            name="task"
            aria-label="Task budget (USD)"
            placeholder="none"
            defaultValue={ws.taskBudgetMicros ? dollars(ws.taskBudgetMicros, true).slice(1) : ""}
            inputMode="decimal"
          />
        </label>
        <label>
          Warn at{" "}
          <input
            name="percent"
            aria-label="Warning threshold (%)"
            type="number"
            min={1}
            max={100}
            defaultValue={String(ws.budgetWarningPercent || 80)}
          />
          %
        </label>
        <button type="submit">Save budgets</button>
        {saved && <span class="muted">saved</span>}
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </section>
  );
}
