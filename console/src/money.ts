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
