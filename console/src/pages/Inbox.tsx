// "Needs you": the agents' pending questions across the workspace, answered in place, and
// the composite plans waiting for approval. A new question raises a browser notification
// (when the user allowed them) wherever the console is.
import { useState } from "preact/hooks";
import { allPages, errorText, gql, sessionApi, subscribe, taskApi } from "../api";
import { ago, titleOf } from "../format";
import {
  PENDING_PLANS,
  PENDING_TTY,
  TASK_UPDATED,
  TTY_REQUESTED,
  type Estimate,
  type TaskSummary,
  type TtyRequest,
  normalize,
} from "../queries";
import { estimateText } from "../money";
import { href } from "../router";
import { store, useStore } from "../store";

const questions = store<TtyRequest[]>([]);
const plans = store<(TaskSummary & { planYaml?: string | null; estimate?: Estimate | null })[]>([]);
export const pendingCount = store(0);

function recount(): void {
  pendingCount.set(questions.get().length + plans.get().length);
}
questions.subscribe(recount);
plans.subscribe(recount);

// The inbox shows at most this many questions and as many plans. A page may hold fewer items
// than asked when they are long (the server cuts pages by their text), so both are paged.
const MAX_SHOWN = 500;

type Plan = TaskSummary & { planYaml?: string | null; estimate?: Estimate | null };

async function pendingQuestions(workspaceId: string): Promise<TtyRequest[]> {
  return allPages(
    async (offset) =>
      (
        await gql<{ ttyInputRequests: { totalCount: number; items: TtyRequest[] } }>(PENDING_TTY, {
          workspaceId,
          offset,
        })
      ).ttyInputRequests,
    MAX_SHOWN,
  );
}

async function pendingPlans(workspaceId: string): Promise<Plan[]> {
  const all: Plan[] = [];
  let after: string | null = null;
  do {
    const page: {
      tasks: { pageInfo: { hasNextPage: boolean; endCursor: string | null }; edges: { node: Plan }[] };
    } = await gql(PENDING_PLANS, { workspaceId, after });
    all.push(...page.tasks.edges.map((e) => normalize(e.node)));
    after = page.tasks.pageInfo.hasNextPage ? page.tasks.pageInfo.endCursor : null;
  } while (after && all.length < MAX_SHOWN);
  return all;
}

async function reload(workspaceId: string): Promise<void> {
  const [tty, pending] = await Promise.all([pendingQuestions(workspaceId), pendingPlans(workspaceId)]);
  questions.set(tty);
  plans.set(pending);
}

function notify(q: TtyRequest): void {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const n = new Notification("An agent needs your answer", { body: q.prompt, tag: q.id });
    n.onclick = () => {
      focus();
      location.hash = "#/inbox";
    };
  } catch {
    // some browsers only notify from a service worker; the inbox count still shows it
  }
}

/** Follows the workspace's questions and plans; returns the function that stops it. */
export function watchInbox(workspaceId: string): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(() => void reload(workspaceId).catch(() => {}), 250);
  };
  void reload(workspaceId).catch(() => {});
  const stopQuestions = subscribe<{ ttyInputRequested: TtyRequest }>(
    TTY_REQUESTED,
    { workspaceId },
    ({ ttyInputRequested: q }) => {
      const rest = questions.get().filter((x) => x.id !== q.id);
      if (q.status === "PENDING") {
        questions.set([q, ...rest]);
        notify(q);
      } else {
        questions.set(rest);
      }
    },
    undefined,
    later,
  );
  // Answers given elsewhere, expiries, plans reaching or leaving approval: all change a task.
  // A subscription that may have missed some is started again, and the inbox reloaded.
  const stopTasks = subscribe(TASK_UPDATED, { workspaceId }, later, undefined, later);
  return () => {
    clearTimeout(timer);
    stopQuestions();
    stopTasks();
  };
}

export function Inbox({ workspaceId: _ }: { workspaceId: string }) {
  const list = useStore(questions);
  const pending = useStore(plans);
  const [permission, setPermission] = useState(
    "Notification" in window ? Notification.permission : "unsupported",
  );
  return (
    <section class="inbox">
      <div class="page-head">
        <h1>Needs you</h1>
        {permission === "default" && (
          <button onClick={() => void Notification.requestPermission().then(setPermission)}>
            Notify me of new questions
          </button>
        )}
      </div>
      <h2>Questions from agents</h2>
      {list.length === 0 ? (
        <p class="muted" data-testid="no-questions">
          No agent is waiting for an answer.
        </p>
      ) : (
        <ul class="cards">
          {list.map((q) => (
            <li key={q.id}>
              <Question q={q} />
            </li>
          ))}
        </ul>
      )}
      <h2>Plans to approve</h2>
      {pending.length === 0 ? (
        <p class="muted">No plan is waiting for approval.</p>
      ) : (
        <ul class="cards">
          {pending.map((t) => (
            <li key={t.id}>
              <PlanCard task={t} />
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function Question({ q }: { q: TtyRequest }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const answer = async (response: string) => {
    setBusy(true);
    setError(null);
    try {
      await sessionApi.submitTtyInput({ requestId: q.id, response });
      setValue("");
      questions.set(questions.get().filter((x) => x.id !== q.id));
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(false);
    }
  };
  const free = q.inputType === "TEXT" || q.inputType === "PASSWORD";
  return (
    <article class="card question" data-testid="question" aria-label={q.prompt}>
      <p class="prompt">{q.prompt}</p>
      <p class="meta">
        <a href={href({ page: "task", id: q.taskId })}>open task</a> · asked {ago(q.createdAt)}
        {q.expiresAt && <> · expires {new Date(q.expiresAt).toLocaleTimeString()}</>}
      </p>
      {free && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            void answer(value);
          }}
        >
          {q.inputType === "PASSWORD" ? (
            <input
              type="password"
              autoComplete="off"
              aria-label="Answer"
              value={value}
              onInput={(e) => setValue((e.target as HTMLInputElement).value)}
              disabled={busy}
            />
          ) : (
            <input
              type="text"
              autoComplete="off"
              aria-label="Answer"
              value={value}
              onInput={(e) => setValue((e.target as HTMLInputElement).value)}
              disabled={busy}
            />
          )}
          <button type="submit" class="primary" disabled={busy}>
            Send
          </button>
        </form>
      )}
      {q.inputType === "SELECT" && (
        <div class="choices">
          {q.options.map((o) => (
            <button onClick={() => void answer(o)} disabled={busy}>
              {o}
            </button>
          ))}
        </div>
      )}
      {q.inputType === "CONFIRM" && (
        <div class="choices">
          <button class="primary" onClick={() => void answer("yes")} disabled={busy}>
            Yes
          </button>
          <button onClick={() => void answer("no")} disabled={busy}>
            No
          </button>
        </div>
      )}
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </article>
  );
}

/** Tasks in a plan not approved yet (its nodes exist only once it is): the YAML's entries. */
function plannedTasks(task: TaskSummary & { planYaml?: string | null; estimate?: Estimate | null }): number {
  if (task.nodes?.length) return task.nodes.length;
  return task.planYaml?.match(/^\s*-\s+id:/gm)?.length ?? 0;
}

export function PlanCard({ task }: { task: TaskSummary & { planYaml?: string | null; estimate?: Estimate | null } }) {
  const [error, setError] = useState<string | null>(null);
  const act = async (what: "approve" | "reject") => {
    setError(null);
    try {
      if (what === "approve") await taskApi.approve({ taskId: task.id });
      else await taskApi.reject({ taskId: task.id, reason: "plan rejected" });
      plans.set(plans.get().filter((t) => t.id !== task.id));
    } catch (e) {
      setError(errorText(e));
    }
  };
  return (
    <article class="card" data-testid="plan">
      <p class="prompt">
        <a href={href({ page: "task", id: task.id })}>{titleOf(task)}</a>
      </p>
      <p class="meta">{plannedTasks(task)} planned tasks</p>
      {task.estimate && <p class="meta" data-testid="plan-estimate">{estimateText(task.estimate)}</p>}
      {task.planYaml && (
        <details>
          <summary>The plan</summary>
          <pre class="plan">{task.planYaml}</pre>
        </details>
      )}
      <div class="choices">
        <button class="primary" onClick={() => void act("approve")}>
          Approve plan
        </button>
        <button onClick={() => void act("reject")}>Reject plan</button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </article>
  );
}
