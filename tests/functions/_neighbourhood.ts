// Shared by the read path suites (nearby_online, online_status, live_index and
// supabase_js_invoke .test.ts): a neighbourhood of users in a spot of its own, the calls to
// nearby-online, online-status and the webhook, and a private Redis and functions server to
// break. Each suite file gets its own pools and its own neighbourhood (Deno runs each test
// file in a worker of its own); its last test removes them.
import assert from "node:assert/strict";
import postgres from "postgres";
import { Redis } from "ioredis";
import { forget } from "../../functions/_shared/live_index.ts";
import { DB_URL, FUNCTIONS_URL, REDIS_URL } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { startFunctionsServer } from "../_lib/servers.ts";

const EMAIL_DOMAIN = "read-path.test";

export const db = postgres(DB_URL, { max: 4, onnotice: () => {} });
export const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });

// ---- the cast ------------------------------------------------------------------------------

// A spot of our own in the South Pacific for this run, so cached cells and other data never mix.
export const ORIGIN = { lat: -30 - Math.random() * 10, lng: -140 + Math.random() * 10 };
export const METRES_PER_DEGREE = 111_195;

/** A point `east` and `north` metres from the origin. */
export function at(east: number, north: number): { lat: number; lng: number } {
  return {
    lat: ORIGIN.lat + north / METRES_PER_DEGREE,
    lng: ORIGIN.lng + east / (METRES_PER_DEGREE * Math.cos((ORIGIN.lat * Math.PI) / 180)),
  };
}

export interface Person {
  id: string;
  name: string;
  jwt: string;
  lat: number;
  lng: number;
}

let serial = 0;

export async function createUser(
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

export async function deleteUsers(): Promise<void> {
  const ids = await db<{ id: string }[]>`
    delete from auth.users where email like ${"%@" + EMAIL_DOMAIN} returning id`;
  if (ids.length) await forget(redis, ids.map((r) => r.id));
}

// ---- HTTP ----------------------------------------------------------------------------------

export interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

export async function call(url: string, init: RequestInit = {}): Promise<Answer> {
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

export interface NearbyOptions {
  radius?: number;
  limit?: number;
  base?: string;
}

export async function nearby(
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

export const names = (a: Answer) =>
  a.body.users.map((u: { display_name: string }) => u.display_name);

export async function onlineStatus(
  viewer: Person,
  body: unknown,
  base = FUNCTIONS_URL,
): Promise<Answer> {
  return await call(`${base}/online-status`, {
    method: "POST",
    headers: { authorization: `Bearer ${viewer.jwt}`, "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** A presence event through the real webhook, as the user's own app reports it. */
export async function report(
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

export async function waitFor(
  what: string,
  ok: () => Promise<boolean>,
  ms = 15_000,
): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await ok().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not happen within ${ms} ms`);
}

export function startRedis(port: number): Deno.ChildProcess {
  return new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
}

export async function startFunctions(env: Record<string, string>) {
  return await startFunctionsServer(env, "health");
}

export async function stop(
  child: Deno.ChildProcess,
  signal: Deno.Signal = "SIGTERM",
): Promise<void> {
  try {
    child.kill(signal);
  } catch {
    // already gone
  }
  await child.status;
}

// ---- the neighbourhood ---------------------------------------------------------------------

export let viewer: Person;
export let near: Person;
export let mid: Person;
export let far: Person;
export let away: Person;
export let sleeper: Person;

/** A suite's first test: the neighbourhood, online through the webhook, the index built. */
export async function createNeighbourhood(): Promise<void> {
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
  // The sleeper is known to the index too, as offline (as once it has come and gone).
  await report(sleeper, "offline");
  // A cold index (a fresh Redis, or one a benchmark just emptied) is built by the first reads.
  await waitFor(
    "the live index to be built",
    async () => (await nearby(viewer, viewer)).body.cached,
  );
}

/** A suite's last test: the neighbourhood removed, the pools closed. */
export async function removeNeighbourhood(): Promise<void> {
  try {
    await deleteUsers();
    const [{ n }] = await db<{ n: number }[]>`
      select count(*)::int as n from auth.users where email like ${"%@" + EMAIL_DOMAIN}`;
    assert.equal(n, 0);
  } finally {
    redis.disconnect();
    await db.end({ timeout: 1 });
  }
}
