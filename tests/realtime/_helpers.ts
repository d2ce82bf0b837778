// Shared by the Realtime and client suites: users made in the real database, presence tickets,
// supabase-js clients on the real WebSocket, and the stack's bridge figures. The stack's
// settings, the test wrapper, tokens and private servers are in tests/_lib.
import postgres from "postgres";
import { Redis } from "ioredis";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import type { Database } from "../../client/database.types.ts";
import { issueTicket } from "../../functions/_shared/presence_ticket.ts";
import { ANON_KEY, API_URL, BRIDGE_URL, DB_URL, REDIS_URL, WEBHOOK_SECRET } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";

export type Sql = postgres.Sql;
export type Client = SupabaseClient<Database>;

export function database(): Sql {
  return postgres(DB_URL, { max: 2, onnotice: () => {} });
}

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
  o: { ttlSeconds?: number; nowSeconds?: number; secret?: string; topic?: string } = {},
): string {
  const secret = o.secret ?? WEBHOOK_SECRET;
  return issueTicket(userId, secret, o.ttlSeconds, o.nowSeconds, o.topic).ticket;
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
