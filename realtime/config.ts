// The local Realtime endpoint's settings: the tenant limits of a hosted plan, the server's own
// timeouts, and where the database is. Read once from the environment (REALTIME_*).
//
// Plan limits are Supabase's published ones (supabase.com/docs/guides/realtime/limits, "Limits
// by plan"); the defaults of the server source (supabase/realtime config/runtime.exs, tenant.ex)
// fill in what the plans do not name. Enterprise's are the published floor ("10,000+"): a
// contract raises them per project. REALTIME_PLAN names the plan; the local stack runs the one
// supabase/local.env names (team: what docs/scaling.md says 5,000 online needs).

export interface Limits {
  /** Sockets with at least one channel (`max_concurrent_users`). */
  maxConcurrentUsers: number;
  /** Channel joins per second, averaged like the hosted RateCounter (5 s ticks, 12 buckets). */
  maxJoinsPerSecond: number;
  maxChannelsPerClient: number;
  /** Messages delivered per second, all channels together. */
  maxEventsPerSecond: number;
  maxPresenceEventsPerSecond: number;
  /** Broadcast and presence payloads; the hosted check allows 500 bytes of slack. */
  maxPayloadKb: number;
  /** Presence calls (track/untrack) per channel in one window (CLIENT_PRESENCE_MAX_CALLS). */
  clientPresenceMaxCalls: number;
  clientPresenceWindowMs: number;
}

const common = {
  maxChannelsPerClient: 100,
  clientPresenceMaxCalls: 5,
  clientPresenceWindowMs: 30_000,
};

const LARGE = {
  ...common,
  maxConcurrentUsers: 10_000,
  maxJoinsPerSecond: 2_500,
  maxEventsPerSecond: 2_500,
  maxPresenceEventsPerSecond: 1_000,
  maxPayloadKb: 3000,
};

export const PLANS = {
  free: {
    ...common,
    maxConcurrentUsers: 200,
    maxJoinsPerSecond: 100,
    maxEventsPerSecond: 100,
    maxPresenceEventsPerSecond: 20,
    maxPayloadKb: 256,
  },
  pro: {
    ...common,
    maxConcurrentUsers: 500,
    maxJoinsPerSecond: 500,
    maxEventsPerSecond: 500,
    maxPresenceEventsPerSecond: 50,
    maxPayloadKb: 3000,
  },
  // Pro without a spend cap, Team and Enterprise publish the same limits (Enterprise as "+").
  pro_no_spend_cap: LARGE,
  team: LARGE,
  enterprise: LARGE,
} satisfies Record<string, Limits>;

export type Plan = keyof typeof PLANS;

export interface RealtimeConfig {
  plan: Plan;
  limits: Limits;
  /** The project's JWT secret (HS256/384/512 tokens). */
  jwtSecret: string;
  /** Authorization checks, through the pooler (transaction mode). */
  dbUrl: string;
  /** The tenant's "Database connection pool size" (db_pool): the connections that check
   * Realtime Authorization. Hosted's default is 1 (database.ex pool_size_by_application_name,
   * "realtime_connect"); the dashboard's Realtime Settings raise it. */
  dbPool: number;
  /** DBConnection's queue_target for that pool (db_queue_target, default 5000 ms): a check
   * that waited twice this long for a connection is dropped (IncreaseConnectionPool). */
  dbQueueTargetMs: number;
  /** Logical replication of realtime.messages: a direct connection, never the pooler. */
  replicationUrl: string | undefined;
  /** A refused join is answered this late (CHANNEL_ERROR_BACKOFF_MS, default 5000). */
  joinErrorBackoffMs: number;
  /** A refused connection is answered this late (CONNECT_ERROR_BACKOFF_MS, default 2000). */
  connectErrorBackoffMs: number;
  /** A socket that sent nothing for this long is closed (Phoenix's 60 s websocket timeout). */
  idleTimeoutMs: number;
  /** Largest frame accepted (endpoint.ex max_frame_size). */
  maxFrameBytes: number;
  /** The longest the channel waits before re-verifying its token (@confirm_token_ms_interval). */
  confirmTokenIntervalMs: number;
  /** Tenant setting "only private channels". */
  privateOnly: boolean;
  /** The janitor's period for realtime.messages partitions (JANITOR_SCHEDULE_TIMER_IN_MS). */
  janitorIntervalMs: number;
}

function integer(env: (name: string) => string | undefined, name: string, fallback: number) {
  const raw = env(name);
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${raw}`);
  }
  return value;
}

export function realtimeConfig(
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): RealtimeConfig {
  const plan = (env("REALTIME_PLAN") || "team") as Plan;
  if (!(plan in PLANS)) {
    throw new Error(`REALTIME_PLAN must be one of ${Object.keys(PLANS).join(", ")}, got ${plan}`);
  }
  const base: Limits = PLANS[plan];
  const limits: Limits = {
    maxConcurrentUsers: integer(env, "REALTIME_MAX_CONCURRENT_USERS", base.maxConcurrentUsers),
    maxJoinsPerSecond: integer(env, "REALTIME_MAX_JOINS_PER_SECOND", base.maxJoinsPerSecond),
    maxChannelsPerClient: integer(
      env,
      "REALTIME_MAX_CHANNELS_PER_CLIENT",
      base.maxChannelsPerClient,
    ),
    maxEventsPerSecond: integer(env, "REALTIME_MAX_EVENTS_PER_SECOND", base.maxEventsPerSecond),
    maxPresenceEventsPerSecond: integer(
      env,
      "REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND",
      base.maxPresenceEventsPerSecond,
    ),
    maxPayloadKb: integer(env, "REALTIME_MAX_PAYLOAD_KB", base.maxPayloadKb),
    clientPresenceMaxCalls: integer(
      env,
      "REALTIME_CLIENT_PRESENCE_MAX_CALLS",
      base.clientPresenceMaxCalls,
    ),
    clientPresenceWindowMs: integer(
      env,
      "REALTIME_CLIENT_PRESENCE_WINDOW_MS",
      base.clientPresenceWindowMs,
    ),
  };
  const jwtSecret = env("SUPABASE_JWT_SECRET");
  const dbUrl = env("REALTIME_DB_URL") || env("SUPABASE_DB_URL");
  if (!jwtSecret) throw new Error("missing environment variable SUPABASE_JWT_SECRET");
  if (!dbUrl) throw new Error("missing environment variable REALTIME_DB_URL or SUPABASE_DB_URL");
  return {
    plan,
    limits,
    jwtSecret,
    dbUrl,
    dbPool: Math.max(1, integer(env, "REALTIME_DB_POOL", 1)),
    dbQueueTargetMs: integer(env, "REALTIME_DB_QUEUE_TARGET_MS", 5000),
    replicationUrl: env("REALTIME_REPLICATION_DB_URL") || undefined,
    joinErrorBackoffMs: integer(env, "REALTIME_JOIN_ERROR_BACKOFF_MS", 5000),
    connectErrorBackoffMs: integer(env, "REALTIME_CONNECT_ERROR_BACKOFF_MS", 2000),
    idleTimeoutMs: integer(env, "REALTIME_IDLE_TIMEOUT_MS", 60_000),
    maxFrameBytes: integer(env, "REALTIME_MAX_FRAME_BYTES", 5_000_000),
    confirmTokenIntervalMs: integer(env, "REALTIME_CONFIRM_TOKEN_INTERVAL_MS", 5 * 60_000),
    privateOnly: env("REALTIME_PRIVATE_ONLY") === "true",
    janitorIntervalMs: integer(env, "REALTIME_JANITOR_SCHEDULE_TIMER_IN_MS", 4 * 3_600_000),
  };
}
