// The local API gateway (gateway.ts) as `deno serve --parallel`: one worker per core, each an
// isolate of its own as the Edge Runtime runs them, sharing the port. The stack runs it so,
// with Realtime in its own process (SLTR_REALTIME_UPSTREAM) and SLTR_WORKERS set to the
// worker count, so that one /metrics scrape sums every worker (metrics.ts, collectWorkers).
import { route } from "./gateway.ts";
import { joinWorkers } from "../_shared/metrics.ts";

joinWorkers();

export default { fetch: route } satisfies Deno.ServeDefaultExport;
