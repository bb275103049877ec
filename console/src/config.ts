// Where the API is. The console served by the server talks to its own origin (the server's
// Content-Security-Policy lets it reach no other). Loaded from anywhere else (a static
// server, a CDN), it is pointed at a server once with `?server=https://hub.example.com`,
// remembered for the tab. A link naming a server the tab does not use yet is asked about
// first: whoever runs that server would get the user's sign-in (its sign-in link and the
// code the identity provider sends back both go through it).
const KEY = "delidev.server";

function resolveServer(): string {
  const params = new URLSearchParams(location.search);
  const given = params.get("server");
  if (given !== null) {
    params.delete("server");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    try {
      const url = new URL(given);
      const current = sessionStorage.getItem(KEY) ?? location.origin;
      if (
        (url.protocol === "http:" || url.protocol === "https:") &&
        (url.origin === current || trusted(url.origin))
      ) {
        sessionStorage.setItem(KEY, url.origin);
      }
    } catch {
      // not a URL: ignored, the stored or own origin is used
    }
  }
  return sessionStorage.getItem(KEY) ?? location.origin;
}

function trusted(origin: string): boolean {
  return window.confirm(
    `This link connects the DeliDev console to ${origin}.\n\n` +
      "Continue only if you trust that server: you would sign in through it, " +
      "and it would see all you do here.",
  );
}

export const serverUrl = resolveServer();
export const graphqlHttpUrl = `${serverUrl}/graphql`;
export const graphqlWsUrl = graphqlHttpUrl.replace(/^http/, "ws");
/** Where the identity provider sends the browser back after sign-in: this page. */
export const consoleUrl = location.origin + location.pathname;
