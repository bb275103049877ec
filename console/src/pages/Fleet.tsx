// The fleet: every worker with its status, last heartbeat and current task, live through
// `workerUpdated`.
import { useEffect, useState } from "preact/hooks";
import { errorText, gql, reconnections, subscribe } from "../api";
import { ago, label } from "../format";
import { WORKERS, WORKER_UPDATED, type Worker } from "../queries";
import { href } from "../router";
import { useStore } from "../store";

export function Fleet() {
  const [workers, setWorkers] = useState<Map<string, Worker> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [, tick] = useState(0);
  const back = useStore(reconnections);

  useEffect(() => {
    let live = true;
    const load = () =>
      gql<{ workers: { items: Worker[] } }>(WORKERS).then(
        (d) => {
          if (!live) return;
          setWorkers(new Map(d.workers.items.map((w) => [w.id, w])));
          setError(null);
        },
        (e) => live && setError(errorText(e)),
      );
    void load();
    const stop = subscribe<{ workerUpdated: { workerId: string; deleted: boolean; worker: Worker | null } }>(
      WORKER_UPDATED,
      {},
      ({ workerUpdated: u }) =>
        setWorkers((current) => {
          const next = new Map(current ?? []);
          if (u.deleted || !u.worker) next.delete(u.workerId);
          else next.set(u.workerId, u.worker);
          return next;
        }),
      setError,
      () => void load(), // the server may have missed changes: show them all again
    );
    const timer = setInterval(() => tick((x) => x + 1), 5000); // "last seen" stays current
    return () => {
      live = false;
      stop();
      clearInterval(timer);
    };
  }, [back]);

  const list = [...(workers?.values() ?? [])].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <section>
      <div class="page-head">
        <h1>Fleet</h1>
        <span class="muted">{list.length} workers</span>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {workers === null ? (
        <p class="muted">Loading…</p>
      ) : list.length === 0 ? (
        <p class="muted">No worker has registered yet.</p>
      ) : (
        <table class="fleet">
          <thead>
            <tr>
              <th>Worker</th>
              <th>Status</th>
              <th>Last heartbeat</th>
              <th>Current task</th>
              <th>Runs</th>
            </tr>
          </thead>
          <tbody>
            {list.map((w) => (
              <tr data-testid="worker-row" data-name={w.name} data-status={w.status}>
                <td>{w.name}</td>
                <td>
                  <span class={`badge worker-${w.status.toLowerCase()}`}>{label(w.status)}</span>
                  {w.draining && <span class="badge">draining</span>}
                </td>
                <td title={w.lastHeartbeat}>{ago(w.lastHeartbeat)}</td>
                <td>{w.currentTaskId ? <a href={href({ page: "task", id: w.currentTaskId })}>open</a> : "—"}</td>
                <td class="muted">
                  {w.agentTypes.length ? w.agentTypes.map(label).join(", ") : "any agent"}
                  {w.labels.length > 0 && ` · ${w.labels.join(", ")}`}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
