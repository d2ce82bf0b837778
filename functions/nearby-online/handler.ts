// GET /functions/v1/nearby-online?lat=&lng=&radius_m=&limit= with a user's JWT:
// 200 {"users":[{user_id, display_name, distance_m, last_seen_at}], "cached", "degraded"}.
// Online users nearest first, never the caller, in real time, answered from the Redis live
// index (functions/_shared/live_index.ts) with no Postgres statement: occupied privacy cells
// near the caller, the users seen in them within 5 minutes, distances computed exactly as
// find_nearby_online_users computes them. "cached": answered from the index. While the index is
// being built (a cold Redis), from Postgres. Redis down: from Postgres with "degraded": true.
// Postgres down: 503 + Retry-After (unless the index can answer).
// The read path, end to end: docs/read-path.md.
import { z } from "zod";
import { requireUser } from "../_shared/auth.ts";
import { fallback } from "../_shared/db.ts";
import { readQuery } from "../_shared/replica.ts";
import { HttpError, json, requireMethod, serveJson } from "../_shared/http.ts";
import { nearby, type NearbyUser, seenMinute } from "../_shared/live_index.ts";
import { fill, keepIndexTrue, keepPrivacyTrue } from "../_shared/live_index_sync.ts";
import { env } from "../_shared/env.ts";
import { rateLimited } from "../_shared/quota.ts";
import { recordCache, recordDegraded } from "../_shared/metrics.ts";
import { tryRedis } from "../_shared/redis.ts";
import { statementsSoFar } from "../_shared/request.ts";

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

interface Row {
  user_id: string;
  display_name: string;
  distance_m: number | null;
  last_seen_at: Date | null;
}

async function fromDb(q: NearbyQuery, excluded: string | null): Promise<NearbyUser[]> {
  try {
    const rows = await readQuery(
      (sql) =>
        sql<Row[]>`
          select user_id, display_name, distance_m, last_seen_at
          from private.find_nearby_online_users(${q.lat}::float8, ${q.lng}::float8,
            ${q.radius_m}::int, ${q.limit}::int, ${excluded}::uuid)`,
      "find_nearby_online_users",
    );
    return rows.map((r) => ({
      user_id: r.user_id,
      display_name: r.display_name,
      distance_m: r.distance_m,
      last_seen_at: r.last_seen_at ? seenMinute(r.last_seen_at.getTime()) : null,
    }));
  } catch (e) {
    // Validated above; this is the database agreeing (22023: out of range).
    if ((e as { code?: unknown })?.code === "22023") {
      throw new HttpError(400, "invalid_query", (e as Error).message);
    }
    throw e;
  }
}

export const handler = serveJson("nearby-online", async (req) => {
  requireMethod(req, "GET");
  const claims = await requireUser(req);
  const caller = claims.sub.toLowerCase();
  const q = parseQuery(new URL(req.url));
  const answer = (users: NearbyUser[], cached: boolean, degraded: boolean) => {
    recordCache("nearby", statementsSoFar() === 0 ? "hit" : "miss");
    return json({ users, cached, degraded });
  };

  const fromIndex = await tryRedis(async (r) => {
    const who = { id: caller, quota: env().quotas.nearby, maxProbeM: env().nearbyMaxProbeM };
    let read = await nearby(r, q, { ...who, charge: true });
    // The upkeep the first read was given (a read again finds its lock taken).
    if (read.readiness) keepIndexTrue(read.readiness);
    if (read.state === "unlocated") {
      // The index does not hold the caller's cell (offline for a while): from Postgres, once.
      await fill(r, [caller]);
      read = await nearby(r, q, { ...who, charge: false });
    }
    if (await keepPrivacyTrue(read.privacy)) read = await nearby(r, q, { ...who, charge: false });
    if (read.state === "limited") throw rateLimited(env().quotas.nearby, read.retryAfter!);
    if (read.state === "too_far") {
      throw new HttpError(
        403,
        "probe_too_far",
        `lat/lng must be within ${who.maxProbeM / 1000} km of your own last known location.`,
      );
    }
    if (read.state === "unlocated") {
      throw new HttpError(
        403,
        "location_required",
        "Share your location (track presence with lat/lng) before asking who is nearby.",
      );
    }
    return read.users;
  });
  if (!fromIndex.ok) {
    recordCache("nearby", "error");
    recordDegraded("nearby-online");
    const users = await fallback("nearby-online", () => fromDb(q, caller));
    return json({ users, cached: false, degraded: true });
  }
  if (fromIndex.value) return answer(fromIndex.value, true, false);
  // The index is being built: Postgres answers meanwhile.
  return answer(await fallback("nearby-online", () => fromDb(q, caller)), false, false);
});
