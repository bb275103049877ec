// Money as the server keeps it: integer micros (millionths of USD), never a float.

/** "$12.345678" → 12345678n; null for text that is not an amount. */
export function parseDollars(text: string): bigint | null {
  const m = /^\s*\$?\s*(\d{1,12})(?:\.(\d{0,6}))?\s*$/.exec(text);
  if (!m) return null;
  return BigInt(m[1]) * 1_000_000n + BigInt((m[2] ?? "").padEnd(6, "0") || "0");
}

/** 12345678n → "$12.35" (cents, rounded half up) or, with `exact`, "$12.345678". */
export function dollars(micros: bigint | number | string, exact = false): string {
  let v = BigInt(micros);
  const sign = v < 0n ? "-" : "";
  if (v < 0n) v = -v;
  if (exact) return `${sign}$${v / 1_000_000n}.${(v % 1_000_000n).toString().padStart(6, "0")}`;
  const cents = (v + 5_000n) / 10_000n;
  return `${sign}$${cents / 100n}.${(cents % 100n).toString().padStart(2, "0")}`;
}

/** "12m" / "2h 5m" / "40s". */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.round(s / 60)}m`;
  return `${Math.floor(s / 3600)}h ${Math.round((s % 3600) / 60)}m`;
}

/** What a plan will likely cost and take, or that there is no history to say. */
export function estimateText(e: { samples: number; costMicros: { median: number; high: number } | null; seconds: { median: number; high: number } | null }): string {
  if (!e.samples || !e.costMicros || !e.seconds) return "No history of comparable runs yet: no estimate.";
  return (
    `Likely ${dollars(e.costMicros.median)} (up to ${dollars(e.costMicros.high)}) and ` +
    `${duration(e.seconds.median)} (up to ${duration(e.seconds.high)}), from ${e.samples} comparable run${e.samples === 1 ? "" : "s"}.`
  );
}
