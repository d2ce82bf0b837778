// POST /functions/v1/online-status {"user_ids": [...]} with a user's JWT:
// 200 {"users":[{user_id, is_online, last_seen_at}], "cached", "degraded"}, for clients that
// cannot call the get_online_users_batch RPC. Answered from the presence:<id> keys the
// presence webhook writes through after each commit (one MGET), the rest from the RPC (one
// query), which is also written back for a short while (SET NX: never over the webhook's
// newer value). Users that do not exist are absent; the order is the request's. A key that
// says online about an event older than 4 minutes is not trusted (expire_stale_presence may
// have marked that user offline in Postgres alone): such users are read from the RPC.
import { z } from "zod";
import { requireUser } from "../_shared/auth.ts";
import { presenceKey, STATUS_TTL_SECONDS, trustedPresence } from "../_shared/cache.ts";
import { query } from "../_shared/db.ts";
import { HttpError, json, parseJson, readBody, requireMethod, serveJson } from "../_shared/http.ts";
import { recordCache, recordDegraded } from "../_shared/metrics.ts";
import { tryRedis } from "../_shared/redis.ts";

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

async function fromDb(ids: string[]): Promise<Status[]> {
  const rows = await query(
    (sql) =>
      sql<{ user_id: string; is_online: boolean; last_seen_at: Date | null }[]>`
        select user_id, is_online, last_seen_at from public.get_online_users_batch(${ids}::uuid[])`,
    "get_online_users_batch",
  );
  return rows.map((r) => ({
    user_id: r.user_id,
    is_online: r.is_online,
    last_seen_at: r.last_seen_at ? r.last_seen_at.toISOString() : null,
  }));
}

export const handler = serveJson("online-status", async (req) => {
  requireMethod(req, "POST");
  await requireUser(req);
  const ids = parseIds(parseJson(await readBody(req, MAX_BODY_BYTES)));

  const found = new Map<string, Status>();
  const read = await tryRedis((r) => r.mget(...ids.map(presenceKey)));
  if (read.ok) {
    read.value.forEach((raw, i) => {
      const state = trustedPresence(raw);
      if (state) found.set(ids[i], { user_id: ids[i], ...state });
    });
  }
  const missing = ids.filter((id) => !found.has(id));
  const hits = found.size;
  if (read.ok) {
    recordCache("online_status", "hit", hits);
    recordCache("online_status", "miss", missing.length);
  } else {
    recordCache("online_status", "error", ids.length);
    recordDegraded("online-status");
  }

  let degraded = !read.ok;
  if (missing.length) {
    const rows = await fromDb(missing);
    for (const row of rows) found.set(row.user_id, row);
    // Written back only where no key exists, and the webhook's write-through (after its
    // commit, guarded by event time) replaces it whenever it is older: never over newer.
    const back = rows.filter((r) => r.last_seen_at !== null);
    if (read.ok && back.length) {
      const written = await tryRedis((r) => {
        const pipe = r.pipeline();
        for (const row of back) {
          pipe.set(
            presenceKey(row.user_id),
            JSON.stringify({ is_online: row.is_online, last_seen_at: row.last_seen_at }),
            "EX",
            STATUS_TTL_SECONDS,
            "NX",
          );
        }
        return pipe.exec();
      });
      degraded ||= !written.ok;
    }
  }
  if (read.ok) {
    void tryRedis((r) =>
      r.pipeline()
        .incrby("metrics:online_status:hits", hits)
        .incrby("metrics:online_status:misses", missing.length)
        .exec()
    );
  }

  const users = ids.flatMap((id) => found.get(id) ?? []);
  return json({ users, cached: missing.length === 0, degraded });
});
