// Start-up: finish a sign-in the provider sent us back from, learn who we are (or that
// this server wants a sign-in), and keep the access token fresh.
import { Code, ConnectError } from "@connectrpc/connect";
import { auth, connection, errorText, refreshTokens, timestampDate } from "./api";
import { consoleUrl } from "./config";
import { currentUser, rememberLoginState, takeCallback, tokens } from "./auth";
import { store } from "./store";

export const bootError = store<string | null>(null);

export async function finishSignIn(): Promise<void> {
  const back = takeCallback();
  if (back === null) return;
  if (back === "mismatch") {
    bootError.set("The sign-in could not be completed (its state did not match). Please sign in again.");
    return;
  }
  try {
    const r = await auth.handleCallback(back);
    tokens.set({
      accessToken: r.accessToken,
      refreshToken: r.refreshToken,
      expiresAt: r.expiresAt ? timestampDate(r.expiresAt).getTime() : Date.now() + 3600_000,
    });
  } catch (e) {
    bootError.set(`Sign-in failed: ${errorText(e)}`);
  }
}

export async function whoAmI(): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await auth.getCurrentUser({});
      const u = r.user;
      currentUser.set(u ? { id: u.id, email: u.email, name: u.name } : null);
      return;
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.Unauthenticated) {
        tokens.set(null);
        currentUser.set(null);
        return;
      }
      connection.set("unreachable");
      await new Promise((resolve) => setTimeout(resolve, Math.min(10_000, 1000 * 2 ** attempt)));
    }
  }
}

export async function signIn(): Promise<void> {
  const r = await auth.getLoginUrl({ redirectUri: consoleUrl });
  let target: URL;
  try {
    target = new URL(r.url);
  } catch {
    bootError.set("The server sent a sign-in link that is not a URL.");
    return;
  }
  if (target.protocol !== "https:" && target.protocol !== "http:") {
    bootError.set("The server sent a sign-in link that is not a web address.");
    return;
  }
  rememberLoginState(r.state);
  location.assign(target.href);
}

export async function signOut(): Promise<void> {
  const t = tokens.get();
  try {
    if (t) await auth.logout({ refreshToken: t.refreshToken });
  } finally {
    tokens.set(null);
    currentUser.set(null);
  }
}

let timer: ReturnType<typeof setTimeout> | undefined;
function scheduleRefresh(): void {
  clearTimeout(timer);
  const t = tokens.get();
  if (!t) return;
  const inMs = Math.max(5_000, t.expiresAt - Date.now() - 60_000);
  timer = setTimeout(() => void refreshTokens(), Math.min(inMs, 2 ** 31 - 1));
}
tokens.subscribe(scheduleRefresh);
scheduleRefresh();
