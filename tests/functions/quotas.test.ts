// Scraping and tracking, refused: per-user quotas on nearby-online, online-status and
// self-reports (429, Retry-After, the {"error"} shape), and the nearby probe point kept near the
// caller's own cell. On a functions server of its own with the production defaults (the local
// stack runs with loose ones for the other suites and the benchmarks).
import assert from "node:assert/strict";
import postgres from "postgres";
import { Redis } from "ioredis";
import { createClient } from "@supabase/supabase-js";
import { userJwt } from "../_lib/jwt.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { postSignedEvents } from "../_lib/webhook.ts";
import { ANON_KEY, API_URL, DB_URL, REDIS_URL } from "../_lib/env.ts";
import { test } from "../_lib/harness.ts";

const DOMAIN = "quotas.test";
const PRODUCTION = {
  SLTR_QUOTA_NEARBY: "20/120",
  SLTR_QUOTA_STATUS: "2000/60",
  SLTR_QUOTA_SELF_REPORT: "20/60",
  SLTR_NEARBY_MAX_PROBE_KM: "50",
};

const db = postgres(DB_URL, { max: 2, onnotice: () => {} });
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
const server = await startFunctionsServer(PRODUCTION);

// A spot of our own, far from other suites' users.
const HOME = { lat: 61 + Math.random(), lng: 25 + Math.random() };

async function user(
  where: { lat: number; lng: number } | null,
): Promise<{ id: string; jwt: string }> {
  const id = crypto.randomUUID();
  await db`insert into auth.users (id, aud, role, email) values (${id}, 'authenticated', 'authenticated', ${`${id}@${DOMAIN}`})`;
  await db`insert into public.profiles (id, display_name) values (${id}, 'Quota')`;
  if (where) {
    const event = { user_id: id, status: "online", at: new Date().toISOString(), ...where };
    const res = await postSignedEvents([event], server.url);
    assert.equal(res.status, 202, await res.text());
  }
  return { id, jwt: await userJwt(id) };
}

async function nearby(jwt: string, where: { lat: number; lng: number }) {
  const res = await fetch(`${server.url}/nearby-online?lat=${where.lat}&lng=${where.lng}`, {
    headers: { authorization: `Bearer ${jwt}` },
  });
  return { status: res.status, headers: res.headers, body: await res.json() };
}

test("tiling_a_city_is_refused_after_the_quota_with_429_and_retry_after", async () => {
  const me = await user(HOME);
  const answers = [];
  // 30 probes a few hundred metres apart, as fast as a script can: the first 20 are answered.
  for (let i = 0; i < 30; i++) {
    answers.push(await nearby(me.jwt, { lat: HOME.lat + i * 0.003, lng: HOME.lng }));
  }
  const ok = answers.filter((a) => a.status === 200).length;
  assert.equal(ok, 20, `answered: ${answers.map((a) => a.status).join(",")}`);
  const refused = answers.at(-1)!;
  assert.equal(refused.status, 429);
  assert.equal(refused.body.error.code, "rate_limited");
  assert.equal(typeof refused.body.error.message, "string");
  const retry = Number(refused.headers.get("retry-after"));
  assert.ok(retry >= 1 && retry <= 6, `Retry-After ${retry}: one token refills in 6 s`);
  // Another user is not affected by the first one's quota.
  const other = await user(HOME);
  assert.equal((await nearby(other.jwt, HOME)).status, 200);
});

test("a_probe_far_from_the_callers_own_cell_is_refused", async () => {
  const me = await user(HOME);
  assert.equal(
    (await nearby(me.jwt, { lat: HOME.lat + 0.3, lng: HOME.lng })).status,
    200,
    "33 km away: fine",
  );
  const far = await nearby(me.jwt, { lat: HOME.lat + 1, lng: HOME.lng }); // 111 km
  assert.equal(far.status, 403);
  assert.equal(far.body.error.code, "probe_too_far");
  const paris = await nearby(me.jwt, { lat: 48.85, lng: 2.35 });
  assert.equal(paris.body.error.code, "probe_too_far");
});

test("a_caller_without_any_known_location_cannot_probe_at_all", async () => {
  const nowhere = await user(null);
  const res = await nearby(nowhere.jwt, HOME);
  assert.equal(res.status, 403);
  assert.equal(res.body.error.code, "location_required");
});

test("a_caller_the_index_has_not_seen_is_placed_from_postgres", async () => {
  // Offline with a stored location: the index does not hold them; Postgres does.
  const id = crypto.randomUUID();
  await db`insert into auth.users (id, aud, role, email) values (${id}, 'authenticated', 'authenticated', ${`${id}@${DOMAIN}`})`;
  await db`insert into public.profiles (id, display_name, latitude, longitude) values (${id}, 'Quota', ${HOME.lat}, ${HOME.lng})`;
  const res = await nearby(await userJwt(id), HOME);
  assert.equal(res.status, 200, JSON.stringify(res.body));
});

test("polling_thousands_of_ids_runs_out_of_the_id_budget", async () => {
  const me = await user(HOME);
  const ids = Array.from({ length: 1000 }, () => crypto.randomUUID());
  const statuses = [];
  for (let i = 0; i < 3; i++) {
    const res = await fetch(`${server.url}/online-status`, {
      method: "POST",
      headers: { authorization: `Bearer ${me.jwt}`, "content-type": "application/json" },
      body: JSON.stringify({ user_ids: ids }),
    });
    statuses.push(res.status);
    if (res.status === 429) {
      const body = await res.json();
      assert.equal(body.error.code, "rate_limited");
      assert.ok(Number(res.headers.get("retry-after")) >= 1);
    } else await res.body?.cancel();
  }
  assert.deepEqual(statuses, [200, 200, 429], "2,000 ids a minute");
  // More ids in one call than the bucket ever holds: a 400, not a 429 whose retry never works.
  const other = await user(HOME);
  const tooMany = await fetch(`${server.url}/online-status`, {
    method: "POST",
    headers: { authorization: `Bearer ${other.jwt}`, "content-type": "application/json" },
    body: JSON.stringify({ user_ids: Array.from({ length: 2001 }, () => crypto.randomUUID()) }),
  });
  assert.equal(tooMany.status, 400);
  assert.equal((await tooMany.json()).error.code, "too_many_ids");
});

test("self_reports_beyond_the_quota_are_refused_and_change_nothing", async () => {
  const me = await user(null);
  const statuses: number[] = [];
  for (let i = 0; i < 22; i++) {
    const res = await fetch(`${server.url}/presence-webhook`, {
      method: "POST",
      headers: { authorization: `Bearer ${me.jwt}`, "content-type": "application/json" },
      body: JSON.stringify({
        events: [{
          status: "online",
          at: new Date(Date.now() + i).toISOString(),
          lat: HOME.lat,
          lng: HOME.lng + i * 0.01,
        }],
      }),
    });
    statuses.push(res.status);
    await res.body?.cancel();
  }
  assert.equal(statuses.filter((s) => s === 202).length, 20);
  assert.deepEqual(statuses.slice(-2), [429, 429]);
  const [held] = await db<{ longitude: number }[]>`
    select coalesce(b.longitude, p.longitude) as longitude
    from public.profiles as p left join public.presence_buffer as b on b.user_id = p.id where p.id = ${me.id}`;
  assert.ok(held.longitude < HOME.lng + 20 * 0.01, "the refused reports moved nothing");
});

test("supabase_rpc_calls_share_the_limits_in_the_database", async () => {
  // Through the stack's PostgREST stand-in, which calls the db-pre-request hook as PostgREST.
  const me = await user(null);
  const supabase = createClient(API_URL, ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
    accessToken: () => Promise.resolve(me.jwt),
  });
  const statuses: number[] = [];
  for (let i = 0; i < 21; i++) {
    const { status } = await supabase.rpc("nearby_online_users", { lat: HOME.lat, lng: HOME.lng });
    statuses.push(status);
  }
  assert.equal(statuses.filter((s) => s === 200).length, 20, statuses.join(","));
  const { error, status } = await supabase.rpc("nearby_online_users", {
    lat: HOME.lat,
    lng: HOME.lng,
  });
  assert.equal(status, 429);
  assert.equal(error?.code, "rate_limited");
  const raw = await fetch(`${API_URL}/rest/v1/rpc/nearby_online_users`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${me.jwt}`,
      apikey: ANON_KEY,
      "content-type": "application/json",
    },
    body: JSON.stringify({ lat: HOME.lat, lng: HOME.lng }),
  });
  assert.equal(raw.status, 429);
  assert.ok(Number(raw.headers.get("retry-after")) >= 1);
  await raw.body?.cancel();
});

test("teardown", async () => {
  const gone = await db<{ id: string }[]>`delete from auth.users where email like ${
    "%@" + DOMAIN
  } returning id`;
  for (const { id } of gone) {
    await redis.del(
      `{live}:user:${id}`,
      `{live}:quota:nearby:${id}`,
      `{live}:quota:status:${id}`,
      `{live}:quota:self_report:${id}`,
    );
    await redis.srem("{live}:online", id);
  }
  server.child.kill();
  await server.child.status;
  await db.end();
  redis.disconnect();
});
