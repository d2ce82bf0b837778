// POST /functions/v1/presence-webhook: presence events in, one batch RPC, Redis write-through.
// (A second, read-only query runs only when the database ignored part of a mixed batch; see
// writeThrough.)
//   service batches: x-sltr-signature (HMAC of the raw body), any users, <= 1,000 events
//   self-reports:    Authorization: Bearer <user JWT>, the caller's own events, <= 10 events
// Order: 405, 413 (body size), 401 (who), 400 (what), 413 (event count), 403 (whose), then
// public.ingest_presence. 202 {"accepted", "ignored"} only once the batch is committed in
// Postgres (the record); Redis is written after that, and a failure there is only reported
// ("degraded": true).
import type { PresenceEvent } from "../_shared/presence.ts";
import { z } from "zod";
import { Redis } from "ioredis";
import type postgres from "postgres";
import { requireUser, verifySignature } from "../_shared/auth.ts";
import { bumpNearbyVersionsWith, type ChangedPoint } from "../_shared/cache.ts";
import { query } from "../_shared/db.ts";
import { connected } from "../_shared/redis.ts";
import { recordPresenceEvents } from "../_shared/metrics.ts";
import { env } from "../_shared/env.ts";
import { HttpError, json, parseJson, readBody, requireMethod, serveJson } from "../_shared/http.ts";

export const MAX_BODY_BYTES = 256 * 1024;
export const MAX_SERVICE_EVENTS = 1000;
/** A client reports its own presence; only its newest event matters, so a few suffice. */
export const MAX_SELF_EVENTS = 10;
/** How far ahead of the server's clock an event may be (clock skew), as for signatures. */
export const MAX_FUTURE_MS = 5 * 60 * 1000;
export const PRESENCE_TTL_SECONDS = 600;
export const PRESENCE_CHANNEL = "presence:changes";

type Caller = { kind: "service" } | { kind: "user"; userId: string };

async function authenticate(req: Request, rawBody: string): Promise<Caller> {
  const signature = req.headers.get("x-sltr-signature");
  if (signature !== null) {
    const secret = env().presenceWebhookSecret;
    if (!secret) {
      console.error(JSON.stringify({
        level: "error",
        function: "presence-webhook",
        error: "PRESENCE_WEBHOOK_SECRET is not set",
      }));
      throw new HttpError(500, "webhook_not_configured", "Signed batches are not configured.");
    }
    await verifySignature(signature, rawBody, secret);
    return { kind: "service" };
  }
  if (!req.headers.get("authorization")) {
    throw new HttpError(
      401,
      "missing_credentials",
      "Sign the batch (x-sltr-signature) or send a user's JWT (Authorization: Bearer).",
    );
  }
  const claims = await requireUser(req);
  return { kind: "user", userId: claims.sub.toLowerCase() };
}

// RFC 3339 with an explicit offset; up to nanoseconds are accepted, microseconds are kept
// (what Postgres stores), so the database and Redis compare exactly the same instants.
const TIMESTAMP =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/** The canonical form `YYYY-MM-DDTHH:MM:SS.ffffffZ` (sorts as text), or undefined. */
export function canonicalTimestamp(text: string, nowMs = Date.now()): string | undefined {
  const m = TIMESTAMP.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac = "", , sign, oh, om] = m;
  const local = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s);
  const back = new Date(local);
  if (
    +y < 2000 || back.getUTCMonth() !== +mo - 1 || back.getUTCDate() !== +d ||
    back.getUTCHours() !== +h || back.getUTCMinutes() !== +mi || back.getUTCSeconds() !== +s ||
    (sign !== undefined && (+oh > 23 || +om > 59))
  ) return undefined;
  const offsetMs = sign === undefined ? 0 : (sign === "-" ? -1 : 1) * (+oh * 60 + +om) * 60_000;
  const utc = local - offsetMs;
  if (utc > nowMs + MAX_FUTURE_MS) return undefined;
  return `${new Date(utc).toISOString().slice(0, 19)}.${frac.padEnd(6, "0").slice(0, 6)}Z`;
}

// Strict: an unknown field is refused, not dropped, so a typo ("latitude") is an error the
// sender sees instead of a location silently lost.
const eventSchema = z.strictObject({
  user_id: z.guid({ error: "user_id must be a uuid" }).transform((id) => id.toLowerCase())
    .optional(),
  status: z.enum(["online", "offline"], { error: 'status must be "online" or "offline"' }),
  at: z.string({ error: "at must be an ISO-8601 timestamp" }).transform((text, ctx) => {
    const at = canonicalTimestamp(text);
    if (at === undefined) {
      ctx.issues.push({
        code: "custom",
        input: text,
        message:
          "at must be an ISO-8601 date-time with a time zone, after 2000 and at most 5 minutes in the future",
      });
      return z.NEVER;
    }
    return at;
  }),
  lat: z.number({ error: "lat must be a number" })
    .min(-90, { error: "lat must be between -90 and 90" })
    .max(90, { error: "lat must be between -90 and 90" })
    .nullish(),
  lng: z.number({ error: "lng must be a number" })
    .min(-180, { error: "lng must be between -180 and 180" })
    .max(180, { error: "lng must be between -180 and 180" })
    .nullish(),
}).refine((e) => (e.lat == null) === (e.lng == null), {
  path: ["lat"],
  error: "lat and lng go together: send both or neither",
});

const bodySchema = z.strictObject({
  events: z.array(eventSchema, { error: "events must be an array" })
    .min(1, { error: "events must hold at least one event" }),
});

export type { PresenceEvent };

function errorCodeFor(path: PropertyKey[]): string {
  const field = path[path.length - 1];
  if (field === "lat" || field === "lng") return "invalid_location";
  if (field === "at") return "invalid_timestamp";
  return "invalid_body";
}

/** Validates the body for this caller: 400 malformed, 413 too many events, 403 not yours. */
export function parseEvents(body: unknown, caller: Caller): PresenceEvent[] {
  const max = caller.kind === "service" ? MAX_SERVICE_EVENTS : MAX_SELF_EVENTS;
  const count = (body as { events?: unknown })?.events;
  if (Array.isArray(count) && count.length > max) {
    throw new HttpError(
      413,
      "too_many_events",
      `At most ${max} events per request (got ${count.length}).`,
    );
  }
  const parsed = bodySchema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`)
      .join("").replace(/^\./, "");
    throw new HttpError(
      400,
      errorCodeFor(issue.path),
      where ? `${where}: ${issue.message}` : issue.message,
    );
  }
  return parsed.data.events.map((e, i) => {
    let userId = e.user_id;
    if (caller.kind === "user") {
      if (userId !== undefined && userId !== caller.userId) {
        throw new HttpError(
          403,
          "not_your_presence",
          `events[${i}]: a user may only report their own presence.`,
        );
      }
      userId = caller.userId;
    } else if (userId === undefined) {
      throw new HttpError(400, "invalid_body", `events[${i}].user_id: required in signed batches`);
    }
    const event: PresenceEvent = { user_id: userId, status: e.status, at: e.at };
    if (e.lat != null && e.lng != null) Object.assign(event, { lat: e.lat, lng: e.lng });
    return event;
  });
}

interface IngestResult {
  accepted: number;
  ignored: number;
}

/** The value of presence:<user_id> in Redis. */
interface PresenceState {
  is_online: boolean;
  last_seen_at: string;
}

async function ingest(events: PresenceEvent[]): Promise<IngestResult> {
  try {
    const [row] = await query(
      (sql) =>
        sql<{ result: IngestResult }[]>`select public.ingest_presence(${
          sql.json(events as unknown as postgres.JSONValue)
        }) as result`,
      "ingest_presence",
    );
    return row.result;
  } catch (e) {
    const code = (e as { code?: unknown })?.code;
    // The edge validates first; this is the database's own check agreeing (22xxx: bad data).
    if (typeof code === "string" && code.startsWith("22")) {
      throw new HttpError(400, "invalid_body", (e as Error).message);
    }
    // A user deleted between the batch's lookup and its insert (23503), or a lock conflict:
    // the statement rolled back whole, and the same batch succeeds when sent again.
    if (code === "23503" || code === "40001" || code === "40P01") {
      throw new HttpError(
        503,
        "conflict_retry",
        "The batch met a concurrent change and nothing was stored; send it again.",
        { "retry-after": "1" },
      );
    }
    throw e;
  }
}

// Writes presence:<user_id> = {"is_online","last_seen_at"} (TTL) unless the key already holds
// an event at least as new, and announces status changes on presence:changes. Times are
// compared as instants (any RFC 3339 offset), so another writer's format cannot fool it.
// KEYS = presence:<id>...; ARGV = ttl, then one value per key.
export const PRESENCE_WRITE_LUA = `
local function micros(iso)
  if type(iso) ~= 'string' then return nil end
  local y, mo, d, h, mi, s, rest =
    string.match(iso, '^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$')
  if not y then return nil end
  local frac, tz = string.match(rest, '^%.(%d+)(.*)$')
  if not frac then frac, tz = '', rest end
  local off = 0
  if tz ~= 'Z' and tz ~= 'z' and tz ~= '' then
    local sign, oh, om = string.match(tz, '^([%+%-])(%d%d):?(%d*)$')
    if not sign then return nil end
    off = (tonumber(oh) * 60 + (tonumber(om) or 0)) * 60
    if sign == '-' then off = -off end
  end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  local secs = days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s) - off
  return secs * 1000000 + tonumber(string.sub(frac .. '000000', 1, 6))
end
-- Canonical times (ours: YYYY-MM-DDTHH:MM:SS.ffffffZ) compare as text; anything else as instants.
local function later(a, b)
  if type(b) ~= 'string' then return true end
  if #a == 27 and #b == 27 and string.byte(a, 27) == 90 and string.byte(b, 27) == 90 then
    return a > b
  end
  local ma, mb = micros(a), micros(b)
  if mb == nil then return true end
  return ma ~= nil and ma > mb
end
local ttl, written, arrivals = tonumber(ARGV[1]), 0, {}
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 1]
  local at = string.match(value, '"last_seen_at":"([^"]*)"')
  local is_online = string.find(value, '"is_online":true', 1, true) ~= nil
  local old = redis.call('GET', key)
  local write, changed = true, true
  if old then
    local ok, cur = pcall(cjson.decode, old)
    if ok and type(cur) == 'table' then
      write = later(at, cur.last_seen_at)
      changed = cur.is_online ~= is_online
    end
  end
  if write then
    redis.call('SET', key, value, 'EX', ttl)
    if changed then
      redis.call('PUBLISH', '${PRESENCE_CHANNEL}',
        '{"user_id":"' .. string.sub(key, 10) .. '",' .. string.sub(value, 2))
      if is_online then arrivals[#arrivals + 1] = i end
    end
    written = written + 1
  end
end
return {written, arrivals}
`;

let scriptSha: string | undefined;

/** Runs PRESENCE_WRITE_LUA: [keys written, 1-based indexes of the keys that came online]. */
async function runPresenceWrite(
  r: Redis,
  keys: string[],
  args: string[],
): Promise<[number, number[]]> {
  scriptSha ??= Array.from(
    new Uint8Array(
      await crypto.subtle.digest("SHA-1", new TextEncoder().encode(PRESENCE_WRITE_LUA)),
    ),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  try {
    return await r.evalsha(scriptSha, keys.length, ...keys, ...args) as [number, number[]];
  } catch (e) {
    if (!String((e as Error)?.message).startsWith("NOSCRIPT")) throw e;
    return await r.eval(PRESENCE_WRITE_LUA, keys.length, ...keys, ...args) as [number, number[]];
  }
}

let writerClient: Redis | undefined;

/**
 * The write-through's own connection. Same fail-fast settings as the shared read cache
 * (functions/_shared/redis.ts) but a 2 s command timeout instead of 250 ms: a read that gives
 * up early just falls back to Postgres, a write that gives up early (a busy event loop is
 * enough) may leave an older state in the key for its whole TTL.
 */
function writer(): Redis | undefined {
  const url = env().redisUrl;
  if (!url) return undefined;
  if (!writerClient) {
    writerClient = new Redis(url, {
      lazyConnect: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 500,
      commandTimeout: 2000,
      retryStrategy: (times) => Math.min(times * 100, 1000),
    });
    writerClient.on("error", () => {}); // reported per request as degraded
  }
  return writerClient;
}

/**
 * Runs a write on the writer connection; false when Redis is unavailable. A cold process (a
 * fresh isolate, a restart) has its connection still opening: that is waited for briefly
 * rather than skipping the write. An outage (reconnecting) is not waited for.
 */
async function tryWrite(op: (r: Redis) => Promise<unknown>, timeoutMs = 500): Promise<boolean> {
  const r = writer();
  if (!r || !(await connected(r, timeoutMs))) return false;
  try {
    await op(r);
    return true;
  } catch {
    return false;
  }
}

/** The state Postgres holds now for these users (read rule: a newer buffered event wins). */
async function statesHeld(userIds: string[]): Promise<Map<string, PresenceState>> {
  const rows = await query(
    (sql) =>
      sql<{ user_id: string; is_online: boolean; last_seen_at: string }[]>`
      select s.user_id, s.is_online,
             to_char(s.last_seen_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as last_seen_at
      from public.get_online_users_batch(${userIds}::uuid[]) as s
      where s.last_seen_at is not null`,
    "presence_states",
  );
  return new Map(
    rows.map((r) => [r.user_id, { is_online: r.is_online, last_seen_at: r.last_seen_at }]),
  );
}

/**
 * After the commit, presence:<user_id> for every user of the batch. When the whole batch was
 * accepted, each user's newest event is what Postgres holds (or something newer, whose own
 * write-through the guard orders after ours). When part of it was ignored we cannot tell which
 * part, so the state held is read back (one more query, only then): an ignored stale event
 * must never land in an empty key, and unknown users get no key. Returns false when Redis (or
 * that read) is unavailable: the events are committed either way.
 */
async function writeThrough(events: PresenceEvent[], result: IngestResult): Promise<boolean> {
  let states = new Map<string, PresenceState>();
  if (result.accepted > 0 && result.ignored === 0) {
    for (const e of events) {
      const seen = states.get(e.user_id);
      if (!seen || e.at >= seen.last_seen_at) {
        states.set(e.user_id, { is_online: e.status === "online", last_seen_at: e.at });
      }
    }
  } else if (result.accepted > 0) {
    try {
      states = await statesHeld([...new Set(events.map((e) => e.user_id))]);
    } catch {
      return false;
    }
  }
  if (states.size === 0) return await tryWrite(() => Promise.resolve()); // Redis up or not
  const ids = [...states.keys()];
  const keys = ids.map((id) => `presence:${id}`);
  const values = [...states.values()].map((s) => JSON.stringify(s));
  return await tryWrite(async (r) => {
    const [, arrived] = await runPresenceWrite(r, keys, [String(PRESENCE_TTL_SECONDS), ...values]);
    // Who came online: cached nearby answers around them are recomputed on their next read.
    // (Moves of users already online and heartbeats invalidate nothing: see _shared/cache.ts.)
    await bumpNearbyVersionsWith(r, arrived.map((i) => lastLocation(events, ids[i - 1])));
  });
}

/** The location of a user's newest event that carried one (none: the arrival is "anywhere"). */
function lastLocation(events: PresenceEvent[], userId: string): ChangedPoint {
  let best: PresenceEvent | undefined;
  for (const e of events) {
    if (e.user_id === userId && e.lat !== undefined && (!best || e.at >= best.at)) best = e;
  }
  return best ? { latitude: best.lat, longitude: best.lng } : {};
}

export const handler = serveJson("presence-webhook", async (req) => {
  requireMethod(req, "POST");
  writer(); // on a cold start, connects while the request is checked and stored
  let result: IngestResult;
  let events: PresenceEvent[] | undefined;
  try {
    const raw = await readBody(req, MAX_BODY_BYTES);
    const caller = await authenticate(req, raw);
    events = parseEvents(parseJson(raw), caller);
    result = await ingest(events);
  } catch (e) {
    // Refused requests count their events when they could be read, else one.
    if (e instanceof HttpError && e.status < 500) {
      recordPresenceEvents("rejected", events?.length ?? 1);
    }
    throw e;
  }
  recordPresenceEvents("accepted", result.accepted);
  recordPresenceEvents("ignored", result.ignored);
  const cached = await writeThrough(events, result);
  const body = { accepted: result.accepted, ignored: result.ignored };
  return json(cached ? body : { ...body, degraded: true }, 202);
});
