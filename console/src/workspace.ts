// The workspace the console shows (remembered per browser), and the list to choose from.
import { allPages, gql } from "./api";
import { WORKSPACES, type Workspace } from "./queries";
import { store } from "./store";

const KEY = "delidev.workspace";

export const workspaces = store<Workspace[] | null>(null);
export const workspaceId = store<string | null>(localStorage.getItem(KEY));

workspaceId.subscribe((id) => {
  if (id) localStorage.setItem(KEY, id);
  else localStorage.removeItem(KEY);
});

export async function loadWorkspaces(): Promise<void> {
  const items = await allPages(
    async (offset) =>
      (await gql<{ workspaces: { totalCount: number; items: Workspace[] } }>(WORKSPACES, { offset })).workspaces,
  );
  workspaces.set(items);
  const chosen = workspaceId.get();
  if (!chosen || !items.some((w) => w.id === chosen)) workspaceId.set(items[0]?.id ?? null);
}
