// Liveness and dependencies: 200 when Postgres answers, Redis and the read replica reported
// but optional (reads leave a replica that is down: replica.ts). Anyone
// may call it (no JWT), so the answer is the last check's for up to CHECK_MS: however often it
// is called, it costs the database at most one `select 1` per process every CHECK_MS.
import { query } from "../_shared/db.ts";
import { json, requireMethod, serveJson } from "../_shared/http.ts";
import { tryRedis } from "../_shared/redis.ts";
import { replicaHealth } from "../_shared/replica.ts";

const CHECK_MS = 2000;

interface Check {
  database: boolean;
  redis: boolean;
}

let last: { at: number; check: Promise<Check> } | undefined;

function check(): Promise<Check> {
  if (last && performance.now() - last.at < CHECK_MS) return last.check;
  const run = Promise.all([
    query((sql) => sql`select 1 as ok`, "health").then(() => true, () => false),
    tryRedis((r) => r.ping()),
  ]).then(([database, cache]) => ({ database, redis: cache.ok }));
  last = { at: performance.now(), check: run };
  return run;
}

export const handler = serveJson("health", async (req) => {
  requireMethod(req, "GET");
  const { database, redis } = await check();
  const replica = replicaHealth();
  const body = {
    status: database ? "ok" : "unavailable",
    database,
    redis,
    // null: no replica configured; else whether it serves reads and how far behind it is.
    replica: replica ? { up: replica.up, lag_seconds: replica.lagSeconds } : null,
    degraded: !redis,
  };
  return json(body, database ? 200 : 503, database ? {} : { "retry-after": "2" });
});
