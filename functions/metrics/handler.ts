// GET /functions/v1/metrics: Prometheus text format, for service_role only (401 without a valid
// JWT, 403 with any other role). Process-local figures (requests, durations, database query
// times, cache hits and misses, presence events: functions/_shared/metrics.ts) plus the
// database's, read in one call to monitoring.metrics_snapshot(): users online, presence
// buffer depth and flush lag, last flush duration, server connections against the pool cap,
// the slowest statement's p95 estimate, pg_cron job health and the alerts firing now.
// A scrape still answers 200 when Postgres or Redis is down: sltr_database_up and
// sltr_redis_up say so, and the database figures are left out rather than reported stale.
// Every metric and alert, and what to look at first: docs/monitoring.md.
import { Gauge, Registry } from "prom-client";
import { requireJwt } from "../_shared/auth.ts";
import { query } from "../_shared/db.ts";
import { corsHeaders, HttpError, requireMethod, serveJson } from "../_shared/http.ts";
import { collectWorkers, registry, startProcessMetrics } from "../_shared/metrics.ts";
import { tryRedis } from "../_shared/redis.ts";
import { startReplicaMonitor } from "../_shared/replica.ts";

/** monitoring.metrics_snapshot() as postgres.js parses it. */
export interface Snapshot {
  users_online: number;
  presence: {
    buffer_depth: number | null;
    pending_rows: number | null;
    flush_lag_seconds: number | null;
    flush_interval_seconds: number | null;
    flush_job_active: boolean | null;
    last_flush_duration_seconds: number | null;
    seconds_since_last_flush: number | null;
    flush_failures_in_window: number | null;
  };
  connections: {
    server_connections: number;
    active: number;
    idle: number;
    idle_in_transaction: number;
    waiting_on_lock: number;
    pool_cap: number;
    max_connections: number;
  };
  slowest_query_p95_ms: number | null;
  /** monitoring.push_health(): failed pushes within push_failure_window_seconds. */
  push?: {
    failures: number;
    changes_lost: number;
    seconds_since_last_failure: number | null;
  };
  cron_jobs: {
    jobname: string;
    is_active: boolean;
    failures_in_window: number;
    seconds_since_last_success: number | null;
    last_success_seconds: number | null;
  }[];
  alerts: {
    alert: string;
    severity: string;
    value: number;
    threshold: number;
    message: string;
  }[];
}

async function requireServiceRole(req: Request): Promise<void> {
  const claims = await requireJwt(req);
  if (claims.role !== "service_role") {
    throw new HttpError(403, "service_role_required", "Metrics are for the service_role key only.");
  }
}

function gauge(
  reg: Registry,
  name: string,
  help: string,
  value: number | null | undefined,
): void {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return;
  new Gauge({ name, help, registers: [reg] }).set(Number(value));
}

function labelled<L extends string>(
  reg: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
): Gauge<L> {
  return new Gauge({ name, help, labelNames, registers: [reg] });
}

/** The database figures as gauges in a registry of their own, built per scrape. */
export function databaseRegistry(s: Snapshot | undefined, redisUp: boolean): Registry {
  const reg = new Registry();
  gauge(
    reg,
    "sltr_database_up",
    "1 when monitoring.metrics_snapshot() answered this scrape.",
    s ? 1 : 0,
  );
  gauge(reg, "sltr_redis_up", "1 when Redis answered a PING this scrape.", redisUp ? 1 : 0);
  if (!s) return reg;

  gauge(
    reg,
    "sltr_users_online",
    "Users online now, counting presence events not flushed yet.",
    s.users_online,
  );
  const p = s.presence;
  gauge(
    reg,
    "sltr_presence_buffer_depth",
    "Rows in public.presence_buffer (pending events plus heartbeat rows).",
    p.buffer_depth,
  );
  gauge(
    reg,
    "sltr_presence_buffer_pending",
    "Buffer rows the next flush_presence() applies to profiles.",
    p.pending_rows,
  );
  gauge(
    reg,
    "sltr_presence_flush_lag_seconds",
    "Age of the oldest pending buffered event (0 when none): how far the flush is behind.",
    p.flush_lag_seconds,
  );
  gauge(
    reg,
    "sltr_presence_flush_interval_seconds",
    "The presence flush interval (monitoring.flush_interval_seconds()).",
    p.flush_interval_seconds,
  );
  gauge(
    reg,
    "sltr_presence_flush_last_duration_seconds",
    "Duration of the last successful presence-flush pg_cron run.",
    p.last_flush_duration_seconds,
  );
  gauge(
    reg,
    "sltr_presence_flush_last_success_age_seconds",
    "Seconds since the last successful presence-flush pg_cron run ended.",
    p.seconds_since_last_flush,
  );

  gauge(
    reg,
    "sltr_push_failures_recent",
    "Pushes to inboxes that failed within push_failure_window_seconds (presence was recorded).",
    s.push ? Number(s.push.failures) : null,
  );
  gauge(
    reg,
    "sltr_push_changes_lost_recent",
    "Status changes those failed pushes did not deliver to any inbox.",
    s.push ? Number(s.push.changes_lost) : null,
  );

  const c = s.connections;
  gauge(
    reg,
    "sltr_db_server_connections",
    "Server connections (client backends) in use on the Postgres cluster.",
    c.server_connections,
  );
  const byState = labelled(
    reg,
    "sltr_db_server_connections_by_state",
    "Server connections by state (active, idle, idle_in_transaction, waiting_on_lock).",
    ["state"] as const,
  );
  for (const state of ["active", "idle", "idle_in_transaction", "waiting_on_lock"] as const) {
    byState.set({ state }, Number(c[state]));
  }
  gauge(
    reg,
    "sltr_db_server_connections_cap",
    "The pooler's cap on server connections (monitoring.settings pool_max_server_connections).",
    c.pool_cap,
  );
  gauge(
    reg,
    "sltr_db_server_connections_utilization",
    "Server connections / the pool cap (alert above 0.8).",
    c.pool_cap ? c.server_connections / c.pool_cap : null,
  );
  gauge(reg, "sltr_db_max_connections", "Postgres max_connections.", c.max_connections);
  gauge(
    reg,
    "sltr_db_slowest_query_p95_seconds",
    "Highest estimated p95 (mean + 2 * stddev) among statements in pg_stat_statements.",
    s.slowest_query_p95_ms === null ? null : s.slowest_query_p95_ms / 1000,
  );

  const jobActive = labelled(
    reg,
    "sltr_cron_job_active",
    "1 when the pg_cron job is active.",
    [
      "job",
    ] as const,
  );
  const jobFailures = labelled(
    reg,
    "sltr_cron_job_recent_failures",
    "Failed runs of the pg_cron job within cron_failure_window_seconds.",
    ["job"] as const,
  );
  const jobAge = labelled(
    reg,
    "sltr_cron_job_last_success_age_seconds",
    "Seconds since the pg_cron job last succeeded.",
    ["job"] as const,
  );
  const jobDuration = labelled(
    reg,
    "sltr_cron_job_last_duration_seconds",
    "Duration of the pg_cron job's last successful run.",
    ["job"] as const,
  );
  for (const j of s.cron_jobs) {
    jobActive.set({ job: j.jobname }, j.is_active ? 1 : 0);
    jobFailures.set({ job: j.jobname }, Number(j.failures_in_window));
    if (j.seconds_since_last_success !== null) {
      jobAge.set({ job: j.jobname }, Number(j.seconds_since_last_success));
    }
    if (j.last_success_seconds !== null) {
      jobDuration.set({ job: j.jobname }, Number(j.last_success_seconds));
    }
  }

  const firing = labelled(
    reg,
    "sltr_alerts_firing",
    "Alerts monitoring.check_alerts() reports now, by alert and severity (rows firing).",
    ["alert", "severity"] as const,
  );
  for (const a of s.alerts) firing.inc({ alert: a.alert, severity: a.severity });
  gauge(
    reg,
    "sltr_alerts_firing_count",
    "How many alert rows monitoring.check_alerts() reports now (0 when all is well).",
    s.alerts.length,
  );
  return reg;
}

/** The Realtime process's metrics, when it runs apart (SLTR_REALTIME_UPSTREAM). */
async function realtimeMetrics() {
  const upstream = Deno.env.get("SLTR_REALTIME_UPSTREAM");
  if (!upstream) return [];
  const res = await fetch(`${upstream}/internal/metrics`, { signal: AbortSignal.timeout(1000) })
    .catch(() => undefined);
  return res?.ok ? [await res.json()] : [];
}

export const handler = serveJson("metrics", async (req) => {
  requireMethod(req, "GET");
  await requireServiceRole(req);
  startProcessMetrics();
  startReplicaMonitor();
  const [snapshot, redisUp] = await Promise.all([
    query(
      (sql) => sql<{ s: Snapshot }[]>`select monitoring.metrics_snapshot() as s`,
      "metrics_snapshot",
    ).then(([row]) => row.s, () => undefined),
    tryRedis((r) => r.ping()).then((r) => r.ok),
  ]);
  const text = (await (await collectWorkers(await realtimeMetrics())).metrics()) + "\n" +
    (await databaseRegistry(snapshot, redisUp).metrics());
  return new Response(text, {
    status: 200,
    headers: { ...corsHeaders, "content-type": registry.contentType, "cache-control": "no-store" },
  });
});
