// Shared by the presence webhook suites (tests/functions/presence_webhook_*.test.ts): the
// webhook's URL, requests signed or as a user, users made for a suite and removed after it,
// and what Postgres and the Redis live index hold for them. Each suite file gets its own
// pools (Deno runs each test file in a worker of its own); its last test closes them.
import assert from "node:assert/strict";
import postgres from "postgres";
import { Redis } from "ioredis";
import { signBody } from "../../functions/_shared/auth.ts";
import { forget, userKey } from "../../functions/_shared/live_index.ts";
import { DB_URL, FUNCTIONS_URL, REDIS_URL, WEBHOOK_SECRET as SECRET } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";

export const WEBHOOK = `${FUNCTIONS_URL}/presence-webhook`;
const EMAIL_DOMAIN = "presence-webhook.test";

export const db = postgres(DB_URL, { max: 6, onnotice: () => {} });
export const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
const created: string[] = [];

export async function sign(
  body: string,
  opts: { secret?: string; t?: number } = {},
): Promise<string> {
  return await signBody(opts.secret ?? SECRET, body, opts.t);
}

export interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

export async function post(
  body: unknown,
  headers: Record<string, string> = {},
  url = WEBHOOK,
): Promise<Answer> {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  const res = await fetch(url, {
    method: "POST",
    body: text,
    headers: { "content-type": "application/json", ...headers },
  });
  const raw = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    parsed = raw;
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

export async function postSigned(body: unknown, url = WEBHOOK): Promise<Answer> {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return await post(text, { "x-sltr-signature": await sign(text) }, url);
}

export async function postAs(userId: string, body: unknown): Promise<Answer> {
  return await post(body, { authorization: `Bearer ${await userJwt(userId)}` });
}

export function expectError(res: Answer, status: number, code: string): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body?.error?.code, code, JSON.stringify(res.body));
  assert.equal(typeof res.body.error.message, "string");
}

export interface Event {
  user_id?: string;
  status: "online" | "offline";
  at: string;
  lat?: number;
  lng?: number;
}

export const ev = (
  userId: string | undefined,
  status: "online" | "offline",
  atMs: number,
  extra: Partial<Event> = {},
): Event => ({
  ...(userId ? { user_id: userId } : {}),
  status,
  at: new Date(atMs).toISOString(),
  ...extra,
});

export async function createUsers(
  n: number,
  profile: { isOnline?: boolean; lastSeenAt?: Date | null } = {},
): Promise<string[]> {
  const ids = Array.from({ length: n }, () => crypto.randomUUID());
  created.push(...ids);
  await db`
    insert into auth.users (id, aud, role, email)
    select id, 'authenticated', 'authenticated', id || ${"@" + EMAIL_DOMAIN}
    from unnest(${ids}::uuid[]) as id`;
  await db`
    insert into public.profiles (id, display_name, is_online, last_seen_at)
    select id, 'presence test', ${profile.isOnline ?? false}, ${profile.lastSeenAt ?? null}
    from unnest(${ids}::uuid[]) as id`;
  return ids;
}

export interface Held {
  is_online: boolean;
  last_seen_at: number | null;
  latitude: number | null;
  longitude: number | null;
}

/** The state Postgres holds, by the real-time rule (a newer buffered event wins). */
export async function held(ids: string[]): Promise<Map<string, Held>> {
  const rows = await db<
    {
      id: string;
      is_online: boolean;
      last_seen_at: Date | null;
      latitude: number | null;
      longitude: number | null;
    }[]
  >`
    select p.id::text as id,
           case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
             then b.is_online else p.is_online end as is_online,
           case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
             then b.event_at else p.last_seen_at end as last_seen_at,
           case when b.latitude is not null and b.event_at > coalesce(p.last_seen_at, '-infinity')
             then b.latitude else p.latitude end as latitude,
           case when b.latitude is not null and b.event_at > coalesce(p.last_seen_at, '-infinity')
             then b.longitude else p.longitude end as longitude
    from public.profiles as p
    left join public.presence_buffer as b on b.user_id = p.id
    where p.id = any(${ids}::uuid[])`;
  return new Map(
    rows.map(({ id, last_seen_at, ...rest }) => [id, {
      ...rest,
      last_seen_at: last_seen_at?.getTime() ?? null,
    }]),
  );
}

export async function heldOne(id: string): Promise<Held> {
  return (await held([id])).get(id)!;
}

/** What the live index holds for a user (its hash), with the time as the webhook's canonical
 * microsecond timestamp. */
export async function cached(
  id: string,
): Promise<{ is_online: boolean; last_seen_at: string } | null> {
  const [o, s] = await redis.hmget(userKey(id), "o", "s");
  if (o === null) return null;
  const us = Number(s);
  const ms = Math.floor(us / 1000);
  return {
    is_online: o === "1",
    last_seen_at: new Date(ms).toISOString().replace("Z", `${String(us % 1000).padStart(3, "0")}Z`),
  };
}

export async function assertUntouched(ids: string[]): Promise<void> {
  for (const [id, state] of await held(ids)) {
    assert.deepEqual(
      state,
      { is_online: false, last_seen_at: null, latitude: null, longitude: null },
      `${id} is untouched`,
    );
    assert.equal(await cached(id), null, `${id} has no Redis key`);
  }
}

export const flush = async () => (await db`select private.flush_presence() as n`)[0].n as number;

/** A suite's first test: users an interrupted earlier run left behind are removed. */
export async function removeLeftovers(): Promise<void> {
  await db`
    delete from auth.users
    where email like ${"%@" + EMAIL_DOMAIN} and created_at < now() - interval '10 minutes'`;
}

/** A suite's last test: its users and their keys removed, its pools closed. */
export async function teardown(): Promise<void> {
  if (created.length) {
    await db`delete from auth.users where id = any(${created}::uuid[])`;
    await forget(redis, created);
  }
  await db.end({ timeout: 1 });
  redis.disconnect();
}
