// One task: what it was asked, where its work is, every run (attempt) with its outcome, the
// live log, and the actions a reviewer takes, with the server's refusals shown as they come.
import { useEffect, useState } from "preact/hooks";
import { errorText, gql, reconnections, sessionApi, subscribe, taskApi } from "../api";
import { ago, label, titleOf, webLink } from "../format";
import { TASK, TASK_UPDATED, normalize, type Session, type TaskDetail } from "../queries";
import { go } from "../router";
import { useStore } from "../store";
import { UnitTaskStatus } from "../gen/delidev/v1/task_pb";
import { dollars, estimateText } from "../money";
import { Dag } from "./Dag";
import { LogView } from "./LogView";

const ACTIVE = new Set(["QUEUED", "RUNNING"]);

export function TaskPage({ id }: { id: string }) {
  const [task, setTask] = useState<TaskDetail | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [chosen, setChosen] = useState<string | null>(null);
  const back = useStore(reconnections);

  const load = () =>
    gql<{ task: TaskDetail }>(TASK, { id }).then(
      (d) => {
        setTask(normalize(d.task));
        setError(null);
      },
      (e) => setError(errorText(e)),
    );

  useEffect(() => {
    setTask(null);
    setChosen(null);
  }, [id]);

  useEffect(() => {
    void load();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stop = subscribe<{ taskUpdated: { deleted: boolean } }>(
      TASK_UPDATED,
      { taskId: id },
      (d) => {
        if (d.taskUpdated.deleted) {
          go({ page: "board" });
          return;
        }
        clearTimeout(timer);
        timer = setTimeout(() => void load(), 100);
      },
      undefined,
      () => void load(), // it fell behind: read the task again
    );
    return () => {
      clearTimeout(timer);
      stop();
    };
  }, [id, back]);

  if (!task) {
    return error ? (
      <p class="error" role="alert">
        {error}
      </p>
    ) : (
      <p class="muted">Loading…</p>
    );
  }
  const sessions = (task.agentTask ?? task.planningTask)?.sessions ?? [];
  const latest = sessions[sessions.length - 1];
  const shown = sessions.find((s) => s.id === chosen) ?? latest;
  const composite = task.__typename === "CompositeTask";

  return (
    <article class="task-page">
      <div class="page-head">
        <h1 data-testid="task-title">{titleOf(task)}</h1>
        <span class={`badge status-${task.status.toLowerCase()}`} data-testid="task-status">
          {label(task.status)}
        </span>
        {composite && <span class="badge">composite</span>}
      </div>
      {task.compositeTaskId && (
        <p>
          Part of <a href={`#/tasks/${task.compositeTaskId}`}>a composite task</a>.
        </p>
      )}
      <Actions task={task} latest={latest} onChanged={load} onError={setError} />
      {error && (
        <p class="error" role="alert" data-testid="task-error">
          {error}
        </p>
      )}
      <dl class="facts">
        <dt>Prompt</dt>
        <dd>
          <pre class="prompt">{task.prompt}</pre>
        </dd>
        <dt>Priority</dt>
        <dd>{label(task.priority)}</dd>
        <dt>Cost</dt>
        <dd data-testid="task-cost">
          {dollars(task.usage.costMicros)}{" "}
          <span class="muted">
            ({task.usage.inputTokens.toLocaleString("en-US")} tokens in, {task.usage.outputTokens.toLocaleString("en-US")} out)
          </span>
        </dd>
        {task.estimate && (
          <>
            <dt>Estimate</dt>
            <dd data-testid="task-estimate">{estimateText(task.estimate)}</dd>
          </>
        )}
        {task.branchName && (
          <>
            <dt>Branch</dt>
            <dd>
              <code>{task.branchName}</code>
            </dd>
          </>
        )}
        {task.linkedPrUrl && (
          <>
            <dt>Pull request</dt>
            <dd>
              {webLink(task.linkedPrUrl) ? (
                <a href={webLink(task.linkedPrUrl)} target="_blank" rel="noopener noreferrer" data-testid="pr-link">
                  {task.linkedPrUrl}
                </a>
              ) : (
                <span data-testid="not-a-link">{task.linkedPrUrl}</span>
              )}
            </dd>
          </>
        )}
        {task.rejectionReason && (
          <>
            <dt>Rejected</dt>
            <dd>{task.rejectionReason}</dd>
          </>
        )}
        {task.wait && (
          <>
            <dt>Waiting</dt>
            <dd data-testid="task-wait">
              {label(task.wait.reason)} since {ago(task.wait.since)}
              {task.wait.position != null && `, position ${task.wait.position}`}
              {task.wait.detail && ` — ${task.wait.detail}`}
              {task.wait.until && `, until ${new Date(task.wait.until).toLocaleTimeString()}`}
            </dd>
          </>
        )}
        {task.requiredLabels.length > 0 && (
          <>
            <dt>Needs labels</dt>
            <dd>{task.requiredLabels.join(", ")}</dd>
          </>
        )}
      </dl>
      {composite && task.nodes && task.nodes.length > 0 && (
        <section>
          <h2>Plan</h2>
          <Dag nodes={task.nodes} />
        </section>
      )}
      {composite && task.planError && <p class="error">Planning failed: {task.planError}</p>}
      {composite && task.planYaml && (
        <details open={task.status === "PENDING_APPROVAL"}>
          <summary>Plan (YAML)</summary>
          <pre>{task.planYaml}</pre>
        </details>
      )}
      <section>
        <h2>{composite ? "Planning runs" : "Runs"}</h2>
        {sessions.length === 0 ? (
          <p class="muted">No run yet.</p>
        ) : (
          <table class="sessions">
            <thead>
              <tr>
                <th>Attempt</th>
                <th>Kind</th>
                <th>Outcome</th>
                <th>Started</th>
                <th>Cost</th>
                <th>Error</th>
              </tr>
            </thead>
            <tbody>
              {sessions.map((s) => (
                <SessionRow s={s} selected={s.id === shown?.id} onSelect={() => setChosen(s.id)} />
              ))}
            </tbody>
          </table>
        )}
      </section>
      {shown && (
        <section>
          <h2>Log of attempt {shown.attempt}</h2>
          <LogView key={shown.id} sessionId={shown.id} onEnded={() => void load()} />
        </section>
      )}
    </article>
  );
}

function SessionRow({ s, selected, onSelect }: { s: Session; selected: boolean; onSelect: () => void }) {
  return (
    <tr class={selected ? "selected" : undefined} data-testid="session-row" data-status={s.status}>
      <td>
        <button class="link" onClick={onSelect} aria-pressed={selected}>
          #{s.attempt}
        </button>
      </td>
      <td>{label(s.kind)}</td>
      <td>
        <span class={`badge session-${s.status.toLowerCase()}`}>{label(s.status)}</span>
        {s.stopRequested && ACTIVE.has(s.status) && <span class="muted"> stopping…</span>}
      </td>
      <td>{ago(s.startedAt ?? s.createdAt)}</td>
      <td>{dollars(s.usage.costMicros)}</td>
      <td>
        {s.failureKind && <span class="badge">{label(s.failureKind)}</span>} {s.error}
      </td>
    </tr>
  );
}

function Actions({
  task,
  latest,
  onChanged,
  onError,
}: {
  task: TaskDetail;
  latest: Session | undefined;
  onChanged: () => void;
  onError: (message: string | null) => void;
}) {
  const [mode, setMode] = useState<"reject" | "changes" | "pr" | "delete" | null>(null);
  const [text, setText] = useState("");
  const [busy, setBusy] = useState(false);
  const run = async (action: () => Promise<unknown>, after?: () => void) => {
    setBusy(true);
    onError(null);
    try {
      await action();
      setMode(null);
      setText("");
      if (after) after();
      else onChanged();
    } catch (e) {
      onError(errorText(e));
    } finally {
      setBusy(false);
    }
  };
  const composite = task.__typename === "CompositeTask";
  const reviewable = task.status === "IN_REVIEW" || task.status === "PENDING_APPROVAL";
  const running = latest && ACTIVE.has(latest.status);
  const retryable = latest && !ACTIVE.has(latest.status) && latest.status !== "SUCCEEDED";
  return (
    <div class="actions" role="toolbar" aria-label="Task actions">
      {reviewable && (
        <button class="primary" disabled={busy} onClick={() => void run(() => taskApi.approve({ taskId: task.id }))}>
          {composite ? "Approve plan" : "Approve"}
        </button>
      )}
      {reviewable && (
        <button disabled={busy} onClick={() => setMode(mode === "reject" ? null : "reject")}>
          Reject…
        </button>
      )}
      {!composite && task.status === "IN_REVIEW" && (
        <button disabled={busy} onClick={() => setMode(mode === "changes" ? null : "changes")}>
          Request changes…
        </button>
      )}
      {!composite && task.status === "APPROVED" && (
        <button disabled={busy} onClick={() => setMode(mode === "pr" ? null : "pr")}>
          Record pull request…
        </button>
      )}
      {!composite && (task.status === "APPROVED" || task.status === "PR_OPEN") && (
        <button disabled={busy} onClick={() => void run(() => taskApi.updateStatus({ taskId: task.id, status: UnitTaskStatus.DONE }))}>
          Mark done
        </button>
      )}
      {retryable && (
        <button disabled={busy} onClick={() => void run(() => taskApi.retry({ taskId: task.id }))}>
          Retry
        </button>
      )}
      {running && latest && (
        <button disabled={busy || latest.stopRequested} onClick={() => void run(() => sessionApi.stop({ sessionId: latest.id }))}>
          Stop run
        </button>
      )}
      <button class="danger" disabled={busy} onClick={() => setMode(mode === "delete" ? null : "delete")}>
        Delete…
      </button>
      {mode === "reject" && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(() => taskApi.reject({ taskId: task.id, reason: text || undefined }));
          }}
        >
          <input aria-label="Reason" placeholder="Reason (optional)" value={text} onInput={(e) => setText((e.target as HTMLInputElement).value)} autoFocus />
          <button type="submit" class="danger" disabled={busy}>
            Reject
          </button>
        </form>
      )}
      {mode === "pr" && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(() => taskApi.updateStatus({ taskId: task.id, status: UnitTaskStatus.PR_OPEN, linkedPrUrl: text }));
          }}
        >
          <input type="url" aria-label="Pull request URL" placeholder="https://github.com/owner/repo/pull/1" value={text} onInput={(e) => setText((e.target as HTMLInputElement).value)} autoFocus required />
          <button type="submit" class="primary" disabled={busy}>
            Record
          </button>
        </form>
      )}
      {mode === "changes" && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(() => taskApi.requestChanges({ taskId: task.id, feedback: text }));
          }}
        >
          <textarea aria-label="Feedback" placeholder="What should change?" value={text} onInput={(e) => setText((e.target as HTMLTextAreaElement).value)} autoFocus required />
          <button type="submit" class="primary" disabled={busy}>
            Send feedback
          </button>
        </form>
      )}
      {mode === "delete" && (
        <span class="inline-form">
          Delete this task and its runs?{" "}
          <button class="danger" disabled={busy} onClick={() => void run(() => taskApi.delete({ taskId: task.id }), () => go({ page: "board" }))}>
            Delete task
          </button>
          <button onClick={() => setMode(null)}>Keep it</button>
        </span>
      )}
    </div>
  );
}
