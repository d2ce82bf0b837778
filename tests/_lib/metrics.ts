// Reading the functions' /metrics (Prometheus text) in tests.
import assert from "node:assert/strict";
import { FUNCTIONS_URL, SERVICE_ROLE_KEY } from "./env.ts";

/** One scrape of `<functionsUrl>/metrics`, as the service role. */
export async function scrape(functionsUrl = FUNCTIONS_URL): Promise<string> {
  const res = await fetch(`${functionsUrl}/metrics`, {
    headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    signal: AbortSignal.timeout(15_000),
  });
  assert.equal(res.status, 200);
  return await res.text();
}

/** The value of one series (`name{labels}` exactly as exported), undefined when absent. */
export function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}
