// The two front doors, as the browser reaches them: Connect-Web clients generated from
// proto/ (actions, log streaming) and GraphQL (lists, dashboards; subscriptions over
// graphql-ws). Every call carries the bearer token when signed in, refreshes it once on a
// refusal, and reports whether the server is reachable.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { createClient as createWsClient, type Client as WsClient } from "graphql-ws";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { bearer, currentUser, tokens } from "./auth";
import { graphqlHttpUrl, graphqlWsUrl, serverUrl } from "./config";
import { AuthService } from "./gen/delidev/v1/auth_pb";
import { RepositoryGroupService, RepositoryService } from "./gen/delidev/v1/repository_pb";
import { SessionService } from "./gen/delidev/v1/session_pb";
import { TaskService } from "./gen/delidev/v1/task_pb";
import { TodoService } from "./gen/delidev/v1/todo_pb";
import { WorkspaceService } from "./gen/delidev/v1/workspace_pb";
import { store } from "./store";

/** "ok", or why the server cannot be reached right now. */
export const connection = store<"ok" | "unreachable">("ok");
/** Bumped each time the live connection comes back: pages re-read what they show. */
export const reconnections = store(0);

export class ApiError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

export function errorText(e: unknown): string {
  if (e instanceof ConnectError) return `${e.rawMessage} (${Code[e.code] ?? e.code})`;
  if (e instanceof ApiError) return `${e.message} (${e.code})`;
  if (e instanceof Error) return e.message;
  return String(e);
}

// ---- tokens --------------------------------------------------------------------------------

let refreshing: Promise<boolean> | null = null;

/** Trades the refresh token for a new access token; false when signed out. */
export function refreshTokens(): Promise<boolean> {
  refreshing ??= (async () => {
    const t = tokens.get();
    if (!t) return false;
    try {
      const r = await auth.refreshToken({ refreshToken: t.refreshToken });
      tokens.set({
        accessToken: r.accessToken,
        refreshToken: r.refreshToken || t.refreshToken,
        expiresAt: r.expiresAt ? timestampDate(r.expiresAt).getTime() : Date.now() + 3600_000,
      });
      return true;
    } catch (e) {
      if (e instanceof ConnectError && e.code !== Code.Unavailable) {
        tokens.set(null);
        currentUser.set(null);
      }
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

function unreachable(e: unknown): boolean {
  return (
    (e instanceof ConnectError && (e.code === Code.Unavailable || e.code === Code.Unknown) &&
      /fetch|network|Failed/i.test(e.rawMessage)) ||
    e instanceof TypeError
  );
}

const session: Interceptor = (next) => async (req) => {
  const token = bearer();
  if (token && !req.header.has("authorization")) req.header.set("authorization", token);
  try {
    const res = await next(req);
    connection.set("ok");
    return res;
  } catch (e) {
    if (unreachable(e)) connection.set("unreachable");
    else connection.set("ok");
    const isRefresh = req.method.name === "RefreshToken";
    if (e instanceof ConnectError && e.code === Code.Unauthenticated && !req.stream && !isRefresh &&
        token && (await refreshTokens())) {
      req.header.set("authorization", bearer() ?? "");
      return next(req);
    }
    throw e;
  }
};

const transport = createConnectTransport({ baseUrl: serverUrl, interceptors: [session] });

export const auth: Client<typeof AuthService> = createClient(AuthService, transport);
export const workspaceApi = createClient(WorkspaceService, transport);
export const repositoryApi = createClient(RepositoryService, transport);
export const groupApi = createClient(RepositoryGroupService, transport);
export const taskApi = createClient(TaskService, transport);
export const sessionApi = createClient(SessionService, transport);
export const todoApi = createClient(TodoService, transport);

// ---- GraphQL over HTTP ---------------------------------------------------------------------

interface GqlResponse<T> {
  data?: T;
  errors?: { message: string; extensions?: { code?: string } }[];
}

/**
 * Every item of a list paged by offset, up to `max`. A page may hold fewer items than asked
 * although more follow (the server ends a page of long items early), so the next page starts
 * after the items received, until `totalCount`.
 */
export async function allPages<T>(
  page: (offset: number) => Promise<{ totalCount: number; items: T[] }>,
  max = 500,
): Promise<T[]> {
  const all: T[] = [];
  for (;;) {
    const got = await page(all.length);
    all.push(...got.items);
    if (got.items.length === 0 || all.length >= got.totalCount || all.length >= max) return all;
  }
}

export async function gql<T>(query: string, variables: Record<string, unknown> = {}): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const headers: Record<string, string> = { "content-type": "application/json" };
    const token = bearer();
    if (token) headers.authorization = token;
    let response: Response;
    try {
      response = await fetch(graphqlHttpUrl, {
        method: "POST",
        headers,
        body: JSON.stringify({ query, variables }),
      });
    } catch (e) {
      connection.set("unreachable");
      throw new ApiError(`cannot reach the server at ${serverUrl}`, "UNAVAILABLE");
    }
    connection.set("ok");
    let body: GqlResponse<T>;
    try {
      body = (await response.json()) as GqlResponse<T>;
    } catch {
      throw new ApiError(`the server answered ${response.status}`, "BAD_RESPONSE");
    }
    const error = body.errors?.[0];
    if (error) {
      const code = error.extensions?.code ?? `HTTP_${response.status}`;
      if (code === "UNAUTHENTICATED" && attempt === 0 && token && (await refreshTokens())) continue;
      throw new ApiError(error.message, code);
    }
    if (!body.data) throw new ApiError(`the server answered ${response.status}`, "BAD_RESPONSE");
    return body.data;
  }
}

// ---- GraphQL subscriptions (graphql-ws) ----------------------------------------------------

let ws: WsClient | null = null;
let everConnected = false;

function wsClient(): WsClient {
  ws ??= createWsClient({
    url: graphqlWsUrl,
    lazy: true,
    retryAttempts: Number.POSITIVE_INFINITY,
    shouldRetry: () => true,
    retryWait: async (retries) => {
      const ms = Math.min(10_000, 500 * 2 ** Math.min(retries, 5)) * (0.5 + Math.random() / 2);
      await new Promise((resolve) => setTimeout(resolve, ms));
    },
    connectionParams: () => {
      const token = bearer();
      return token ? { authorization: token } : {};
    },
    on: {
      connected: () => {
        connection.set("ok");
        if (everConnected) reconnections.set(reconnections.get() + 1);
        everConnected = true;
      },
      closed: (event) => {
        const code = (event as CloseEvent | undefined)?.code;
        if (code === 1006 || code === undefined) connection.set("unreachable");
      },
      error: () => connection.set("unreachable"),
    },
  });
  return ws;
}

// A new identity needs a new socket: the old one authenticated as someone else.
tokens.subscribe(() => {
  ws?.dispose();
  ws = null;
  everConnected = false;
});

/** The code a subscription ends with when it may have missed changes (the server's event
 * feed was interrupted, or the subscriber fell behind): nothing it would have sent is lost
 * as long as the client subscribes again and then reloads what it shows. */
const LOST = "FAILED_PRECONDITION";

/**
 * Follows a subscription. With `onLost`, a subscription the server ends with `LOST` is
 * started again (after a short, growing pause) and then `onLost` is called: the page reloads
 * what it shows, so that whatever changed meanwhile is shown. Returns the function that stops it.
 */
export function subscribe<T>(
  query: string,
  variables: Record<string, unknown>,
  onData: (data: T) => void,
  onError?: (message: string) => void,
  onLost?: () => void,
): () => void {
  let stopped = false;
  let stopCurrent = () => {};
  let timer: ReturnType<typeof setTimeout> | undefined;
  let restarts = 0;
  const restart = (lost: () => void) => {
    stopCurrent();
    const ms = Math.min(5000, 100 * 2 ** Math.min(restarts++, 6)) * (0.5 + Math.random() / 2);
    timer = setTimeout(() => {
      if (stopped) return;
      start(); // first: a change made while reloading still arrives
      lost();
    }, ms);
  };
  const start = () => {
    stopCurrent = wsClient().subscribe<T>(
      { query, variables },
      {
        next: (result) => {
          const error = result.errors?.[0];
          if (error && onLost && error.extensions?.code === LOST) restart(onLost);
          else if (error) onError?.(error.message);
          else if (result.data) {
            restarts = 0;
            onData(result.data as T);
          }
        },
        error: (e) => onError?.(errorText(e)),
        complete: () => {},
      },
    );
  };
  start();
  return () => {
    stopped = true;
    clearTimeout(timer);
    stopCurrent();
  };
}

export { timestampDate };
