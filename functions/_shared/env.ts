// Configuration, read and validated once per process. Names follow the hosted Supabase
// Edge Functions environment (SUPABASE_*), plus our own REDIS_URL and webhook secret.

import { MAX_PRESENCE_TOPICS } from "./presence_ticket.ts";
import type { Quota } from "./quota.ts";

function required(name: string): string {
  const value = Deno.env.get(name);
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
}

/**
 * How many topics presence is sharded over (SLTR_PRESENCE_TOPICS, default 1): the ticket
 * function names each user's topic by it and the bridges join its topics, so both must be
 * given the same number. Throws unless 1..MAX_PRESENCE_TOPICS.
 */
export function presenceTopicCount(get: (name: string) => string | undefined): number {
  const raw = get("SLTR_PRESENCE_TOPICS") || "1";
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > MAX_PRESENCE_TOPICS) {
    throw new Error(
      `SLTR_PRESENCE_TOPICS must be an integer 1..${MAX_PRESENCE_TOPICS}, got ${raw}`,
    );
  }
  return n;
}

/** Webhook secrets shorter than this are refused: an HMAC key must not be guessable. */
export const MIN_SECRET_BYTES = 32;

/**
 * The webhook secrets, newest first: PRESENCE_WEBHOOK_SECRETS (comma-separated), else
 * PRESENCE_WEBHOOK_SECRET. During a rotation both the old and the new are accepted, and senders
 * sign (and the ticket function issues) with the newest. Throws on a secret under 32 bytes.
 */
export function webhookSecrets(get: (name: string) => string | undefined): string[] {
  const raw = get("PRESENCE_WEBHOOK_SECRETS") || get("PRESENCE_WEBHOOK_SECRET") || "";
  const secrets = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
  for (const [i, s] of secrets.entries()) {
    if (new TextEncoder().encode(s).length < MIN_SECRET_BYTES) {
      throw new Error(
        `webhook secret #${
          i + 1
        } is shorter than ${MIN_SECRET_BYTES} bytes: refused (openssl rand -hex 32 makes one)`,
      );
    }
  }
  return secrets;
}

function optional(name: string): string | undefined {
  return Deno.env.get(name) || undefined;
}

export interface Env {
  /** Postgres through the pooler (PgBouncer locally, Supavisor in production), as the
   * functions' own role sltr_functions: SLTR_DB_URL, else SUPABASE_DB_URL. */
  dbUrl: string;
  /** The local stand-ins' connection (the PostgREST gateway and the demo in functions/_serve,
   * never deployed), which switch roles as PostgREST does: SLTR_GATEWAY_DB_URL, else dbUrl. */
  gatewayDbUrl: string;
  /** A read replica through its own pool (SLTR_DB_REPLICA_URL, else SUPABASE_DB_REPLICA_URL; a
   * hosted read replica has a connection string of its own): reads that may lag go there
   * (replica.ts). Unset: every read goes to the primary. */
  replicaDbUrl: string | undefined;
  /** The replica serves reads only while it is at most this far behind
   * (SLTR_REPLICA_MAX_LAG_MS, default 500): a status change must reach readers within 1 s. */
  replicaMaxLagMs: number;
  /** How often each process measures the replica's lag (SLTR_REPLICA_CHECK_MS, default 1000),
   * and how long a read waits for it before asking the primary (SLTR_REPLICA_TIMEOUT_MS,
   * default 1000). */
  replicaCheckMs: number;
  replicaTimeoutMs: number;
  /** Connections this process keeps open to the pooler. */
  dbPoolSize: number;
  jwtSecret: string;
  /** When set (SUPABASE_JWT_ISSUER, e.g. https://<ref>.supabase.co/auth/v1), JWTs must carry it. */
  jwtIssuer: string | undefined;
  redisUrl: string | undefined;
  /** Webhook secrets, newest first (PRESENCE_WEBHOOK_SECRETS, or PRESENCE_WEBHOOK_SECRET): see
   * webhookSecrets(). Empty when signed batches are not configured. */
  presenceWebhookSecrets: string[];
  sentryDsn: string | undefined;
  /** Sentry environment tag (SENTRY_ENVIRONMENT), e.g. production, staging, local. */
  sentryEnvironment: string | undefined;
  /** Share of requests traced as Sentry transactions (SENTRY_TRACES_SAMPLE_RATE, 0..1). */
  sentryTracesSampleRate: number;
  /** How long query() waits for the database, queueing in the pooler included, before it
   * answers 503 + Retry-After (SLTR_DB_QUERY_TIMEOUT_MS, default 5000). */
  dbQueryTimeoutMs: number;
  /** Reads Postgres may answer at once in a process when the live index cannot
   * (SLTR_FALLBACK_CONCURRENCY, default 4): see fallback() in db.ts. */
  fallbackConcurrency: number;
  /** Users one step of the live index's rebuild loads (SLTR_LIVE_INDEX_REBUILD_PAGE_ROWS,
   * default 100000): a step is one request's background work, within hosted's 2 s of CPU. */
  liveIndexRebuildPageRows: number;
  /** Lifetime of a presence ticket (PRESENCE_TICKET_TTL_SECONDS, default 900). */
  presenceTicketTtlSeconds: number;
  /** Presence topics (SLTR_PRESENCE_TOPICS, default 1): see presenceTopicCount(). */
  presenceTopics: number;
  /** Per-user quotas (quota.ts), each SLTR_QUOTA_<NAME>=<capacity>/<seconds to refill it>:
   * nearby reads (default 20/120: a read every 6 s, bursts of 20), ids asked of online-status
   * (2000/60) and self-reported presence requests (20/60). The database's RPC quotas
   * (private.quota_limits) default to the same. */
  quotas: { nearby: Quota; status: Quota; selfReport: Quota };
  /** How far from the caller's own last known cell a nearby probe may be
   * (SLTR_NEARBY_MAX_PROBE_KM, default 50; 0 for no limit). */
  nearbyMaxProbeM: number;
}

function quota(name: string, variable: string, fallback: string): Quota {
  const raw = optional(variable) ?? fallback;
  const m = /^(\d+)\/(\d+)$/.exec(raw);
  if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) {
    throw new Error(`${variable} must be <capacity>/<seconds>, e.g. ${fallback}; got ${raw}`);
  }
  return { name, capacity: Number(m[1]), perSecond: Number(m[1]) / Number(m[2]) };
}

let cached: Env | undefined;

export function env(): Env {
  cached ??= {
    dbUrl: optional("SLTR_DB_URL") ?? required("SUPABASE_DB_URL"),
    gatewayDbUrl: optional("SLTR_GATEWAY_DB_URL") ?? optional("SLTR_DB_URL") ??
      required("SUPABASE_DB_URL"),
    replicaDbUrl: optional("SLTR_DB_REPLICA_URL") ?? optional("SUPABASE_DB_REPLICA_URL"),
    replicaMaxLagMs: Number(optional("SLTR_REPLICA_MAX_LAG_MS") ?? "500"),
    replicaCheckMs: Number(optional("SLTR_REPLICA_CHECK_MS") ?? "1000"),
    replicaTimeoutMs: Number(optional("SLTR_REPLICA_TIMEOUT_MS") ?? "1000"),
    dbPoolSize: Number(optional("SLTR_DB_POOL_SIZE") ?? "10"),
    // Hosted secrets may not start with SUPABASE_: the SLTR_ names are what `supabase secrets
    // set` can give; the SUPABASE_ ones are the local stack's and the platform's.
    jwtSecret: optional("SLTR_JWT_SECRET") ?? required("SUPABASE_JWT_SECRET"),
    jwtIssuer: optional("SLTR_JWT_ISSUER") ?? optional("SUPABASE_JWT_ISSUER"),
    redisUrl: optional("REDIS_URL"),
    presenceWebhookSecrets: webhookSecrets(optional),
    sentryDsn: optional("SENTRY_DSN"),
    sentryEnvironment: optional("SENTRY_ENVIRONMENT"),
    sentryTracesSampleRate: Number(optional("SENTRY_TRACES_SAMPLE_RATE") ?? "0.1"),
    dbQueryTimeoutMs: Number(optional("SLTR_DB_QUERY_TIMEOUT_MS") ?? "5000"),
    liveIndexRebuildPageRows: Number(optional("SLTR_LIVE_INDEX_REBUILD_PAGE_ROWS") ?? "100000"),
    fallbackConcurrency: Number(optional("SLTR_FALLBACK_CONCURRENCY") ?? "4"),
    presenceTicketTtlSeconds: Number(optional("PRESENCE_TICKET_TTL_SECONDS") ?? "900"),
    presenceTopics: presenceTopicCount(optional),
    quotas: {
      nearby: quota("nearby", "SLTR_QUOTA_NEARBY", "20/120"),
      status: quota("status", "SLTR_QUOTA_STATUS", "2000/60"),
      selfReport: quota("self_report", "SLTR_QUOTA_SELF_REPORT", "20/60"),
    },
    nearbyMaxProbeM: Number(optional("SLTR_NEARBY_MAX_PROBE_KM") ?? "50") * 1000,
  };
  return cached;
}
