// Small display helpers.
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "—";
  const s = Math.round((now - new Date(iso).getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** The link itself when it is an http(s) URL, else undefined: a stored link is shown as a
 * link only then (the server refuses others now; rows stored before it did, or written
 * past it, must not become a `javascript:` link in the console). */
export function webLink(url: string | null | undefined): string | undefined {
  if (!url) return undefined;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : undefined;
  } catch {
    return undefined;
  }
}

export function label(value: string): string {
  return value.toLowerCase().replace(/_/g, " ");
}

export function titleOf(t: { title?: string | null; prompt: string }): string {
  const text = t.title || t.prompt;
  return text.length > 120 ? `${text.slice(0, 117)}…` : text;
}

export const AGENT_TYPES = ["CLAUDE_CODE", "OPEN_CODE", "GEMINI_CLI", "CODEX_CLI", "AIDER", "AMP"] as const;
export const PRIORITIES = ["LOW", "NORMAL", "HIGH", "URGENT"] as const;
