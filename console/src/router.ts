// Hash routes (`#/tasks/<id>`), so any static server can host the console and a reload
// never asks the server for a path it does not know.
import { store } from "./store";

export type Route =
  | { page: "board" }
  | { page: "task"; id: string }
  | { page: "inbox" }
  | { page: "fleet" }
  | { page: "setup" };

function parse(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case "tasks":
      return parts[1] ? { page: "task", id: parts[1] } : { page: "board" };
    case "inbox":
      return { page: "inbox" };
    case "fleet":
      return { page: "fleet" };
    case "setup":
      return { page: "setup" };
    default:
      return { page: "board" };
  }
}

export const route = store<Route>(parse(location.hash));
addEventListener("hashchange", () => route.set(parse(location.hash)));

export function href(r: Route): string {
  return r.page === "task" ? `#/tasks/${encodeURIComponent(r.id)}` : r.page === "board" ? "#/" : `#/${r.page}`;
}

export function go(r: Route): void {
  location.hash = href(r);
}
