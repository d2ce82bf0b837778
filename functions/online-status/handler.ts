// POST /functions/v1/online-status {"user_ids": [...]} with a user's JWT:
// 200 {"users":[{user_id, is_online, last_seen_at}], "cached", "degraded"}, for clients that
// cannot call the get_online_users_batch RPC. Answered from the Redis live index
// (functions/_shared/live_index.ts: one script for all ids, online = an event in the last 5
// minutes); ids the index does not hold (users it has never seen since it was built) come from
// the RPC in one query. Users that do not exist are absent; the order is the request's.
// "cached": no database statement. Redis down: from the RPC, "degraded": true.
// The read path, end to end: docs/read-path.md.
import { z } from "zod";
import { requireUser } from "../_shared/auth.ts";
import { fallback } from "../_shared/db.ts";
import { readQuery } from "../_shared/replica.ts";
import { HttpError, json, parseJson, readBody, requireMethod, serveJson } from "../_shared/http.ts";
import { seenMinute, statuses } from "../_shared/live_index.ts";
import { keepIndexTrue, keepPrivacyTrue } from "../_shared/live_index_sync.ts";
import { env } from "../_shared/env.ts";
import { rateLimited } from "../_shared/quota.ts";
import { recordCache, recordDegraded } from "../_shared/metrics.ts";
import { tryRedis } from "../_shared/redis.ts";
import { statementsSoFar } from "../_shared/request.ts";

export const MAX_USER_IDS = 10_000;
/** 10,000 quoted uuids with separators and some whitespace. */
export const MAX_BODY_BYTES = 512 * 1024;

const bodySchema = z.object({
  user_ids: z.array(z.guid({ error: "user_ids must hold uuids" }), {
    error: "user_ids must be an array of uuids",
  })
    .min(1, { error: "user_ids must hold at least one id" })
    .max(MAX_USER_IDS, { error: `user_ids must hold at most ${MAX_USER_IDS} ids` }),
});

export interface Status {
  user_id: string;
  is_online: boolean;
  last_seen_at: string | null;
}

export function parseIds(body: unknown): string[] {
  const parsed = bodySchema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`)
      .join("").replace(/^\./, "");
    const tooMany = issue.code === "too_big" && issue.path.length === 1;
    throw new HttpError(
      400,
      tooMany ? "too_many_ids" : "invalid_body",
      where ? `${where}: ${issue.message}` : issue.message,
    );
  }
  return [...new Set(parsed.data.user_ids.map((id) => id.toLowerCase()))];
}

/** get_online_users_batch as the viewer may see it (their blocks, others' incognito). */
async function fromDb(viewer: string, ids: string[]): Promise<Status[]> {
  const rows = await readQuery(
    (sql) =>
      sql<{ user_id: string; is_online: boolean; last_seen_at: Date | null }[]>`
        select user_id, is_online, last_seen_at
        from private.online_users_for(${viewer}::uuid, ${ids}::uuid[])`,
    "get_online_users_batch",
  );
  return rows.map((r) => ({
    user_id: r.user_id,
    is_online: r.is_online,
    last_seen_at: r.last_seen_at ? seenMinute(r.last_seen_at.getTime()) : null,
  }));
}

export const handler = serveJson("online-status", async (req) => {
  requireMethod(req, "POST");
  const claims = await requireUser(req);
  const ids = parseIds(parseJson(await readBody(req, MAX_BODY_BYTES)));
  const quota = env().quotas.status;
  if (ids.length > quota.capacity) {
    // More than the bucket can ever hold: a 429 would promise a retry that never succeeds.
    throw new HttpError(
      400,
      "too_many_ids",
      `user_ids must hold at most ${quota.capacity} ids a call under this project's quota`,
    );
  }

  const viewer = claims.sub.toLowerCase();
  const read = await tryRedis(async (r) => {
    let answer = await statuses(r, ids, { id: viewer, quota });
    if (answer.state === "limited") throw rateLimited(quota, answer.retryAfter!);
    // The upkeep the first read was given (a read again finds its lock taken).
    keepIndexTrue(answer.state);
    if (await keepPrivacyTrue(answer.privacy)) {
      // Read again after the sync (the first read took the quota).
      answer = await statuses(r, ids, { id: viewer, quota, charge: false });
    }
    return answer;
  });
  const found = new Map<string, Status>();
  let missing = ids;
  if (read.ok && read.value.found) {
    for (const s of read.value.found) found.set(s.user_id, s);
    missing = read.value.missing!;
  }
  if (missing.length) {
    // Without the index every id is a miss: bounded like any read Postgres answers for it.
    const rows = read.ok && read.value.found
      ? await fromDb(viewer, missing)
      : await fallback("online-status", () => fromDb(viewer, missing));
    for (const row of rows) found.set(row.user_id, row);
  }
  const degraded = !read.ok;
  if (degraded) {
    recordCache("online_status", "error");
    recordDegraded("online-status");
  } else recordCache("online_status", statementsSoFar() === 0 ? "hit" : "miss");
  const users = ids.flatMap((id) => found.get(id) ?? []);
  return json({ users, cached: statementsSoFar() === 0, degraded });
});
