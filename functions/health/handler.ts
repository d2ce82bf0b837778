// Liveness and dependencies: 200 when Postgres answers, Redis reported but optional.
import { query } from "../_shared/db.ts";
import { json, requireMethod, serveJson } from "../_shared/http.ts";
import { tryRedis } from "../_shared/redis.ts";

export const handler = serveJson("health", async (req) => {
  requireMethod(req, "GET");
  const [db, cache] = await Promise.all([
    query((sql) => sql`select 1 as ok`).then(() => true, () => false),
    tryRedis((r) => r.ping()),
  ]);
  const body = {
    status: db ? "ok" : "unavailable",
    database: db,
    redis: cache.ok,
    degraded: !cache.ok,
  };
  return json(body, db ? 200 : 503, db ? {} : { "retry-after": "2" });
});
