// Where the API is. The console served by the server talks to its own origin. Loaded from
// anywhere else (a static server, a CDN), it is pointed at a server once with
// `?server=https://hub.example.com`, remembered for the tab.
const KEY = "delidev.server";

function resolveServer(): string {
  const params = new URLSearchParams(location.search);
  const given = params.get("server");
  if (given) {
    try {
      const url = new URL(given);
      if (url.protocol === "http:" || url.protocol === "https:") {
        sessionStorage.setItem(KEY, url.origin);
        params.delete("server");
        const rest = params.toString();
        history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
      }
    } catch {
      // not a URL: ignored, the stored or own origin is used
    }
  }
  return sessionStorage.getItem(KEY) ?? location.origin;
}

export const serverUrl = resolveServer();
export const graphqlHttpUrl = `${serverUrl}/graphql`;
export const graphqlWsUrl = graphqlHttpUrl.replace(/^http/, "ws");
/** Where the identity provider sends the browser back after sign-in: this page. */
export const consoleUrl = location.origin + location.pathname;
