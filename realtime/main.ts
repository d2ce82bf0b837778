// The local Realtime endpoint as a process of its own (what `make start` runs), on a loopback
// port (REALTIME_PORT) that the functions' gateway relays /realtime/v1 to: hosted Realtime is a
// service apart from the Edge Runtime too, and the functions' workers (one per core) cannot
// share the channel and presence state this process holds. docs/realtime.md.
//
//   GET /internal/metrics   this process's metrics as prom-client JSON, for the functions'
//                           /metrics to merge (loopback only, like the port itself)
import { guardConnectionErrors } from "../functions/_shared/db.ts";
import { registerRealtimeMetrics, registry } from "../functions/_shared/metrics.ts";
import { realtimeConfig } from "./config.ts";
import { RealtimeServer } from "./server.ts";

// A connection error nobody awaits (Postgres restarting) is logged, not the end of the process.
guardConnectionErrors();

const port = Number(Deno.env.get("REALTIME_PORT") ?? "54325");
const realtime = new RealtimeServer(realtimeConfig());
realtime.start();
registerRealtimeMetrics(() => realtime.stats());

Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (req) => {
  if (new URL(req.url).pathname === "/internal/metrics") {
    return Response.json(await registry.getMetricsAsJSON());
  }
  if (realtime.handles(req)) return await realtime.handle(req);
  return Response.json({ message: "Not Found" }, { status: 404 });
});
console.log(JSON.stringify({
  level: "info",
  msg: "realtime served",
  url: `ws://127.0.0.1:${port}/realtime/v1`,
}));
