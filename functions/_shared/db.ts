// One small postgres.js pool per process, through the transaction-mode pooler.
import postgres from "postgres";
import { env } from "./env.ts";
import { HttpError } from "./http.ts";

export type Sql = postgres.Sql;

let pool: Sql | undefined;

export function sql(): Sql {
  pool ??= postgres(env().dbUrl, {
    // PgBouncer / Supavisor in transaction mode cannot keep prepared statements.
    prepare: false,
    max: env().dbPoolSize,
    idle_timeout: 30,
    connect_timeout: 3,
    connection: { application_name: "sltr-functions" },
    onnotice: () => {},
  });
  return pool;
}

const unavailableCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
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
]);

/** Postgres unreachable (down, restarting, pooler refusing): the caller should retry. */
export function isUnavailable(e: unknown): boolean {
  const code = (e as { code?: string })?.code;
  return typeof code === "string" && unavailableCodes.has(code);
}

/** Runs a query; unavailability becomes 503 + Retry-After, nothing else is swallowed. */
export async function query<T>(run: (sql: Sql) => Promise<T>): Promise<T> {
  try {
    return await run(sql());
  } catch (e) {
    if (isUnavailable(e)) {
      throw new HttpError(
        503,
        "database_unavailable",
        "The database is unreachable; retry shortly.",
        {
          "retry-after": "2",
        },
      );
    }
    throw e;
  }
}

export async function closeDb(): Promise<void> {
  await pool?.end({ timeout: 1 });
  pool = undefined;
}
