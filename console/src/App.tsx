import { useEffect, useState } from "preact/hooks";
import { connection, errorText, reconnections } from "./api";
import { currentUser, tokens } from "./auth";
import { bootError, signIn, signOut } from "./boot";
import { serverUrl } from "./config";
import { Board } from "./pages/Board";
import { Fleet } from "./pages/Fleet";
import { Inbox, pendingCount, watchInbox } from "./pages/Inbox";
import { Setup } from "./pages/Setup";
import { TaskPage } from "./pages/TaskPage";
import { href, route } from "./router";
import { useStore } from "./store";
import { loadWorkspaces, workspaceId, workspaces } from "./workspace";

export function App() {
  const user = useStore(currentUser);
  const online = useStore(connection);
  const failed = useStore(bootError);
  return (
    <>
      {online === "unreachable" && (
        <div class="banner" role="alert">
          Cannot reach the server at {serverUrl}. Reconnecting automatically…
          {serverUrl !== location.origin &&
            ` (This page is on another origin: the server must list ${location.origin} in DELIDEV_CORS_ORIGINS.)`}
        </div>
      )}
      {failed && (
        <div class="banner error" role="alert">
          {failed}
        </div>
      )}
      {user === undefined ? (
        <main class="centered">
          <p>Connecting to {serverUrl}…</p>
        </main>
      ) : user === null ? (
        <SignIn />
      ) : (
        <Console />
      )}
    </>
  );
}

function SignIn() {
  const [error, setError] = useState<string | null>(null);
  return (
    <main class="centered">
      <h1>DeliDev</h1>
      <p>This server needs you to sign in.</p>
      <button
        class="primary"
        onClick={() => signIn().catch((e) => setError(errorText(e)))}
        autoFocus
      >
        Sign in
      </button>
      {error && <p class="error" role="alert">{error}</p>}
    </main>
  );
}

function Console() {
  const current = useStore(route);
  const list = useStore(workspaces);
  const chosen = useStore(workspaceId);
  const signedIn = useStore(tokens) !== null;
  const user = useStore(currentUser);
  const needsYou = useStore(pendingCount);
  const back = useStore(reconnections);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    loadWorkspaces().then(
      () => setError(null),
      (e) => setError(errorText(e)),
    );
  }, [back]);

  const nav = [
    { page: "board", text: "Board" },
    { page: "inbox", text: needsYou ? `Needs you (${needsYou})` : "Needs you" },
    { page: "fleet", text: "Fleet" },
    { page: "setup", text: "Setup" },
  ] as const;

  return (
    <>
      <header class="topbar">
        <a class="brand" href="#/">
          DeliDev
        </a>
        <nav aria-label="Main">
          {nav.map((n) => (
            <a
              href={href({ page: n.page })}
              aria-current={current.page === n.page ? "page" : undefined}
              data-testid={`nav-${n.page}`}
            >
              {n.text}
            </a>
          ))}
        </nav>
        <label class="workspace-picker">
          <span class="sr-only">Workspace</span>
          <select
            aria-label="Workspace"
            value={chosen ?? ""}
            onChange={(e) => workspaceId.set((e.target as HTMLSelectElement).value || null)}
          >
            {(list ?? []).map((w) => (
              <option value={w.id}>{w.name}</option>
            ))}
            {list && list.length === 0 && <option value="">no workspace yet</option>}
          </select>
        </label>
        {signedIn && (
          <span class="user">
            {user?.name || user?.email}{" "}
            <button onClick={() => void signOut()}>Sign out</button>
          </span>
        )}
      </header>
      {error && (
        <div class="banner error" role="alert">
          {error}
        </div>
      )}
      <main>
        {current.page === "task" ? (
          <TaskPage id={current.id} />
        ) : current.page === "fleet" ? (
          <Fleet />
        ) : current.page === "setup" ? (
          <Setup />
        ) : !chosen ? (
          <section class="empty">
            <h1>Welcome</h1>
            <p>
              Create a workspace and add a repository in <a href="#/setup">Setup</a> to start.
            </p>
          </section>
        ) : current.page === "inbox" ? (
          <Inbox workspaceId={chosen} />
        ) : (
          <Board workspaceId={chosen} />
        )}
      </main>
      <InboxWatcher workspaceId={chosen} />
    </>
  );
}

/** Keeps the "Needs you" count and notifications live on every page. */
function InboxWatcher({ workspaceId }: { workspaceId: string | null }) {
  const back = useStore(reconnections);
  useEffect(() => (workspaceId ? watchInbox(workspaceId) : undefined), [workspaceId, back]);
  return null;
}
