// Shared by the Realtime suites: the running stack (its Realtime endpoint, webhook, bridge and
// database), users made in the real database, presence tickets, and supabase-js clients on
// the real WebSocket.
import postgres from "postgres";
import { Redis } from "ioredis";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import type { Database } from "../../client/database.types.ts";
import { issueTicket } from "../../functions/_shared/presence_ticket.ts";
import { freePort, userJwt } from "../functions/_helpers.ts";

export const API_URL = Deno.env.get("SUPABASE_URL") ?? "http://127.0.0.1:54321";
export const FUNCTIONS_URL = `${API_URL}/functions/v1`;
export const ANON_KEY = Deno.env.get("SUPABASE_ANON_KEY")!;
export const SERVICE_ROLE_KEY = Deno.env.get("SUPABASE_SERVICE_ROLE_KEY")!;
export const WEBHOOK_SECRET = Deno.env.get("PRESENCE_WEBHOOK_SECRET")!;
export const REDIS_URL = Deno.env.get("REDIS_URL") ?? "redis://127.0.0.1:54379";
export const DB_URL = Deno.env.get("DB_URL") ??
  "postgresql://postgres:postgres@127.0.0.1:54322/postgres";
export const BRIDGE_URL = `http://127.0.0.1:${Deno.env.get("BRIDGE_HEALTH_PORT") ?? "54340"}`;

export type Sql = postgres.Sql;
export type Client = SupabaseClient<Database>;

/** A Realtime test: realtime-js leaves a timer behind on disconnect; everything opened is
 * closed in finally. */
export function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}

export function database(): Sql {
  return postgres(DB_URL, { max: 2, onnotice: () => {} });
}

export async function eventually(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Users in auth.users and profiles, committed (the webhook sees them); delete them after. */
export async function createUsers(
  sql: Sql,
  tag: string,
  n: number,
  location?: { lat: number; lng: number },
): Promise<string[]> {
  const ids = Array.from({ length: n }, () => crypto.randomUUID());
  await sql.begin(async (tx) => {
    for (const [i, id] of ids.entries()) {
      await tx`insert into auth.users (id, aud, role, email)
               values (${id}, 'authenticated', 'authenticated', ${`${tag}-${i}@realtime.test`})`;
      await tx`insert into public.profiles (id, display_name, latitude, longitude)
               values (${id}, ${`${tag} ${i}`}, ${location?.lat ?? null}, ${
        location?.lng ?? null
      })`;
    }
  });
  return ids;
}

/** Removes the users (profiles and buffered presence cascade) and their presence keys. */
export async function deleteUsers(sql: Sql, ids: string[]): Promise<void> {
  if (!ids.length) return;
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, lazyConnect: true });
  try {
    await redis.connect();
    await redis.del(...ids.map((id) => `presence:${id}`));
  } catch {
    /* Redis is a cache: a key left behind expires by itself */
  } finally {
    redis.disconnect();
  }
  await sql`delete from realtime.messages as m
            where m.topic = 'presence:changes'
              and exists (select from jsonb_array_elements(m.payload -> 'changes') as c
                          where (c ->> 'user_id')::uuid = any (${ids}::uuid[]))`;
  await sql`delete from auth.users where id = any (${ids}::uuid[])`;
}

export interface ClientOptions {
  /** The user's access token (default: none, the key alone). */
  token?: string | (() => Promise<string>);
  url?: string;
  vsn?: "1.0.0" | "2.0.0";
  fetch?: typeof fetch;
  timeoutMs?: number;
}

/** A supabase-js client on the real local endpoint, with quick test reconnects. */
export function client(key = ANON_KEY, o: ClientOptions = {}): Client {
  const token = o.token;
  return createClient<Database>(o.url ?? API_URL, key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    ...(token
      ? { accessToken: typeof token === "string" ? () => Promise.resolve(token) : token }
      : {}),
    ...(o.fetch ? { global: { fetch: o.fetch } } : {}),
    realtime: {
      reconnectAfterMs: () => 100,
      timeout: o.timeoutMs ?? 10_000,
      ...(o.vsn ? { vsn: o.vsn } : {}),
    },
  });
}

/** A signed-in user's client: their JWT on every join. */
export async function userClient(userId: string, o: ClientOptions = {}): Promise<Client> {
  const token = await userJwt(userId);
  const c = client(ANON_KEY, { token, ...o });
  await c.realtime.setAuth();
  return c;
}

/** Closes a client's socket and channels. */
export async function closeClient(c: Client): Promise<void> {
  await c.removeAllChannels();
  await c.realtime.disconnect();
}

/** Resolves with the status a channel settles on after subscribe(). */
export function subscribed(
  channel: ReturnType<Client["channel"]>,
): Promise<{ status: string; error?: Error }> {
  return new Promise((resolve) => {
    channel.subscribe((status, error) => {
      resolve({ status, error });
    });
  });
}

/** A presence ticket for a user, as functions/presence-ticket issues it. */
export function ticketFor(
  userId: string,
  o: { ttlSeconds?: number; nowSeconds?: number; secret?: string } = {},
): string {
  return issueTicket(userId, o.secret ?? WEBHOOK_SECRET, o.ttlSeconds, o.nowSeconds).ticket;
}

/** The stack's presence bridge figures (its /health JSON). */
export async function bridgeStats(): Promise<{ rejected: Record<string, number>; online: number }> {
  return await (await fetch(`${BRIDGE_URL}/health`)).json();
}

/** Online status of users as the batch RPC answers it. */
export async function onlineMap(sql: Sql, ids: string[]): Promise<Record<string, boolean>> {
  const rows = await sql<{ user_id: string; is_online: boolean }[]>`
    select user_id, is_online from public.get_online_users_batch(${ids}::uuid[])`;
  return Object.fromEntries(rows.map((r) => [r.user_id, r.is_online]));
}

/** A presence bridge process of its own, against `apiUrl` (a private server's). */
export async function startBridge(apiUrl: string, env: Record<string, string> = {}) {
  const root = Deno.env.get("SLTR_ROOT") ?? ".";
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", `${root}/workers/presence-bridge/main.ts`],
    env: {
      ...Deno.env.toObject(),
      SUPABASE_URL: apiUrl,
      SUPABASE_SERVICE_ROLE_KEY: SERVICE_ROLE_KEY,
      PRESENCE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      BRIDGE_HEALTH_PORT: String(port),
      BRIDGE_HEALTH_HOST: "127.0.0.1",
      BRIDGE_STATS_INTERVAL_MS: "0",
      ...env,
    },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const health = `http://127.0.0.1:${port}/health`;
  await eventually(
    async () => {
      try {
        const res = await fetch(health);
        await res.body?.cancel();
        return res.status === 200;
      } catch {
        return false;
      }
    },
    "the private bridge joined",
    15_000,
  );
  return {
    health,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}
