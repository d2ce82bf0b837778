// GET /functions/v1/nearby-online?lat=&lng=&radius_m=&limit= with a user's JWT:
// 200 {"users":[{user_id, display_name, distance_m, last_seen_at}], "cached", "degraded"}.
// Online users nearest first, never the caller, in real time, through a Redis read-through
// cache (see functions/_shared/cache.ts for how cached answers stay real time). Redis down:
// answered from Postgres with "degraded": true. Postgres down: 503 + Retry-After.
import { z } from "zod";
import { requireUser } from "../_shared/auth.ts";
import {
  diskVersionKeys,
  NEARBY_TTL_SECONDS,
  nearbyKey,
  parsePresence,
  presenceKey,
  queryCell,
  versionStamp,
} from "../_shared/cache.ts";
import { query } from "../_shared/db.ts";
import { HttpError, json, requireMethod, serveJson } from "../_shared/http.ts";
import { recordCache, recordDegraded } from "../_shared/metrics.ts";
import { tryRedis } from "../_shared/redis.ts";

export interface NearbyUser {
  user_id: string;
  display_name: string;
  distance_m: number;
  last_seen_at: string | null;
}

/** A cached answer: the versions it was computed under, whether more rows existed than it
 * holds, and the users (compact rows: id, name, distance, last seen). */
interface Entry {
  /** The version keys the answer depends on, and their values when it was computed. */
  k: string[];
  v: string;
  more: boolean;
  u: [string, string, number, string | null][];
}

const number = (name: string, min: number, max: number) =>
  z.string({ error: `${name} is required` })
    .trim()
    .min(1, { error: `${name} is required` })
    // Plain decimals only: Number() would also take "0x1F", "1e1" or "Infinity".
    .regex(/^-?\d+(\.\d+)?$/, { error: `${name} must be a decimal number` })
    .transform(Number)
    .pipe(
      z.number({ error: `${name} must be a number` }).min(min, {
        error: `${name} must be between ${min} and ${max}`,
      }).max(max, { error: `${name} must be between ${min} and ${max}` }),
    );

const integer = (name: string, min: number, max: number) =>
  z.string()
    .trim()
    .regex(/^\d+$/, { error: `${name} must be a whole number between ${min} and ${max}` })
    .transform(Number)
    .pipe(
      z.number().int().min(min, {
        error: `${name} must be a whole number between ${min} and ${max}`,
      }).max(max, { error: `${name} must be a whole number between ${min} and ${max}` }),
    );

const querySchema = z.object({
  lat: number("lat", -90, 90),
  lng: number("lng", -180, 180),
  radius_m: integer("radius_m", 1, 50_000).default(5000),
  limit: integer("limit", 1, 500).default(50),
});

export type NearbyQuery = z.infer<typeof querySchema>;

export function parseQuery(url: URL): NearbyQuery {
  const raw: Record<string, string> = {};
  for (const key of ["lat", "lng", "radius_m", "limit"]) {
    const value = url.searchParams.get(key);
    if (value !== null) raw[key] = value;
  }
  const parsed = querySchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new HttpError(400, "invalid_query", issue.message);
  }
  return parsed.data;
}

/** Rows kept beyond `limit`: the caller and users who go offline are removed when serving. */
export function fetchSize(limit: number): number {
  return limit + 1 + Math.max(5, Math.ceil(limit / 10));
}

interface Row {
  user_id: string;
  display_name: string;
  distance_m: number;
  last_seen_at: Date | null;
}

async function nearbyFromDb(
  lat: number,
  lng: number,
  radiusM: number,
  maxResults: number,
  excluded: string | null,
): Promise<NearbyUser[]> {
  try {
    const rows = await query(
      (sql) =>
        sql<Row[]>`
          select user_id, display_name, distance_m, last_seen_at
          from public.find_nearby_online_users(${lat}::float8, ${lng}::float8, ${radiusM}::int,
            ${maxResults}::int, ${excluded}::uuid)`,
      "find_nearby_online_users",
    );
    return rows.map((r) => ({
      user_id: r.user_id,
      display_name: r.display_name,
      distance_m: r.distance_m,
      last_seen_at: r.last_seen_at ? r.last_seen_at.toISOString() : null,
    }));
  } catch (e) {
    // Validated above; this is the database agreeing (22023: out of range).
    if ((e as { code?: unknown })?.code === "22023") {
      throw new HttpError(400, "invalid_query", (e as Error).message);
    }
    throw e;
  }
}

function newer(a: string | null, b: string | undefined): string | null {
  if (!b) return a;
  return a === null || Date.parse(b) > Date.parse(a) ? b : a;
}

export const handler = serveJson("nearby-online", async (req) => {
  requireMethod(req, "GET");
  const claims = await requireUser(req);
  const caller = claims.sub.toLowerCase();
  const q = parseQuery(new URL(req.url));
  // Everyone in the same query cell shares one answer, computed from the cell's centre.
  const at = queryCell(q.lat, q.lng);
  const disk = diskVersionKeys(at.lat, at.lng, q.radius_m);

  const answer = (users: NearbyUser[], cached: boolean, degraded: boolean) =>
    json({ users, cached, degraded }, 200, { "x-cache": cached ? "hit" : "miss" });

  if (!disk) {
    // Too close to a pole to cover with version cells: not cached, always fresh.
    return answer(await nearbyFromDb(at.lat, at.lng, q.radius_m, q.limit, caller), false, false);
  }

  const key = nearbyKey(at.lat, at.lng, q.radius_m, q.limit);
  const read = await tryRedis((r) => r.get(key));
  if (!read.ok) {
    recordCache("nearby", "error");
    recordDegraded("nearby-online");
    return answer(await nearbyFromDb(at.lat, at.lng, q.radius_m, q.limit, caller), false, true);
  }
  const entry = parseEntry(read.value);

  if (entry) {
    // One round trip: the versions the answer depends on, and its users' presence keys.
    const candidates = entry.u.filter(([id]) => id !== caller);
    const got = await tryRedis((r) =>
      r.mget(...entry.k, ...candidates.map(([id]) => presenceKey(id)))
    );
    if (got.ok && versionStamp(got.value.slice(0, entry.k.length)) === entry.v) {
      const states = got.value.slice(entry.k.length);
      const users: NearbyUser[] = [];
      candidates.forEach(([user_id, display_name, distance_m, lastSeen], i) => {
        const state = parsePresence(states[i]);
        if (state && !state.is_online) return; // went offline since the answer was computed
        users.push({
          user_id,
          display_name,
          distance_m,
          last_seen_at: newer(lastSeen, state?.last_seen_at),
        });
      });
      // Enough left, or nobody else was in range: serve it. Otherwise recompute below.
      if (users.length >= q.limit || !entry.more) {
        recordCache("nearby", "hit");
        void tryRedis((r) => r.incr("metrics:nearby:hits"));
        return answer(users.slice(0, q.limit), true, false);
      }
    }
  }

  // Miss: read the versions first (a change committed during the query then invalidates the
  // answer it might have missed), compute for everyone in the cell, store, serve without the
  // caller.
  const before = await tryRedis((r) => r.mget(...disk.keys));
  const size = fetchSize(q.limit);
  const users = await nearbyFromDb(at.lat, at.lng, q.radius_m, size, null);
  recordCache("nearby", "miss");
  let stored = false;
  if (before.ok) {
    const more = users.length >= size;
    let deps = disk.keys;
    let values = before.value;
    if (more) {
      // An answer cut at `size` rows changes only when someone comes online closer than its
      // last row: it depends on the version cells of that smaller disk (same level, so they
      // were read above). In a busy area this is what keeps answers cacheable.
      const reach = Math.min(q.radius_m, users[users.length - 1].distance_m + 100);
      const inner = diskVersionKeys(at.lat, at.lng, reach, disk.level);
      const index = new Map(disk.keys.map((k, i) => [k, i]));
      if (inner && inner.keys.every((k) => index.has(k))) {
        deps = inner.keys;
        values = inner.keys.map((k) => before.value[index.get(k)!]);
      }
    }
    const fresh: Entry = {
      k: deps,
      v: versionStamp(values),
      more,
      u: users.map((u) => [u.user_id, u.display_name, u.distance_m, u.last_seen_at]),
    };
    stored = (await tryRedis((r) =>
      r.multi()
        .set(key, JSON.stringify(fresh), "EX", NEARBY_TTL_SECONDS)
        .incr("metrics:nearby:misses")
        .exec()
    )).ok;
  }
  if (!stored) recordDegraded("nearby-online");
  return answer(users.filter((u) => u.user_id !== caller).slice(0, q.limit), false, !stored);
});

function parseEntry(raw: string | null | undefined): Entry | undefined {
  if (!raw) return undefined;
  try {
    const e = JSON.parse(raw);
    return typeof e?.v === "string" && typeof e?.more === "boolean" && Array.isArray(e?.u) &&
        Array.isArray(e?.k)
      ? e as Entry
      : undefined;
  } catch {
    return undefined;
  }
}
