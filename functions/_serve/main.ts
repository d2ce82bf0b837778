// The local API gateway (gateway.ts) as one process: `deno run functions/_serve/main.ts`, as the
// tests' private servers run it. The stack runs serve.ts, one worker per core.
import { realtime, realtimeUpstream, route } from "./gateway.ts";

const port = Number(Deno.env.get("FUNCTIONS_PORT") ?? "54321");

// Stopped, it exits (a CPU profile, --cpu-prof, is written on exit only).
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));

Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, route);
console.log(
  JSON.stringify({
    level: "info",
    msg: "functions served",
    url: `http://127.0.0.1:${port}/functions/v1`,
    realtime: realtime || realtimeUpstream ? `ws://127.0.0.1:${port}/realtime/v1` : null,
  }),
);
