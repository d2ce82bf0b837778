// Shared by the Realtime suites: the running stack, users made in the real database, and
// supabase-js clients whose only fake part is the WebSocket (see fake_realtime.ts).
import postgres from "postgres";
import { Redis } from "ioredis";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import type { Database } from "../../client/database.types.ts";
import type { FakeRealtime } from "./fake_realtime.ts";

export const API_URL = Deno.env.get("SUPABASE_URL") ?? "http://127.0.0.1:54321";
export const FUNCTIONS_URL = `${API_URL}/functions/v1`;
export const ANON_KEY = Deno.env.get("SUPABASE_ANON_KEY")!;
export const SERVICE_ROLE_KEY = Deno.env.get("SUPABASE_SERVICE_ROLE_KEY")!;
export const WEBHOOK_SECRET = Deno.env.get("PRESENCE_WEBHOOK_SECRET")!;
export const REDIS_URL = Deno.env.get("REDIS_URL") ?? "redis://127.0.0.1:54379";
export const DB_URL = Deno.env.get("DB_URL") ??
  "postgresql://postgres:postgres@127.0.0.1:54322/postgres";

export type Sql = postgres.Sql;

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

/** Removes the users (profiles and buffered presence cascade), the broadcasts about them and
 * the presence keys the webhook wrote for them in Redis. */
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

/** A supabase-js client for the local project whose Realtime socket is the fake server's. */
export function clientWith(
  fake: FakeRealtime,
  key: string,
  options: { accessToken?: () => Promise<string>; fetch?: typeof fetch } = {},
): SupabaseClient<Database> {
  return createClient<Database>(API_URL, key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    ...(options.accessToken ? { accessToken: options.accessToken } : {}),
    ...(options.fetch ? { global: { fetch: options.fetch } } : {}),
    realtime: {
      transport: fake.transport,
      // Fast, deterministic reconnects for tests (production keeps realtime-js's defaults).
      reconnectAfterMs: () => 20,
      heartbeatIntervalMs: 200,
      timeout: 2000,
    },
  });
}

/** Closes a client's socket and channels. */
export async function closeClient(client: SupabaseClient<Database>): Promise<void> {
  await client.removeAllChannels();
  await client.realtime.disconnect();
}
