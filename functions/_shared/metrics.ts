// Process-local Prometheus metrics (prom-client): requests, durations, database queries,
// cache hits and misses, presence events. The shared wrapper (http.ts serveJson) and the db
// query() helper record into them, so every function is measured without code of its own;
// functions/metrics exposes them together with the database-side figures.
//
// Each worker holds its own. The local stack runs the functions as one worker per core
// (functions/_serve/serve.ts) and Realtime in a process of its own: a scrape asks every worker
// (joinWorkers, collectWorkers) and the Realtime process, and sums them (counters and
// histograms add up; each gauge says how it combines). Hosted Supabase runs one worker per
// function (and several under load); there Sentry's metrics and spans (sentry.ts) are the
// cross-worker view.
import {
  AggregatorRegistry,
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
  type Registry as RegistryType,
} from "prom-client";

/** Every process-local metric of this project. */
export const registry: RegistryType = new Registry();

/** Request latency buckets (seconds): 5 ms .. 10 s. */
const latencyBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export const httpRequests = new Counter({
  name: "sltr_http_requests_total",
  help: "Requests answered by each function, by method and HTTP status.",
  labelNames: ["function", "method", "status"] as const,
  registers: [registry],
});

export const httpRequestDuration = new Histogram({
  name: "sltr_http_request_duration_seconds",
  help: "Time from receiving a request to answering it, per function and HTTP status.",
  labelNames: ["function", "status"] as const,
  buckets: latencyBuckets,
  registers: [registry],
});

export const dbQueryDuration = new Histogram({
  name: "sltr_db_query_duration_seconds",
  help: "Duration of database calls made through query() (one round trip each, usually one " +
    "RPC), by query label and outcome (ok, error, unavailable).",
  labelNames: ["query", "outcome"] as const,
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
});

export type CacheResult = "hit" | "miss" | "error";

export const cacheRequests = new Counter({
  name: "sltr_cache_requests_total",
  help: "Redis cache lookups by cache name and result (hit, miss, error = Redis unavailable).",
  labelNames: ["cache", "result"] as const,
  registers: [registry],
});

// hits / (hits + misses) since the process started, per cache; errors count as neither.
const cacheTotals = new Map<string, { hit: number; miss: number }>();

new Gauge({
  name: "sltr_cache_hit_ratio",
  help: "Cache hit rate since the process started: hits / (hits + misses), per cache " +
    "(the average over workers).",
  labelNames: ["cache"] as const,
  aggregator: "average",
  registers: [registry],
  collect() {
    for (const [cache, t] of cacheTotals) {
      const total = t.hit + t.miss;
      if (total > 0) this.set({ cache }, t.hit / total);
    }
  },
});

export type PresenceOutcome = "accepted" | "ignored" | "rejected";

export const presenceEvents = new Counter({
  name: "sltr_presence_events_total",
  help: "Presence events received by the webhook: accepted (buffered), ignored (older than " +
    "what is known, or duplicates), rejected (invalid).",
  labelNames: ["outcome"] as const,
  registers: [registry],
});
for (const outcome of ["accepted", "ignored", "rejected"]) presenceEvents.labels(outcome).inc(0);

export const degradedResponses = new Counter({
  name: "sltr_degraded_responses_total",
  help: "Answers given without Redis (served from Postgres and flagged degraded), per function.",
  labelNames: ["function"] as const,
  registers: [registry],
});

export const fallbacksRefused = new Counter({
  name: "sltr_fallbacks_refused_total",
  help: "Reads refused with 503 because too many were already waiting on Postgres for want " +
    "of the live index (SLTR_FALLBACK_CONCURRENCY), per function.",
  labelNames: ["function"] as const,
  registers: [registry],
});

export const liveIndexSyncs = new Counter({
  name: "sltr_live_index_syncs_total",
  help: "Rebuilds (counted when their last page is in) and reconciliations of the Redis live " +
    "index from Postgres (their own database load, outside any request's statements).",
  labelNames: ["kind"] as const,
  registers: [registry],
});

export const liveIndexSyncRows = new Counter({
  name: "sltr_live_index_sync_rows_total",
  help: "Rows read from Postgres by the live index's rebuilds and reconciliations.",
  labelNames: ["kind"] as const,
  registers: [registry],
});

export const liveIndexSyncSeconds = new Counter({
  name: "sltr_live_index_sync_seconds_total",
  help: "Time spent rebuilding and reconciling the live index.",
  labelNames: ["kind"] as const,
  registers: [registry],
});

export const liveIndexPrivacyWaits = new Counter({
  name: "sltr_live_index_privacy_waits_total",
  help: "Reads that waited (300 ms at most) for the safety controls' sync because none ran for " +
    "a second: synced, or answered before it ended.",
  labelNames: ["outcome"] as const,
  registers: [registry],
});

export function recordPrivacyWait(outcome: "synced" | "answered_before"): void {
  liveIndexPrivacyWaits.labels(outcome).inc();
}

/** A rebuild's step or a reconciliation of the live index (`completed`: the rebuild's last). */
export function recordIndexSync(
  kind: "rebuild" | "reconcile",
  rows: number,
  seconds: number,
  completed: boolean,
) {
  if (completed) liveIndexSyncs.labels(kind).inc();
  liveIndexSyncRows.labels(kind).inc(rows);
  liveIndexSyncSeconds.labels(kind).inc(seconds);
}

/** Called by serveJson for every request. */
export function observeRequest(
  fn: string,
  method: string,
  status: number,
  seconds: number,
): void {
  httpRequests.labels(fn, method, String(status)).inc();
  httpRequestDuration.labels(fn, String(status)).observe(seconds);
}

/** Called by query() for every database call. */
export function observeQuery(
  label: string,
  outcome: "ok" | "error" | "unavailable",
  seconds: number,
): void {
  dbQueryDuration.labels(label, outcome).observe(seconds);
}

/** A cache lookup: hit, miss, or error (Redis unreachable). */
export function recordCache(cache: string, result: CacheResult, n = 1): void {
  cacheRequests.labels(cache, result).inc(n);
  if (result === "error") return;
  const t = cacheTotals.get(cache) ?? { hit: 0, miss: 0 };
  t[result] += n;
  cacheTotals.set(cache, t);
}

/** Presence events by outcome (the webhook calls this once per batch and outcome). */
export function recordPresenceEvents(outcome: PresenceOutcome, n = 1): void {
  if (n > 0) presenceEvents.labels(outcome).inc(n);
}

/** Where a read that may lag went (replica.ts): the replica, or the primary and why. */
export type ReadRoute =
  | "replica"
  | "primary_no_replica"
  | "primary_replica_down"
  | "primary_replica_lagging"
  | "primary_failover"
  | "primary_not_caught_up";

export const dbReads = new Counter({
  name: "sltr_db_reads_total",
  help: "Reads that may be served by the read replica, by where they went: replica, or " +
    "primary_<why> (no_replica, replica_down, replica_lagging, failover = the replica failed " +
    "this read, not_caught_up = a snapshot the replica had not replayed yet).",
  labelNames: ["route"] as const,
  registers: [registry],
});

export function recordRead(route: ReadRoute): void {
  dbReads.labels(route).inc();
}

/** The replica's health as this process last measured it (replica.ts), read at scrape time. */
export function registerReplicaGauges(health: () => { up: boolean; lagSeconds: number }): void {
  new Gauge({
    name: "sltr_db_replica_up",
    help: "1 while the read replica answers this process's lag checks (the lowest over workers).",
    aggregator: "min",
    registers: [registry],
    collect() {
      this.set(health().up ? 1 : 0);
    },
  });
  new Gauge({
    name: "sltr_db_replica_lag_seconds",
    help: "How far the read replica is behind the primary at the last check that answered: " +
      "0 while it has replayed all it received, else the age of the last transaction it " +
      "replayed. Reads leave it beyond SLTR_REPLICA_MAX_LAG_MS. The highest over workers.",
    aggregator: "max",
    registers: [registry],
    collect() {
      const lag = health().lagSeconds;
      if (Number.isFinite(lag)) this.set(lag);
    },
  });
}

/** A read refused by fallback(): Postgres already had enough of them. */
export function recordFallbackRefused(fn: string): void {
  fallbacksRefused.labels(fn).inc();
}

/** An answer served without Redis. */
export function recordDegraded(fn: string): void {
  degradedResponses.labels(fn).inc();
}

let defaultsStarted = false;

/** Process metrics (CPU, memory, event-loop lag), started by the first scrape only so that
 * importing this module starts no timers (handlers are imported by in-process tests). */
export function startProcessMetrics(): void {
  if (defaultsStarted) return;
  defaultsStarted = true;
  collectDefaultMetrics({ register: registry, prefix: "sltr_" });
}

/** The local Realtime endpoint's figures (realtime/server.ts stats()), when it runs in this
 * process: gauges read at scrape time. */
export function registerRealtimeMetrics(stats: () => Record<string, number | boolean>): void {
  const gauges: [string, string, string][] = [
    ["sockets", "sltr_realtime_sockets", "WebSocket connections open now."],
    ["users", "sltr_realtime_connected_users", "Sockets counted against max_concurrent_users."],
    ["channels", "sltr_realtime_channels", "Channels joined now."],
    ["presences", "sltr_realtime_presences", "Presence metas tracked now."],
    ["joinsPerSecond", "sltr_realtime_joins_per_second", "Joins/s as the limit judges them."],
    ["eventsPerSecond", "sltr_realtime_events_per_second", "Messages/s as the limit judges them."],
    [
      "presenceEventsPerSecond",
      "sltr_realtime_presence_events_per_second",
      "Presence messages/s as the limit judges them.",
    ],
    ["replicationConnected", "sltr_realtime_replication_up", "1 while database broadcasts stream."],
    [
      "authorizationRefusing",
      "sltr_realtime_authorization_refusing",
      "1 while every private join is refused: more authorization pool timeouts in 30 s than " +
      "the Database connection pool size (IncreaseConnectionPool).",
    ],
  ];
  const counters: [string, string, string][] = [
    ["joins", "sltr_realtime_joins_total", "Channel joins accepted."],
    ["joinsRefused", "sltr_realtime_joins_refused_total", "Channel joins refused."],
    [
      "joinsRefusedExpiredToken",
      "sltr_realtime_joins_refused_expired_token_total",
      "Channel joins refused because their token had expired.",
    ],
    [
      "authorizationPoolTimeouts",
      "sltr_realtime_authorization_pool_timeouts_total",
      "Authorization checks dropped: no connection of the pool within twice db_queue_target.",
    ],
    ["connectionsRefused", "sltr_realtime_connections_refused_total", "Upgrades refused."],
    ["framesOut", "sltr_realtime_frames_sent_total", "Frames sent to clients."],
    [
      "malformedFrames",
      "sltr_realtime_malformed_frames_total",
      "Client frames ignored as malformed.",
    ],
    [
      "presenceLimited",
      "sltr_realtime_presence_limited_total",
      "Channels closed by the presence limit.",
    ],
    [
      "databaseBroadcasts",
      "sltr_realtime_database_broadcasts_total",
      "Rows of realtime.messages fanned out.",
    ],
    [
      "databaseBroadcastsDropped",
      "sltr_realtime_database_broadcasts_dropped_total",
      "Rows of realtime.messages dropped at the source: the project was over its messages per " +
      "second (hosted drops them too, and logs nothing).",
    ],
  ];
  const read = (key: string) => {
    const value = stats()[key];
    return typeof value === "boolean" ? Number(value) : value ?? 0;
  };
  for (const [key, name, help] of gauges) {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read(key));
      },
    });
  }
  for (const [key, name, help] of counters) {
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(read(key));
      },
    });
  }
}

// ---- every worker in one scrape ----------------------------------------------------------

type Metrics = MetricObjectWithValues<MetricValue<string>>[];

/** Workers of this process (SLTR_WORKERS, set by the stack with `deno serve --parallel`). */
const WORKERS = Number(Deno.env.get("SLTR_WORKERS") ?? "1");
let peers: BroadcastChannel | undefined;
const asked = new Map<string, Metrics[]>();

/** Answers the other workers' scrapes with this worker's metrics (serve.ts calls it). */
export function joinWorkers(): void {
  if (WORKERS < 2 || peers) return;
  peers = new BroadcastChannel("sltr-metrics");
  peers.onmessage = async (e: MessageEvent) => {
    const m = e.data as { ask?: string; answer?: string; metrics?: Metrics };
    if (m.ask) {
      peers!.postMessage({ answer: m.ask, metrics: await registry.getMetricsAsJSON() });
    } else if (m.answer) asked.get(m.answer)?.push(m.metrics!);
  };
}

/** Process-wide figures every worker of the process reports alike: taken once, not summed. */
const processWide = /^sltr_(process_|nodejs_)/;

/**
 * This worker's metrics, the other workers' (up to 500 ms for their answers) and `more` (the
 * Realtime process's), combined into one registry. Says how many workers answered.
 */
export async function collectWorkers(more: Metrics[] = []): Promise<Registry> {
  const mine = await registry.getMetricsAsJSON() as Metrics;
  const all: Metrics[] = [mine, ...more];
  if (peers) {
    const id = crypto.randomUUID();
    const answers: Metrics[] = [];
    asked.set(id, answers);
    peers.postMessage({ ask: id });
    const until = performance.now() + 500;
    while (answers.length < WORKERS - 1 && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 5));
    }
    asked.delete(id);
    all.push(...answers);
  }
  for (const metrics of all) {
    for (const m of metrics) {
      if (processWide.test(m.name)) (m as { aggregator: string }).aggregator = "first";
    }
  }
  const merged = AggregatorRegistry.aggregate(all);
  new Gauge({
    name: "sltr_metrics_workers",
    help: "Workers whose metrics this scrape combined (of SLTR_WORKERS), plus other processes.",
    registers: [merged],
  }).set(all.length);
  return merged as unknown as Registry;
}
