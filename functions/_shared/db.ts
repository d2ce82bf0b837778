// One small postgres.js pool per process, through the transaction-mode pooler (the read
// replica's pool and routing: replica.ts).
import postgres from "postgres";
import { env } from "./env.ts";
import { HttpError } from "./http.ts";
import { observeQuery, recordFallbackRefused } from "./metrics.ts";
import { countStatement } from "./request.ts";

export type Sql = postgres.Sql;

/** A pool through a transaction-mode pooler: PgBouncer / Supavisor cannot keep prepared
 * statements. */
export function connect(url: string, application: string, max: number): Sql {
  guardConnectionErrors();
  return postgres(url, {
    prepare: false,
    max,
    idle_timeout: 30,
    connect_timeout: 3,
    connection: { application_name: application },
    onnotice: () => {},
  });
}

let pool: Sql | undefined;

/** The primary, as the functions' role. */
export function sql(): Sql {
  pool ??= connect(env().dbUrl, "sltr-functions", env().dbPoolSize);
  return pool;
}

let gatewayPool: Sql | undefined;

/** The local stand-ins' pool (functions/_serve: the PostgREST gateway, the demo), on a role
 * that may switch to anon, authenticated or service_role as PostgREST's authenticator does. */
export function gatewaySql(): Sql {
  gatewayPool ??= connect(env().gatewayDbUrl, "sltr-gateway", 4);
  return gatewayPool;
}

const unavailableCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  // Writing to a pooler connection that was closed under us ("This socket has been ended
  // by the other party"), e.g. while Postgres restarts.
  "EPIPE",
  "ETIMEDOUT",
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "57P01",
  "57P02",
  "57P03",
  "08000",
  "08001",
  "08003",
  "08006",
  // PgBouncer's own errors ("server login has been failing", "query_wait_timeout", "no more
  // connections allowed") all carry 08P01; Postgres refusing more connections is 53300.
  "08P01",
  "08004",
  "53300",
  // query() gave up waiting (see SLTR_DB_QUERY_TIMEOUT_MS).
  "QUERY_DEADLINE",
]);

/** Postgres unreachable (down, restarting, pooler refusing): the caller should retry. */
export function isUnavailable(e: unknown): boolean {
  const code = (e as { code?: string })?.code;
  return typeof code === "string" && unavailableCodes.has(code);
}

let guarded = false;

// postgres.js runs an internal query on every new connection (the array types fetch) whose
// promise nobody awaits: when the pooler answers it with an error (Postgres restarting:
// "server login has been failing"), the rejection is unhandled and would end the whole
// process, every function with it. Such a connection error is already reported to the
// requests it affects (503); here it is logged and the process goes on.
export function guardConnectionErrors(): void {
  if (guarded) return;
  guarded = true;
  globalThis.addEventListener("unhandledrejection", (event) => {
    if (!isUnavailable(event.reason)) return;
    event.preventDefault();
    console.warn(JSON.stringify({
      level: "warn",
      msg: "database connection error outside a query",
      error: String(event.reason),
      code: (event.reason as { code?: string })?.code,
    }));
  });
}

/** Runs a query; unavailability becomes 503 + Retry-After, nothing else is swallowed.
 * Timed into sltr_db_query_duration_seconds under `label` (default "query").
 *
 * A deadline (SLTR_DB_QUERY_TIMEOUT_MS) bounds the wait: with Postgres down, PgBouncer keeps a
 * client whose server connection died waiting for a new one (query_wait_timeout, 120 s), and
 * a request must not hang that long. Past the deadline the answer is 503 + Retry-After; the
 * statement may still run later (PgBouncer queues it), which every caller tolerates: reads
 * are discarded, and a presence batch is idempotent (a retry of it is ignored). */
export async function query<T>(
  run: (sql: Sql) => Promise<T>,
  label = "query",
  deadlineMs = env().dbQueryTimeoutMs,
): Promise<T> {
  try {
    return await timed(sql(), run, label, deadlineMs);
  } catch (e) {
    throw asHttpError(e);
  }
}

/** Unavailability as the 503 + Retry-After every caller answers; anything else as it was. */
export function asHttpError(e: unknown): unknown {
  if (!isUnavailable(e)) return e;
  return new HttpError(503, "database_unavailable", "The database is unreachable; retry shortly.", {
    "retry-after": "2",
  });
}

/** One call on `pool` within `deadlineMs`, timed under `label`; errors as they came (a
 * deadline is QUERY_DEADLINE, which isUnavailable() counts). */
export async function timed<T>(
  pool: Sql,
  run: (sql: Sql) => Promise<T>,
  label: string,
  deadlineMs: number,
): Promise<T> {
  const started = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(Object.assign(new Error("the database did not answer in time"), {
        code: "QUERY_DEADLINE",
      }));
    }, deadlineMs);
  });
  countStatement();
  try {
    const work = run(pool);
    work.catch(() => {}); // a failure after the deadline has nobody left to tell
    const result = await Promise.race([work, deadline]);
    observeQuery(label, "ok", (performance.now() - started) / 1000);
    return result;
  } catch (e) {
    observeQuery(
      label,
      isUnavailable(e) ? "unavailable" : "error",
      (performance.now() - started) / 1000,
    );
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

let fallbacksInFlight = 0;

/** A read Postgres answers because the live index could not (Redis down or too slow, the index
 * being built). At most SLTR_FALLBACK_CONCURRENCY of them run at once in a process; beyond,
 * 503 + Retry-After. When Redis is slow because the machine is saturated, sending every read
 * to Postgres, where a nearby answer costs a hundred times what the index charges, turns a
 * slow spell into an outage (seen at 1M users before this bound). */
export async function fallback<T>(fn: string, work: () => Promise<T>): Promise<T> {
  if (fallbacksInFlight >= env().fallbackConcurrency) {
    recordFallbackRefused(fn);
    throw new HttpError(
      503,
      "overloaded",
      "Too many reads are waiting for the database; retry shortly.",
      { "retry-after": "1" },
    );
  }
  fallbacksInFlight++;
  try {
    return await work();
  } finally {
    fallbacksInFlight--;
  }
}

export async function closeDb(): Promise<void> {
  await pool?.end({ timeout: 1 });
  pool = undefined;
}
