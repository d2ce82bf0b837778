// The stack's functions run as one worker per core (deno serve --parallel): one /metrics
// scrape still counts every request, whichever worker answered it, and says how many workers
// (and the Realtime process) it combined.
import assert from "node:assert/strict";
import { sample, scrape } from "../_lib/metrics.ts";
import { FUNCTIONS_URL } from "../_lib/env.ts";

const value = (text: string, series: string) => sample(text, series) ?? 0;
const HEALTH = 'sltr_http_requests_total{function="health",method="GET",status="200"}';

Deno.test("one_scrape_counts_the_requests_of_every_worker", async () => {
  const before = await scrape();
  const workers = value(before, "sltr_metrics_workers");
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
  assert.equal(value(after, HEALTH) - value(before, HEALTH), 60);
  assert.equal(value(after, "sltr_realtime_replication_up"), 1, "the Realtime process's too");
});
