// Configuration, read and validated once per process. Names follow the hosted Supabase
// Edge Functions environment (SUPABASE_*), plus our own REDIS_URL and webhook secret.

function required(name: string): string {
  const value = Deno.env.get(name);
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
}

function optional(name: string): string | undefined {
  return Deno.env.get(name) || undefined;
}

export interface Env {
  /** Postgres through the pooler (PgBouncer locally, Supavisor in production). */
  dbUrl: string;
  /** Connections this process keeps open to the pooler. */
  dbPoolSize: number;
  jwtSecret: string;
  redisUrl: string | undefined;
  presenceWebhookSecret: string | undefined;
  sentryDsn: string | undefined;
}

let cached: Env | undefined;

export function env(): Env {
  cached ??= {
    dbUrl: required("SUPABASE_DB_URL"),
    dbPoolSize: Number(optional("SLTR_DB_POOL_SIZE") ?? "10"),
    jwtSecret: required("SUPABASE_JWT_SECRET"),
    redisUrl: optional("REDIS_URL"),
    presenceWebhookSecret: optional("PRESENCE_WEBHOOK_SECRET"),
    sentryDsn: optional("SENTRY_DSN"),
  };
  return cached;
}
