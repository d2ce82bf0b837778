// The SLTR client module: one Supabase client per app, its Realtime socket shared by every
// subscription (RealtimeService), typed calls to the RPCs and functions (SltrApi), and the
// database types generated from the schema (`make types`).
//
//   import { createSltrClient } from "./client/mod.ts";
//   const sltr = createSltrClient(SUPABASE_URL, SUPABASE_ANON_KEY);
//   await sltr.supabase.auth.signInWithPassword({ email, password });
//   const me = await sltr.realtime.trackPresence(userId, { lat, lng });
//   sltr.realtime.onStatusChanges((changes) => update(changes));
//   const nearby = await sltr.api.nearbyOnline({ lat, lng, radiusM: 2000 });
//
// Documented in docs/realtime.md ("The client module").
import {
  createClient,
  type SupabaseClient,
  type SupabaseClientOptions,
} from "@supabase/supabase-js";
import type { Database } from "./database.types.ts";
import { SltrApi } from "./api.ts";
import { RealtimeService, type RealtimeServiceOptions } from "./realtime.ts";
import { type ReconnectOptions, ReconnectPolicy } from "./reconnect.ts";

export * from "./api.ts";
export * from "./realtime.ts";
export * from "./reconnect.ts";
export type { Database, Json } from "./database.types.ts";

export interface SltrClient {
  supabase: SupabaseClient<Database>;
  api: SltrApi;
  realtime: RealtimeService;
}

/** Create once per app: one socket, one auth session, shared by everything. The socket
 * reconnects with ReconnectPolicy's jittered delays unless `realtime.reconnectAfterMs` is
 * given, with a token fetched afresh while it waits. */
export function createSltrClient(
  url: string,
  anonKey: string,
  options: SupabaseClientOptions<"public"> & {
    realtimeService?: RealtimeServiceOptions;
    reconnect?: ReconnectOptions;
  } = {},
): SltrClient {
  const { realtimeService, reconnect, ...supabaseOptions } = options;
  const policy = new ReconnectPolicy(reconnect);
  const realtime = supabaseOptions.realtime ?? {};
  const heartbeat = realtime.heartbeatCallback;
  const supabase: SupabaseClient<Database> = createClient<Database>(url, anonKey, {
    ...supabaseOptions,
    realtime: {
      reconnectAfterMs: (tries: number) => {
        // The channels rejoin with the token realtime-js holds, the moment the socket is back,
        // and a token that expired while the socket was down (no heartbeats, so no refresh)
        // is refused: fetch a fresh one now, while the reconnect waits.
        void supabase.realtime.setAuth().catch(() => {});
        return policy.delayMs(tries);
      },
      ...realtime,
      heartbeatCallback: (status, latency) => {
        policy.heartbeat(status);
        heartbeat?.(status, latency);
      },
    },
  });
  return {
    supabase,
    api: new SltrApi(supabase),
    realtime: new RealtimeService(supabase, realtimeService),
  };
}
