// The local API gateway's routing, on the port `supabase start` uses (54321): every function
// under /functions/v1/<name>, with Supabase's verify_jwt behaviour, the local Realtime endpoint
// under /realtime/v1 (realtime/server.ts), and PostgREST's RPCs and plain reads under
// /rest/v1 (postgrest.ts). Hosted Supabase runs each functions/<name>/index.ts on its own,
// and Realtime and PostgREST as their own services; this is their local host.
//
// Realtime runs in this process (main.ts, one worker: the tests' private servers), or in a
// process of its own that this relays to (SLTR_REALTIME_UPSTREAM, e.g. http://127.0.0.1:54325:
// the stack, whose functions run one worker per core, serve.ts).
import { requireJwt } from "../_shared/auth.ts";
import { env } from "../_shared/env.ts";
import { error, HttpError, preflight, serveJson } from "../_shared/http.ts";
import { registerRealtimeMetrics } from "../_shared/metrics.ts";
import { startReplicaMonitor } from "../_shared/replica.ts";
import { realtimeConfig } from "../../realtime/config.ts";
import { RealtimeServer } from "../../realtime/server.ts";
import { demoEnabled, handleDemo } from "./demo.ts";
import { handlePostgrest } from "./postgrest.ts";
import { relayRealtime } from "./realtime_relay.ts";
import { functions } from "./registry.ts";

// Settings checked before serving anything: a short webhook secret or a missing one it needs
// stops the server here, with the reason, instead of failing requests.
env();

// The read replica's lag is measured from the start, so that /metrics shows it before any read.
startReplicaMonitor();

/** Where Realtime runs when not here. */
export const realtimeUpstream = Deno.env.get("SLTR_REALTIME_UPSTREAM") || undefined;

/** In this process unless relayed, or off with REALTIME_ENABLED=false (functions only). */
export const realtime = realtimeUpstream || Deno.env.get("REALTIME_ENABLED") === "false"
  ? undefined
  : new RealtimeServer(realtimeConfig());
realtime?.start();
if (realtime) registerRealtimeMetrics(() => realtime.stats());

export async function route(req: Request): Promise<Response> {
  const url = new URL(req.url);
  if (url.pathname.startsWith("/realtime/v1/")) {
    if (realtime) return await realtime.handle(req);
    if (realtimeUpstream) return await relayRealtime(req, realtimeUpstream);
  }
  if (url.pathname.startsWith("/rest/v1/")) return await handlePostgrest(req);
  if (demoEnabled && (url.pathname === "/demo" || url.pathname.startsWith("/demo/"))) {
    return await handleDemo(req);
  }
  const match = /^\/functions\/v1\/([a-z0-9-]+)\/?$/.exec(url.pathname);
  const fn = match ? functions[match[1]] : undefined;
  if (!fn) return error("function_not_found", `No function at ${url.pathname}.`, 404);
  const pre = preflight(req);
  if (pre) return pre;
  if (fn.verifyJwt) {
    try {
      await requireJwt(req);
    } catch (e) {
      // Through the shared wrapper, so a refused call is logged, counted and given a request
      // id under the function's name like any other answer.
      if (e instanceof HttpError) return await serveJson(match![1], () => Promise.reject(e))(req);
      throw e;
    }
  }
  return await fn.handler(req);
}
