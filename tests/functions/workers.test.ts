// The stack's functions run as one worker per core (deno serve --parallel): one /metrics
// scrape still counts every request, whichever worker answered it, and says how many workers
// (and the Realtime process) it combined.
import assert from "node:assert/strict";
import { FUNCTIONS_URL, SERVICE_ROLE_KEY } from "../_lib/env.ts";

async function scrape(): Promise<string> {
  const res = await fetch(`${FUNCTIONS_URL}/metrics`, {
    headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
  });
  assert.equal(res.status, 200);
  return await res.text();
}

function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

const HEALTH = 'sltr_http_requests_total{function="health",method="GET",status="200"}';

Deno.test("one_scrape_counts_the_requests_of_every_worker", async () => {
  const before = await scrape();
  const workers = sample(before, "sltr_metrics_workers");
  // Every worker, plus the Realtime process.
  assert.equal(workers, navigator.hardwareConcurrency + 1, before.slice(0, 200));
  // A connection of its own per request, so that the kernel spreads them over the workers.
  for (let i = 0; i < 60; i++) {
    const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
    const res = await fetch(`${FUNCTIONS_URL}/health`, { client });
    await res.body?.cancel();
    client.close();
  }
  const after = await scrape();
  assert.equal(sample(after, HEALTH) - sample(before, HEALTH), 60);
  assert.equal(sample(after, "sltr_realtime_replication_up"), 1, "the Realtime process's too");
});
