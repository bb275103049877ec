// Sign-in state. Single-user servers need none: GetCurrentUser answers without a token.
// Multi-user servers sign in through AuthService's OIDC redirect flow (login URL, then the
// provider sends the browser back here with `code` and `state`, which HandleCallback turns
// into tokens); the access token is refreshed before it expires, and on a refusal.
import { serverUrl } from "./config";
import { store } from "./store";

export interface Tokens {
  accessToken: string;
  refreshToken: string;
  expiresAt: number; // epoch ms
}

export interface User {
  id: string;
  email: string;
  name?: string;
}

// Tokens are kept per server: a link that points the console at another server (`?server=`)
// must never hand that server the tokens of this one.
const KEY = `delidev.tokens@${serverUrl}`;
const STATE_KEY = "delidev.login-state";

function load(): Tokens | null {
  try {
    const raw = localStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Tokens) : null;
  } catch {
    return null;
  }
}

export const tokens = store<Tokens | null>(load());
/** undefined: not known yet; null: signed out (multi-user). */
export const currentUser = store<User | null | undefined>(undefined);

tokens.subscribe((t) => {
  if (t) localStorage.setItem(KEY, JSON.stringify(t));
  else localStorage.removeItem(KEY);
});

export function bearer(): string | undefined {
  const t = tokens.get();
  return t ? `Bearer ${t.accessToken}` : undefined;
}

export function rememberLoginState(state: string): void {
  sessionStorage.setItem(STATE_KEY, state);
}

/** The `code` and `state` the provider sent back, once, if their state is the one we sent. */
export function takeCallback(): { code: string; state: string } | "mismatch" | null {
  const params = new URLSearchParams(location.search);
  const code = params.get("code");
  const state = params.get("state");
  const error = params.get("error");
  if (!code && !error) return null;
  const expected = sessionStorage.getItem(STATE_KEY);
  sessionStorage.removeItem(STATE_KEY);
  for (const name of ["code", "state", "error", "error_description", "iss", "session_state"]) {
    params.delete(name);
  }
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  if (!code || !state || state !== expected) return "mismatch";
  return { code, state };
}
