// The read replica (docs/replica.md). Reads that may be a moment old (nearby and online
// status answered from Postgres when the live index cannot, the index's snapshots) go to the
// replica when one is configured, reachable and caught up; everything else, and every read
// while the replica is not, goes to the primary. A read the replica fails for want of the
// replica (down, restarting, cancelled by a recovery conflict) is asked of the primary at once,
// within the same deadline: a lost replica costs a retry, never a 5xx.
//
// Each process measures the replica's lag every SLTR_REPLICA_CHECK_MS (one statement) and
// exports it (sltr_db_replica_lag_seconds, sltr_db_replica_up). A replica more than
// SLTR_REPLICA_MAX_LAG_MS behind serves nothing until it catches up.
import { asHttpError, connect, isUnavailable, type Sql, sql, timed } from "./db.ts";
import { env } from "./env.ts";
import { type ReadRoute, recordRead, registerReplicaGauges } from "./metrics.ts";

interface Health {
  /** The last check answered. */
  up: boolean;
  /** Seconds behind the primary at the last check that answered (NaN before the first). */
  lagSeconds: number;
}

const health: Health = { up: false, lagSeconds: NaN };
let pool: Sql | undefined;
let monitor: ReturnType<typeof setInterval> | undefined;
let checking = false;

function replicaPool(): Sql | undefined {
  const url = env().replicaDbUrl;
  if (!url) return undefined;
  pool ??= connect(url, "sltr-functions-replica", env().dbPoolSize);
  return pool;
}

/** Starts this process's lag checks (idempotent; nothing without a replica). The timer does
 * not keep the process alive. */
export function startReplicaMonitor(): void {
  if (monitor !== undefined || !replicaPool()) return;
  registerReplicaGauges(() => health);
  void check();
  monitor = setInterval(() => void check(), env().replicaCheckMs);
  Deno.unrefTimer(monitor as unknown as number);
}

/** The replica as this process last measured it; undefined when none is configured. */
export function replicaHealth(): Readonly<Health> | undefined {
  if (!replicaPool()) return undefined;
  startReplicaMonitor();
  return health;
}

/** How far behind the replica is: 0 while it has replayed all it received, else the time
 * since the last transaction it replayed was committed. A promoted replica is 0 behind.
 * (`<=`, not `=`: a restarted replica streams again from the start of a WAL segment, so for a
 * while it has received less than it replayed.) */
async function check(): Promise<void> {
  if (checking) return; // a check waiting on a dead replica: one at a time
  checking = true;
  try {
    const [row] = await timed(
      replicaPool()!,
      (sql) =>
        sql<{ lag: number }[]>`
          select case
            when not pg_is_in_recovery() then 0
            when pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0
            else coalesce(extract(epoch from clock_timestamp() - pg_last_xact_replay_timestamp()), 0)
          end::float8 as lag`,
      "replica_lag",
      env().replicaTimeoutMs,
    );
    health.lagSeconds = row.lag;
    setUp(true);
  } catch (e) {
    setUp(false, e);
  } finally {
    checking = false;
  }
}

/** Records a change of the replica's state, logged once per change for whoever is on call. */
function setUp(up: boolean, cause?: unknown): void {
  if (health.up === up) return;
  health.up = up;
  console.warn(JSON.stringify({
    level: up ? "info" : "warn",
    msg: up ? "read replica serving reads" : "read replica unavailable: reads go to the primary",
    ...(cause ? { error: String(cause), code: (cause as { code?: string })?.code } : {}),
  }));
}

/** Why a read went where it went: the replica, or the primary because there is none, it is
 * down, it lags, it failed this read, or it had not replayed what a fresh read must see. */
function route(): { replica?: Sql; why: ReadRoute } {
  const replica = replicaPool();
  if (!replica) return { why: "primary_no_replica" };
  startReplicaMonitor();
  if (!health.up) return { why: "primary_replica_down" };
  if (!(health.lagSeconds * 1000 <= env().replicaMaxLagMs)) {
    return { why: "primary_replica_lagging" };
  }
  return { replica, why: "replica" };
}

/** The replica could not serve this read; the primary can. */
function replicaFailed(e: unknown): boolean {
  if (isUnavailable(e)) return true;
  // Cancelled to let replay go on ("canceling statement due to conflict with recovery").
  return (e as { code?: string })?.code === "40001";
}

class NotCaughtUp extends Error {}

/** Waits (up to SLTR_REPLICA_TIMEOUT_MS) until the replica has replayed what the primary had
 * written when this started. */
async function catchUp(replica: Sql): Promise<void> {
  const [{ lsn }] = await timed(
    sql(),
    (s) => s<{ lsn: string }[]>`select pg_current_wal_lsn()::text as lsn`,
    "replica_fence",
    env().replicaTimeoutMs,
  );
  const until = performance.now() + env().replicaTimeoutMs;
  while (true) {
    const [{ ok }] = await timed(
      replica,
      (s) =>
        s<{ ok: boolean }[]>`select coalesce(pg_last_wal_replay_lsn() >= ${lsn}::pg_lsn,
                                                not pg_is_in_recovery()) as ok`,
      "replica_fence",
      env().replicaTimeoutMs,
    );
    if (ok) return;
    if (performance.now() > until) throw new NotCaughtUp();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function routed<T>(
  run: (sql: Sql) => Promise<T>,
  label: string,
  deadlineMs: number,
  fresh: boolean,
): Promise<T> {
  const started = performance.now();
  const { replica, why } = route();
  let onPrimary = why;
  if (replica) {
    try {
      if (fresh) await catchUp(replica);
      // A request's read waits SLTR_REPLICA_TIMEOUT_MS at most for the replica; a snapshot,
      // half its deadline: either way the primary still has time to answer.
      const budget = fresh ? deadlineMs / 2 : Math.min(deadlineMs / 2, env().replicaTimeoutMs);
      const result = await timed(replica, run, label, budget);
      recordRead("replica");
      return result;
    } catch (e) {
      if (e instanceof NotCaughtUp) onPrimary = "primary_not_caught_up";
      else if (replicaFailed(e)) {
        if (isUnavailable(e)) {
          // Until a check answers again; one starts now, so that a connection the replica's
          // restart left stale costs one read its retry, not a second of reads.
          setUp(false, e);
          void check();
        }
        onPrimary = "primary_failover";
      } else throw asHttpError(e);
    }
  }
  recordRead(onPrimary);
  try {
    return await timed(sql(), run, label, Math.max(1, deadlineMs - (performance.now() - started)));
  } catch (e) {
    throw asHttpError(e);
  }
}

/** A read that may be up to SLTR_REPLICA_MAX_LAG_MS old: the replica when it can, else the
 * primary. Unavailability of both is 503 + Retry-After, as query() answers. */
export function readQuery<T>(
  run: (sql: Sql) => Promise<T>,
  label: string,
  deadlineMs = env().dbQueryTimeoutMs,
): Promise<T> {
  return routed(run, label, deadlineMs, false);
}

/** A read that must see everything committed before it began (a snapshot the index prunes
 * by: live_index_sync.ts): on the replica once it has replayed the primary's WAL position of
 * that moment (one statement on each), else on the primary. */
export function freshReadQuery<T>(
  run: (sql: Sql) => Promise<T>,
  label: string,
  deadlineMs = env().dbQueryTimeoutMs,
): Promise<T> {
  return routed(run, label, deadlineMs, true);
}

export async function closeReplica(): Promise<void> {
  if (monitor !== undefined) clearInterval(monitor);
  monitor = undefined;
  await pool?.end({ timeout: 1 });
  pool = undefined;
}
