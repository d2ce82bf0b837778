// The running stack's URLs and keys, from the environment scripts/test.sh and the Makefile
// export (scripts/lib.sh, export_app_env): never a copy of supabase/local.env, never a default
// port, so a stack on other ports (SLTR_STATE_DIR, PG_PORT, ...) is the one tested.

function setting(name: string): string {
  const value = Deno.env.get(name);
  if (!value) {
    throw new Error(
      `${name} is not set: run the suites with make test-... or scripts/test.sh, the benchmarks ` +
        `with make bench-..., which export the stack's environment (scripts/lib.sh)`,
    );
  }
  return value;
}

export const ROOT = Deno.env.get("SLTR_ROOT") ?? new URL("../..", import.meta.url).pathname;
export const STATE_DIR = Deno.env.get("SLTR_STATE_DIR") ?? `${ROOT}/.state`;
/** The gateway (Supabase's API URL): /functions/v1, /rest/v1, /realtime/v1. */
export const API_URL = setting("SUPABASE_URL");
export const FUNCTIONS_URL = `${API_URL}/functions/v1`;
export const ANON_KEY = setting("SUPABASE_ANON_KEY");
export const SERVICE_ROLE_KEY = setting("SUPABASE_SERVICE_ROLE_KEY");
export const JWT_SECRET = setting("SUPABASE_JWT_SECRET");
export const WEBHOOK_SECRET = setting("PRESENCE_WEBHOOK_SECRET");
/** The postgres superuser's password (a throwaway stack has the same). */
export const POSTGRES_PASSWORD = setting("POSTGRES_PASSWORD");
/** Postgres itself, as the postgres superuser (not pooled). */
export const DB_URL = setting("DB_URL");
/** PgBouncer, as the postgres superuser. */
export const POOLER_URL = setting("POOLER_URL");
export const REDIS_URL = setting("REDIS_URL");
/** The stack's presence bridge (its /health and /metrics). */
export const BRIDGE_URL = `http://127.0.0.1:${setting("BRIDGE_HEALTH_PORT")}`;
/** The stack's read replica, as the postgres superuser (unset when there is none). */
export const REPLICA_DB_URL = Deno.env.get("REPLICA_DB_URL") || undefined;
