// The read path over HTTP against the running stack: nearby-online and online-status answered
// from the Redis live index (no database statement), right on the next read after the webhook
// accepts an arrival, a leave or a move, repaired by the reconciliation, rebuilt when Redis is
// cold, Redis dying and coming back (on a private Redis and functions server started here, so
// the shared ones are never disturbed), and a client calling them with supabase-js.
import assert from "node:assert/strict";
import postgres from "postgres";
import { Redis } from "ioredis";
import { createClient } from "@supabase/supabase-js";
import {
  ANON_KEY,
  API_URL as SUPABASE_URL,
  DB_URL,
  FUNCTIONS_URL,
  REDIS_URL,
  SERVICE_ROLE_KEY,
} from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { freePort } from "../_lib/ports.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { forget, prune, redisMicros } from "../../functions/_shared/live_index.ts";
import { FreezableProxy } from "../_lib/proxy.ts";
import { sleep, test } from "../_lib/test.ts";

const EMAIL_DOMAIN = "read-path.test";

const db = postgres(DB_URL, { max: 4, onnotice: () => {} });
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });

// Shared pools live across tests; the last test closes them.

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
  if (ids.length) await forget(redis, ids.map((r) => r.id));
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
  viewer = await createUser("viewer", at(0, 0), false);
  // 800 m apart: more than the privacy grid can reorder (it moves anyone by <= ~354 m).
  near = await createUser("near", at(500, 0), false);
  sleeper = await createUser("sleeper", at(0, 1300), false);
  mid = await createUser("mid", at(0, -2100), false);
  far = await createUser("far", at(-2900, 0), false);
  away = await createUser("away", at(0, 9000), false);
  // Online as users come online: through the webhook, which writes the live index.
  for (const p of [viewer, near, mid, far, away]) await report(p, "online", p);
  // A cold index (a fresh Redis, or one a benchmark just emptied) is built by the first reads.
  await waitFor(
    "the live index to be built",
    async () => (await nearby(viewer, viewer)).body.cached,
  );
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

test("nearby_answers_nearest_first_without_the_caller_from_the_index", async () => {
  const first = await nearby(viewer, viewer);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual(Object.keys(first.body).sort(), ["cached", "degraded", "users"]);
  assert.deepEqual(names(first), ["near", "mid", "far"]);
  assert.equal(first.body.cached, true, "from the index: no database statement");
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
    assert.equal(Date.parse(u.last_seen_at) % 60_000, 0, "last seen to the minute, no finer");
  }
  // Anyone else gets their own answer, never themselves.
  assert.deepEqual(names(await nearby(near, viewer)), ["viewer", "mid", "far"]);
  // The radius and the limit are the question's.
  assert.deepEqual(names(await nearby(viewer, viewer, { radius: 12_000 })), [
    "near",
    "mid",
    "far",
    "away",
  ]);
  assert.deepEqual(names(await nearby(viewer, viewer, { limit: 2 })), ["near", "mid"]);
});

test("leaves_arrivals_and_moves_are_right_on_the_next_read", async () => {
  await report(mid, "offline");
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "far"], "mid left");
  await report(sleeper, "online", sleeper);
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "sleeper", "far"], "arrived");
  // Moved 3.15 km east: its cell centre (up to 250 m off in each axis) lies 3.4-3.9 km away,
  // beyond far's (2.65-3.16 km) and inside the 4 km radius wherever the grid falls.
  await report(near, "online", at(3650, 0));
  const moved = await nearby(viewer, viewer);
  assert.deepEqual(names(moved), ["sleeper", "far", "near"], "moved, at its new distance");
  assert.equal(moved.body.cached, true);
  await report(near, "online", near);
  await report(mid, "online", mid);
  await report(sleeper, "offline");
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "mid", "far"]);
});

test("a_write_the_index_missed_is_repaired_by_the_reconciliation", async () => {
  // Online in Postgres only (as if the webhook's write-through had failed): the index does not
  // know yet; the reconciliation (due once a minute; made due here) finds it.
  await db`select private.ingest_presence(${
    db.json([{
      user_id: sleeper.id,
      status: "online",
      at: new Date().toISOString(),
      lat: sleeper.lat,
      lng: sleeper.lng,
    }])
  })`;
  assert.ok(!names(await nearby(viewer, viewer)).includes("sleeper"));
  await redis.del("{live}:reconciled");
  await waitFor(
    "the reconciliation",
    async () => names(await nearby(viewer, viewer)).includes("sleeper"),
    5000,
  );
  await report(sleeper, "offline");
});

test("the_reconciliation_keeps_what_the_webhook_wrote_after_its_snapshot_began", async () => {
  // A snapshot begins; then a batch commits whose event is older than that (a delayed batch,
  // a slow clock): Postgres's snapshot does not have it, and the prune must not drop it. A
  // user written before the snapshot and absent from it is dropped.
  const at = new Date().toISOString(); // newer than sleeper's last event, older than `began`
  await sleep(5);
  const began = await redisMicros(redis);
  const res = await call(`${FUNCTIONS_URL}/presence-webhook`, {
    method: "POST",
    headers: { authorization: `Bearer ${sleeper.jwt}`, "content-type": "application/json" },
    body: JSON.stringify({
      events: [{
        status: "online",
        at,
        lat: sleeper.lat,
        lng: sleeper.lng,
      }],
    }),
  });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  const snapshot = (await redis.smembers("{live}:online")).filter((id) =>
    id !== sleeper.id && id !== far.id
  );
  assert.ok(await prune(redis, began, snapshot) >= 1);
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "sleeper", "mid"]);
  await report(far, "online", far);
  await report(sleeper, "offline");
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "mid", "far"]);
});

test("gps_noise_across_a_cell_edge_never_moves_a_still_user_to_another_cell", async () => {
  // A row edge of the grid 1 km north of the viewer; fixes alternate 15 m either side of it.
  const edgeLat = -90 + Math.floor((at(0, 1000).lat + 90) / 0.0045) * 0.0045;
  const fix = (north: number) => ({ lat: edgeLat + north / METRES_PER_DEGREE, lng: viewer.lng });
  const still = await createUser("still", fix(10), false);
  const shown = async () => {
    const [pg] = await db<{ cell: string }[]>`
      select cell_lat || ',' || cell_lng as cell
      from private.live_index_snapshot(false, ${[still.id]}::uuid[])`;
    const [x, y] = await redis.hmget(`{live}:user:${still.id}`, "x", "y");
    return { pg: pg.cell, redis: `${y},${x}` };
  };
  const distance = async () =>
    (await nearby(viewer, viewer)).body.users.find((u: { user_id: string }) =>
      u.user_id === still.id
    )
      ?.distance_m;
  await report(still, "online", fix(10));
  const first = await shown();
  const firstDistance = await distance();
  for (const north of [-15, 12, -8, -15, 14]) {
    await report(still, "online", fix(north));
    assert.deepEqual(await shown(), first, `a fix ${north} m from the edge`);
    assert.equal(await distance(), firstDistance);
  }
  await report(still, "online", fix(-150));
  const moved = await shown();
  assert.notDeepEqual(moved, first, "150 m into the next cell moves them");
  assert.equal(moved.pg, moved.redis, "Postgres and the index agree");
  await report(still, "offline"); // out of the neighbourhood's answers again
});

test("no_answer_tells_where_others_asked_before_or_can_be_invalidated_for_everyone", async () => {
  // The old answer cache said `cached` (and answered faster) per ~220 m query cell, finer
  // than the grid, and an arrival without a location invalidated every answer in the world.
  // The live index has neither: any point, asked or not, is answered from the index alike.
  for (let i = 0; i < 8; i++) {
    const where = at(Math.random() * 6000 - 3000, Math.random() * 6000 - 3000);
    const answer = await nearby(viewer, where);
    assert.equal(answer.status, 200);
    assert.deepEqual(
      [answer.body.cached, answer.body.degraded],
      [true, false],
      "a point never asked",
    );
  }
  const before = await redis.keys("nearby:*");
  await report(sleeper, "online"); // an arrival without a location
  assert.deepEqual(await redis.keys("nearby:*"), before, "no answer cache to invalidate");
  assert.deepEqual(before, []);
  await report(sleeper, "offline");
});

test("online_status_answers_from_the_index", async () => {
  const unknown = crypto.randomUUID();
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
  // The unknown id is one the index does not hold: Postgres was asked (one query).
  assert.equal(first.body.cached, false);
  const known = await onlineStatus(viewer, { user_ids: [far.id, sleeper.id, near.id] });
  assert.equal(known.body.cached, true, "known users: no database statement");
  assert.deepEqual(known.body.users, first.body.users);
  for (const u of known.body.users) assert.equal(Date.parse(u.last_seen_at) % 60_000, 0);
  await report(near, "offline");
  const third = await onlineStatus(viewer, { user_ids: [near.id] });
  assert.deepEqual([third.body.cached, third.body.users[0].is_online], [true, false]);
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

test("redis_dying_degrades_to_postgres_then_a_cold_redis_is_rebuilt", async () => {
  const port = freePort();
  let cache = startRedis(port);
  const server = await startFunctions({ REDIS_URL: `redis://127.0.0.1:${port}` });
  try {
    const health = async () => (await call(`${server.url}/health`)).body.redis === true;
    await waitFor("the private server's Redis", health);
    const expected = ["near", "mid", "far"];
    // A cold Redis: Postgres answers while one snapshot builds the index, then the index does.
    const one = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([one.body.cached, one.body.degraded, names(one)], [false, false, expected]);
    await waitFor(
      "the rebuild",
      async () => (await nearby(viewer, viewer, { base: server.url })).body.cached,
    );
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
    // Back, empty: rebuilt from one snapshot, and answering from the index again.
    await waitFor(
      "the rebuild",
      async () => (await nearby(viewer, viewer, { base: server.url })).body.cached,
    );
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

test("postgres_down_the_index_still_answers_and_what_needs_postgres_is_503", async () => {
  const dead = `127.0.0.1:${freePort()}`;
  const server = await startFunctions({
    SUPABASE_DB_URL: `postgresql://postgres:postgres@${dead}/postgres`,
  });
  try {
    // The shared Redis's index needs no database.
    const found = await nearby(viewer, viewer, { base: server.url });
    assert.equal(found.status, 200, JSON.stringify(found.body));
    assert.deepEqual([found.body.cached, names(found)], [true, ["near", "mid", "far"]]);
    const known = await onlineStatus(viewer, { user_ids: [near.id] }, server.url);
    assert.equal(known.status, 200, JSON.stringify(known.body));
    assert.equal(known.body.cached, true);
    // An id the index does not hold needs Postgres, and it is gone.
    const unknown = await onlineStatus(viewer, { user_ids: [crypto.randomUUID()] }, server.url);
    assert.equal(unknown.status, 503);
    assert.equal(unknown.body.error.code, "database_unavailable");
    assert.ok(Number(unknown.headers.get("retry-after")) > 0);
  } finally {
    await stop(server.child);
  }
});

test("reads_postgres_answers_for_want_of_the_index_are_bounded", async () => {
  // Redis down, and Postgres (behind a proxy this test can freeze) slow: one read may wait on
  // it (SLTR_FALLBACK_CONCURRENCY=1); the next is refused at once with 503 + Retry-After
  // instead of piling onto a database that is already behind.
  const pooler = new URL(Deno.env.get("SUPABASE_DB_URL")!);
  const proxy = new FreezableProxy(Number(pooler.port));
  const viaProxy = new URL(pooler);
  viaProxy.host = `127.0.0.1:${proxy.port}`;
  const server = await startFunctions({
    REDIS_URL: `redis://127.0.0.1:${freePort()}`,
    SUPABASE_DB_URL: viaProxy.toString(),
    SLTR_FALLBACK_CONCURRENCY: "1",
  });
  try {
    const first = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([first.status, first.body.degraded, names(first)], [200, true, [
      "near",
      "mid",
      "far",
    ]]);
    proxy.freeze();
    const waiting = nearby(viewer, viewer, { base: server.url });
    await sleep(300); // it holds the one slot, waiting on the frozen database
    const refused = await nearby(viewer, viewer, { base: server.url });
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, "overloaded");
    assert.equal(refused.headers.get("retry-after"), "1");
    const status = await onlineStatus(viewer, { user_ids: [near.id] }, server.url);
    assert.equal(status.status, 503, JSON.stringify(status.body));
    assert.equal(status.body.error.code, "overloaded");
    proxy.thaw();
    const answered = await waiting;
    assert.deepEqual([answered.status, answered.body.degraded], [200, true]);
    const after = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([after.status, after.body.degraded], [200, true], "the slot is free again");
    const metrics = await (await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    })).text();
    assert.match(metrics, /sltr_fallbacks_refused_total\{function="nearby-online"\} 1/);
    assert.match(metrics, /sltr_fallbacks_refused_total\{function="online-status"\} 1/);
  } finally {
    proxy.close();
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
