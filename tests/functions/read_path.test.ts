// The read path over HTTP against the running stack: nearby-online and online-status, their
// cache (hit, miss, TTL, counters), real-time corrections through the presence webhook, Redis
// dying and coming back (on a private Redis and functions server started here, so the shared
// ones are never disturbed), and a client calling them with supabase-js.
import assert from "node:assert/strict";
import postgres from "postgres";
import { Redis } from "ioredis";
import { createClient } from "@supabase/supabase-js";
import { ANON_KEY, freePort, FUNCTIONS_URL, startFunctionsServer, userJwt } from "./_helpers.ts";

const DB_URL = Deno.env.get("DB_URL")!;
const REDIS_URL = Deno.env.get("REDIS_URL")!;
const SUPABASE_URL = Deno.env.get("SUPABASE_URL") ?? "http://127.0.0.1:54321";
const EMAIL_DOMAIN = "read-path.test";

const db = postgres(DB_URL, { max: 4, onnotice: () => {} });
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });

// Shared pools live across tests; the last test closes them.
function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}

// ---- the cast ------------------------------------------------------------------------------

// A spot of our own in the South Pacific for this run, so cached cells and other data never mix.
const ORIGIN = { lat: -30 - Math.random() * 10, lng: -140 + Math.random() * 10 };
const METRES_PER_DEGREE = 111_195;

/** A point `east` and `north` metres from the origin. */
function at(east: number, north: number): { lat: number; lng: number } {
  return {
    lat: ORIGIN.lat + north / METRES_PER_DEGREE,
    lng: ORIGIN.lng + east / (METRES_PER_DEGREE * Math.cos((ORIGIN.lat * Math.PI) / 180)),
  };
}

interface Person {
  id: string;
  name: string;
  jwt: string;
  lat: number;
  lng: number;
}

let serial = 0;

async function createUser(
  name: string,
  where: { lat: number; lng: number },
  isOnline: boolean,
): Promise<Person> {
  const id = crypto.randomUUID();
  const email = `${name}-${++serial}-${id.slice(0, 8)}@${EMAIL_DOMAIN}`;
  await db.begin(async (tx) => {
    await tx`insert into auth.users (id, aud, role, email)
             values (${id}, 'authenticated', 'authenticated', ${email})`;
    // last_seen_at now: expire_stale_presence (pg_cron) leaves them alone during the test.
    await tx`insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
             values (${id}, ${name}, ${isOnline}, ${where.lat}, ${where.lng}, now())`;
  });
  return { id, name, jwt: await userJwt(id), ...where };
}

async function deleteUsers(): Promise<void> {
  const ids = await db<{ id: string }[]>`
    delete from auth.users where email like ${"%@" + EMAIL_DOMAIN} returning id`;
  if (ids.length) await redis.del(...ids.map((r) => `presence:${r.id}`));
}

// ---- HTTP ----------------------------------------------------------------------------------

interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

async function call(url: string, init: RequestInit = {}): Promise<Answer> {
  const res = await fetch(url, init);
  const raw = await res.text();
  let body: unknown = raw;
  try {
    body = JSON.parse(raw);
  } catch {
    // not JSON: left as text for the assertion message
  }
  return { status: res.status, body, headers: res.headers };
}

interface NearbyOptions {
  radius?: number;
  limit?: number;
  base?: string;
}

async function nearby(
  viewer: Person,
  where: { lat: number; lng: number },
  opts: NearbyOptions = {},
): Promise<Answer> {
  const params = new URLSearchParams({
    lat: String(where.lat),
    lng: String(where.lng),
    radius_m: String(opts.radius ?? 4000),
    limit: String(opts.limit ?? 50),
  });
  return await call(`${opts.base ?? FUNCTIONS_URL}/nearby-online?${params}`, {
    headers: { authorization: `Bearer ${viewer.jwt}` },
  });
}

const names = (a: Answer) => a.body.users.map((u: { display_name: string }) => u.display_name);

async function onlineStatus(viewer: Person, body: unknown, base = FUNCTIONS_URL): Promise<Answer> {
  return await call(`${base}/online-status`, {
    method: "POST",
    headers: { authorization: `Bearer ${viewer.jwt}`, "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** A presence event through the real webhook, as the user's own app reports it. */
async function report(
  person: Person,
  status: "online" | "offline",
  where?: { lat: number; lng: number },
  base = FUNCTIONS_URL,
): Promise<void> {
  const event = {
    status,
    at: new Date().toISOString(),
    ...(where ? { lat: where.lat, lng: where.lng } : {}),
  };
  const res = await call(`${base}/presence-webhook`, {
    method: "POST",
    headers: { authorization: `Bearer ${person.jwt}`, "content-type": "application/json" },
    body: JSON.stringify({ events: [event] }),
  });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.accepted, 1, JSON.stringify(res.body));
}

async function counter(name: string): Promise<number> {
  return Number(await redis.get(`metrics:nearby:${name}`) ?? 0);
}

// ---- private Redis and functions server ----------------------------------------------------

async function waitFor(what: string, ok: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await ok().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not happen within ${ms} ms`);
}

function startRedis(port: number): Deno.ChildProcess {
  return new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
}

async function startFunctions(env: Record<string, string>) {
  return await startFunctionsServer(env, "health");
}

async function stop(child: Deno.ChildProcess, signal: Deno.Signal = "SIGTERM"): Promise<void> {
  try {
    child.kill(signal);
  } catch {
    // already gone
  }
  await child.status;
}

// ---- the tests -----------------------------------------------------------------------------

let viewer: Person;
let near: Person;
let mid: Person;
let far: Person;
let away: Person;
let sleeper: Person;

test("setup_creates_a_neighbourhood", async () => {
  await deleteUsers();
  viewer = await createUser("viewer", at(0, 0), true);
  // 800 m apart: more than the privacy grid can reorder (it moves anyone by <= ~354 m).
  near = await createUser("near", at(500, 0), true);
  sleeper = await createUser("sleeper", at(0, 1300), false);
  mid = await createUser("mid", at(0, -2100), true);
  far = await createUser("far", at(-2900, 0), true);
  away = await createUser("away", at(0, 9000), true);
});

test("nearby_requires_a_signed_in_user", async () => {
  const noJwt = await call(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`);
  assert.equal(noJwt.status, 401);
  assert.equal(noJwt.body.error.code, "missing_jwt");
  const anon = await call(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`, {
    headers: { authorization: `Bearer ${ANON_KEY}` },
  });
  assert.equal(anon.status, 401);
  assert.equal(anon.body.error.code, "user_jwt_required");
});

test("nearby_rejects_bad_input_with_400", async () => {
  for (
    const q of [
      "lng=0",
      "lat=0",
      "lat=&lng=0",
      "lat=91&lng=0",
      "lat=0&lng=-180.5",
      "lat=abc&lng=0",
      "lat=NaN&lng=0",
      "lat=0x1F&lng=0",
      "lat=1e1&lng=0",
      "lat=Infinity&lng=0",
      "lat=0&lng=0&radius_m=0",
      "lat=0&lng=0&radius_m=50001",
      "lat=0&lng=0&radius_m=-5",
      "lat=0&lng=0&radius_m=1.5",
      "lat=0&lng=0&limit=0",
      "lat=0&lng=0&limit=501",
      "lat=0&lng=0&limit=ten",
    ]
  ) {
    const res = await call(`${FUNCTIONS_URL}/nearby-online?${q}`, {
      headers: { authorization: `Bearer ${viewer.jwt}` },
    });
    assert.equal(res.status, 400, `${q}: ${JSON.stringify(res.body)}`);
    assert.equal(res.body.error.code, "invalid_query", q);
    assert.equal(typeof res.body.error.message, "string", q);
  }
  const post = await call(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`, {
    method: "POST",
    headers: { authorization: `Bearer ${viewer.jwt}` },
  });
  assert.equal(post.status, 405);
});

test("nearby_answers_nearest_first_without_the_caller_then_hits_the_cache", async () => {
  const [hits, misses] = [await counter("hits"), await counter("misses")];
  const first = await nearby(viewer, viewer);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual(Object.keys(first.body).sort(), ["cached", "degraded", "users"]);
  assert.deepEqual(names(first), ["near", "mid", "far"]);
  assert.equal(first.body.cached, false);
  assert.equal(first.body.degraded, false);
  for (const u of first.body.users) {
    assert.deepEqual(Object.keys(u).sort(), [
      "display_name",
      "distance_m",
      "last_seen_at",
      "user_id",
    ]);
    assert.equal(u.distance_m % 100, 0);
    assert.ok(!Number.isNaN(Date.parse(u.last_seen_at)));
  }

  const second = await nearby(viewer, viewer);
  assert.equal(second.body.cached, true);
  assert.deepEqual(second.body.users, first.body.users);
  assert.equal(await counter("misses"), misses + 1);
  assert.equal(await counter("hits"), hits + 1);

  // Someone else in the same cell gets the same cached answer, minus themselves, plus the viewer.
  const other = await nearby(near, viewer);
  assert.equal(other.body.cached, true);
  assert.deepEqual(names(other), ["viewer", "mid", "far"]);

  // The radius and the limit are part of the question.
  const wide = await nearby(viewer, viewer, { radius: 12_000 });
  assert.equal(wide.body.cached, false);
  assert.deepEqual(names(wide), ["near", "mid", "far", "away"]);
  const two = await nearby(viewer, viewer, { limit: 2 });
  assert.deepEqual(names(two), ["near", "mid"]);
});

test("nearby_drops_someone_who_went_offline_from_a_cached_answer", async () => {
  assert.equal((await nearby(viewer, viewer)).body.cached, true);
  await report(mid, "offline");
  const after = await nearby(viewer, viewer);
  assert.equal(after.body.cached, true, "still served from the cache");
  assert.deepEqual(names(after), ["near", "far"], "but without mid");
  await report(mid, "online", mid);
});

// The presence webhook bumps the version cells around everyone who comes online, after its
// commit (bumpNearbyVersionsWith in functions/_shared/cache.ts).
test("nearby_shows_someone_who_came_online_within_a_second", async () => {
  await nearby(viewer, viewer);
  const cachedBefore = await nearby(viewer, viewer);
  assert.equal(cachedBefore.body.cached, true);
  assert.ok(!names(cachedBefore).includes("sleeper"));

  await report(sleeper, "online", sleeper);
  const accepted = Date.now();
  let seen: Answer | undefined;
  while (Date.now() - accepted < 1000) {
    const res = await nearby(viewer, viewer);
    if (names(res).includes("sleeper")) {
      seen = res;
      break;
    }
  }
  assert.ok(seen, "sleeper appears within 1 s of the webhook's 202");
  assert.deepEqual(names(seen!), ["near", "sleeper", "mid", "far"]);
  await report(sleeper, "offline");
});

test("a_full_answer_is_invalidated_only_by_arrivals_closer_than_its_last_row", async () => {
  // Far from the rest of the cast: a crowd of 9 online users within ~1.2 km, so an answer
  // with limit 2 (8 rows kept) is cut short of its 4 km radius.
  const east = 30_000;
  const watcher = await createUser("watcher", at(east, 0), false);
  for (let i = 0; i < 9; i++) await createUser(`crowd${i}`, at(east + i * 150, 0), true);
  const distant = await createUser("distant", at(east, 3600), false);
  const close = await createUser("close", at(east + 100, 0), false);
  const look = () => nearby(watcher, watcher, { limit: 2 });

  await look();
  const before = await look();
  assert.equal(before.body.cached, true);

  // Someone comes online inside the radius but beyond the answer's last row: still cached.
  await report(distant, "online", distant);
  const after = await look();
  assert.equal(after.body.cached, true, "an arrival beyond the last row keeps the answer");
  assert.deepEqual(names(after), names(before));

  // Someone comes online closer than the last row: the next read recomputes.
  await report(close, "online", close);
  assert.equal((await look()).body.cached, false, "an arrival within the answer recomputes it");
});

test("nearby_serves_the_caller_s_own_cell_even_when_the_answer_was_for_someone_else", async () => {
  // limit 1: the cached answer was computed with spare rows, so removing the caller still
  // leaves one.
  const a = await nearby(near, near, { limit: 1, radius: 1500 });
  const b = await nearby(near, near, { limit: 1, radius: 1500 });
  assert.equal(b.body.cached, true);
  assert.deepEqual(names(a), ["viewer"]);
  assert.deepEqual(names(b), ["viewer"]);
});

test("online_status_answers_from_the_cache_and_the_rpc", async () => {
  const unknown = crypto.randomUUID();
  await redis.del(...[viewer, near, mid, far, away, sleeper].map((p) => `presence:${p.id}`));
  const ids = [far.id, unknown, sleeper.id, near.id, far.id];
  const first = await onlineStatus(viewer, { user_ids: ids });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual(first.body.users.map((u: { user_id: string }) => u.user_id), [
    far.id,
    sleeper.id,
    near.id,
  ], "known users once each, in the request's order");
  assert.deepEqual(first.body.users.map((u: { is_online: boolean }) => u.is_online), [
    true,
    false,
    true,
  ]);
  assert.equal(first.body.cached, false);
  assert.equal(first.body.degraded, false);

  // Written back: the same ids are now answered from Redis (the unknown one never is).
  const second = await onlineStatus(viewer, { user_ids: [far.id, sleeper.id, near.id] });
  assert.equal(second.body.cached, true);
  assert.deepEqual(second.body.users, first.body.users);

  // The webhook's write-through wins over the write-back, at once.
  await report(near, "offline");
  const third = await onlineStatus(viewer, { user_ids: [near.id] });
  assert.equal(third.body.cached, true);
  assert.equal(third.body.users[0].is_online, false);
  await report(near, "online", near);
  assert.equal((await onlineStatus(viewer, { user_ids: [near.id] })).body.users[0].is_online, true);
});

test("online_status_rejects_bad_input_with_400", async () => {
  const cases: [unknown, string][] = [
    ["not json", "invalid_json"],
    [{}, "invalid_body"],
    [{ user_ids: "x" }, "invalid_body"],
    [{ user_ids: [] }, "invalid_body"],
    [{ user_ids: ["not-a-uuid"] }, "invalid_body"],
    [{ user_ids: [42] }, "invalid_body"],
    [{ user_ids: Array.from({ length: 10_001 }, () => crypto.randomUUID()) }, "too_many_ids"],
  ];
  for (const [body, code] of cases) {
    const res = await onlineStatus(viewer, body);
    assert.equal(
      res.status,
      400,
      `${JSON.stringify(body).slice(0, 40)}: ${JSON.stringify(res.body)}`,
    );
    assert.equal(res.body.error.code, code);
  }
  const many = await onlineStatus(viewer, {
    user_ids: Array.from({ length: 10_000 }, () => crypto.randomUUID()),
  });
  assert.equal(many.status, 200);
  assert.deepEqual(many.body.users, []);
  const anon = await call(`${FUNCTIONS_URL}/online-status`, {
    method: "POST",
    headers: { authorization: `Bearer ${ANON_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ user_ids: [near.id] }),
  });
  assert.equal(anon.status, 401);
  const get = await call(`${FUNCTIONS_URL}/online-status`, {
    headers: { authorization: `Bearer ${viewer.jwt}` },
  });
  assert.equal(get.status, 405);
});

test("supabase_js_clients_invoke_both_functions", async () => {
  const supabase = createClient(SUPABASE_URL, ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const headers = { Authorization: `Bearer ${viewer.jwt}` };
  const status = await supabase.functions.invoke("online-status", {
    body: { user_ids: [near.id, far.id] },
    headers,
  });
  assert.equal(status.error, null, String(status.error));
  assert.deepEqual(status.data.users.map((u: { user_id: string }) => u.user_id), [near.id, far.id]);

  const q = new URLSearchParams({
    lat: String(viewer.lat),
    lng: String(viewer.lng),
    radius_m: "4000",
  });
  const found = await supabase.functions.invoke(`nearby-online?${q}`, { method: "GET", headers });
  assert.equal(found.error, null, String(found.error));
  assert.deepEqual(found.data.users.map((u: { display_name: string }) => u.display_name), [
    "near",
    "mid",
    "far",
  ]);

  // Without a user's JWT the anon key alone is refused, as with any user-only function.
  const refused = await supabase.functions.invoke("online-status", {
    body: { user_ids: [near.id] },
  });
  assert.ok(refused.error, "the anon key alone is refused");
  assert.equal((refused.error as { context?: Response }).context?.status, 401);
  await (refused.error as { context?: Response }).context?.body?.cancel();
});

test("nearby_cache_expires_after_its_ttl", async () => {
  const server = await startFunctions({ SLTR_NEARBY_CACHE_TTL_SECONDS: "2" });
  try {
    const where = at(50, 50);
    const opts = { base: server.url, radius: 2700 };
    assert.equal((await nearby(viewer, where, opts)).body.cached, false);
    assert.equal((await nearby(viewer, where, opts)).body.cached, true);
    await new Promise((r) => setTimeout(r, 2300));
    assert.equal((await nearby(viewer, where, opts)).body.cached, false, "expired after 2 s");
    assert.equal((await nearby(viewer, where, opts)).body.cached, true);
  } finally {
    await stop(server.child);
  }
});

test("redis_dying_degrades_to_postgres_without_5xx_and_the_cache_refills", async () => {
  const port = freePort();
  let cache = startRedis(port);
  const server = await startFunctions({ REDIS_URL: `redis://127.0.0.1:${port}` });
  try {
    const health = async () => (await call(`${server.url}/health`)).body.redis === true;
    await waitFor("the private server's Redis", health);
    const expected = ["near", "mid", "far"];
    const one = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([one.body.cached, one.body.degraded, names(one)], [false, false, expected]);
    const two = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([two.body.cached, two.body.degraded, names(two)], [true, false, expected]);

    await stop(cache, "SIGKILL");
    for (let i = 0; i < 5; i++) {
      const down = await nearby(viewer, viewer, { base: server.url });
      assert.equal(down.status, 200, JSON.stringify(down.body));
      assert.deepEqual([down.body.cached, down.body.degraded, names(down)], [
        false,
        true,
        expected,
      ]);
      const status = await onlineStatus(viewer, { user_ids: [near.id, sleeper.id] }, server.url);
      assert.equal(status.status, 200, JSON.stringify(status.body));
      assert.equal(status.body.degraded, true);
      assert.deepEqual(status.body.users.map((u: { is_online: boolean }) => u.is_online), [
        true,
        false,
      ]);
    }

    cache = startRedis(port);
    await waitFor("the client to reconnect", async () => {
      const res = await nearby(viewer, viewer, { base: server.url });
      return res.status === 200 && !res.body.degraded;
    });
    // Refilled: an empty Redis, so a miss (which stored the answer) was just served; now hits.
    const again = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([again.body.cached, again.body.degraded, names(again)], [
      true,
      false,
      expected,
    ]);
  } finally {
    await stop(server.child);
    await stop(cache, "SIGKILL");
  }
});

test("postgres_down_is_503_with_retry_after_unless_the_cache_can_answer", async () => {
  const dead = `127.0.0.1:${freePort()}`;
  const server = await startFunctions({
    SUPABASE_DB_URL: `postgresql://postgres:postgres@${dead}/postgres`,
  });
  try {
    // Not cached anywhere: Postgres is needed, and it is gone.
    const miss = await nearby(viewer, at(-4000, -4000), { base: server.url, radius: 1234 });
    assert.equal(miss.status, 503, JSON.stringify(miss.body));
    assert.equal(miss.body.error.code, "database_unavailable");
    assert.ok(Number(miss.headers.get("retry-after")) > 0);
    const unknown = await onlineStatus(viewer, { user_ids: [crypto.randomUUID()] }, server.url);
    assert.equal(unknown.status, 503);
    assert.ok(Number(unknown.headers.get("retry-after")) > 0);

    // Cached (by the shared server, same Redis): still answered.
    await nearby(viewer, viewer, { radius: 3500 });
    const hit = await nearby(viewer, viewer, { base: server.url, radius: 3500 });
    assert.equal(hit.status, 200, JSON.stringify(hit.body));
    assert.equal(hit.body.cached, true);
    await onlineStatus(viewer, { user_ids: [near.id] });
    const known = await onlineStatus(viewer, { user_ids: [near.id] }, server.url);
    assert.equal(known.status, 200, JSON.stringify(known.body));
    assert.equal(known.body.cached, true);
  } finally {
    await stop(server.child);
  }
});

test("teardown_removes_the_neighbourhood", async () => {
  try {
    await deleteUsers();
    const [{ n }] = await db<{ n: number }[]>`
      select count(*)::int as n from auth.users where email like ${"%@" + EMAIL_DOMAIN}`;
    assert.equal(n, 0);
  } finally {
    redis.disconnect();
    await db.end({ timeout: 1 });
  }
});
