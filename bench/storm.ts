// `make bench-storm`: a reconnect storm. N apps (default 10,000), each the real client module
// (createSltrClient: one socket, ReconnectPolicy's jittered delays, RealtimeService) with its
// own socket, track presence on their shard of SLTR_PRESENCE_TOPICS and join their inbox
// (watchStatus), through a private endpoint on the plan's joins/s (the connection cap raised so
// that N apps and the bridge fit) and its own presence bridge, into the stack's database. Then
// the endpoint is killed and started again on the same port, and every second it records:
//   - apps back: both channels joined again (the client module's view), presences on the new
//     endpoint (the server's view), users the bridge holds, and users online in Postgres (what
//     any watcher reads, get_online_users_batch: the pushes come from the same rows);
//   - joins/s as the endpoint's limit judges them (hosted's 5 s ticks over a minute) against
//     the plan's, joins refused, and joins refused for an expired token.
// The endpoint stays down --down-seconds (5). Tokens are short (the spread + 60 s) and the apps'
// token source mints a new one when the spread + 30 s are left, as a session renews ahead of its
// longest reconnect wait: a socket that is down sends no heartbeats (which refresh the token),
// so a token held across the outage and the spread has expired by the time many apps rejoin,
// unless the client fetches a fresh one while it waits.
// It checks its own workload: exit 1 when fewer than 99 % of the apps were held before the
// restart, or when the load generator's event loop lagged (it could not drive the apps), and
// then no result is written.
//   deno run -A bench/storm.ts --clients 10000 --topics 2 --timeout-seconds 120
import { createSltrClient, type SltrClient } from "../client/mod.ts";
import { cpuSeconds, flag, numberFlag, progress, sleep } from "./lib.ts";
import { idOf, seedUsers } from "./population.ts";
import { startBridge, startFunctionsServer } from "../tests/_lib/servers.ts";
import { userJwt } from "../tests/_lib/jwt.ts";
import { database, onlineMap, ticketFor } from "../tests/realtime/_helpers.ts";
import { ANON_KEY, DB_URL, SERVICE_ROLE_KEY } from "../tests/_lib/env.ts";
import { presenceTopic } from "../functions/_shared/presence_ticket.ts";
import { inboxTopic } from "../client/realtime.ts";
import { PLANS } from "../realtime/config.ts";

const CLIENTS = numberFlag("clients", 10_000);
const TOPICS = numberFlag("topics", Math.max(1, Math.ceil(CLIENTS / 5000)));
const TIMEOUT_SECONDS = numberFlag("timeout-seconds", 120);
const PLAN = flag("plan", "team") as keyof typeof PLANS;
const SPREAD_SECONDS = numberFlag("spread-seconds", 45);
const GRACE_SECONDS = numberFlag("grace-seconds", 60);
// A session renews its token ahead of its longest reconnect wait (the spread), as one must.
const RENEW_SECONDS = numberFlag("token-renew-seconds", SPREAD_SECONDS + 30);
const TOKEN_SECONDS = numberFlag("token-seconds", RENEW_SECONDS + 30);
const DOWN_SECONDS = numberFlag("down-seconds", 5);
// Realtime's "Database connection pool size" (the stack's, supabase/local.env, unless given).
const DB_POOL = numberFlag("db-pool", Number(Deno.env.get("REALTIME_DB_POOL") || 1));
const OUT = flag("out", "bench/results");
const log = (msg: string) => console.error(`[storm bench] ${msg}`);
const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
const plan = PLANS[PLAN];
if (!plan) throw new Error(`--plan: one of ${Object.keys(PLANS).join(", ")}`);

const sql = database();
log(`seeding ${CLIENTS} users`);
await seedUsers(sql, CLIENTS, 0);
const ids = Array.from({ length: CLIENTS }, (_, i) => idOf(i + 1));

// The plan's limits as hosted applies them, but for the connections: N apps and the bridge.
const serverEnv = {
  REALTIME_PLAN: PLAN,
  REALTIME_MAX_CONCURRENT_USERS: String(Math.max(plan.maxConcurrentUsers, CLIENTS + 100)),
  REALTIME_REPLICATION_DB_URL: DB_URL,
  SLTR_PRESENCE_TOPICS: String(TOPICS),
  REALTIME_DB_POOL: String(DB_POOL),
};
let server = await startFunctionsServer(serverEnv);
const port = Number(new URL(server.url).port);
const base = `http://127.0.0.1:${port}`;
const bridge = await startBridge(base, {
  SLTR_PRESENCE_TOPICS: String(TOPICS),
  BRIDGE_STATS_INTERVAL_MS: "0",
  BRIDGE_REJOIN_GRACE_MS: String(GRACE_SECONDS * 1000),
});

async function scrape(): Promise<Record<string, number>> {
  try {
    const text = await (await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    })).text();
    return Object.fromEntries(
      [...text.matchAll(/^(sltr_realtime_[a-z_]+) ([\d.e+-]+)$/gm)].map((
        m,
      ) => [m[1], Number(m[2])]),
    );
  } catch {
    return {}; // down
  }
}
const bridgeHealth = async () =>
  await (await fetch(bridge.health)).json() as {
    online: number;
    joined: boolean;
    heldLeaves: number;
    rejoins: number;
  };

/** A token source like a signed-in session's: a new token RENEW_SECONDS before expiry. */
function tokenSource(id: string): () => Promise<string> {
  let token: Promise<string> | undefined;
  let exp = 0;
  return () => {
    const now = Date.now() / 1000;
    if (!token || exp - now < RENEW_SECONDS) {
      exp = Math.floor(now) + TOKEN_SECONDS;
      token = userJwt(id, { expiresIn: exp });
    }
    return token;
  };
}

interface App {
  id: string;
  topic: string;
  inbox: string;
  sltr: SltrClient;
}

async function open(id: string): Promise<App> {
  const topic = presenceTopic(id, TOPICS);
  const sltr = createSltrClient(base, ANON_KEY, {
    accessToken: tokenSource(id),
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    reconnect: { spreadMs: SPREAD_SECONDS * 1000 },
    realtimeService: {
      // The ticket the presence-ticket function would issue (bench CPU for the storm, not for
      // 10,000 ticket requests), and no favorites: the re-read after a rejoin reads nobody.
      ticket: () =>
        Promise.resolve({
          ticket: ticketFor(id, { topic }),
          topic,
          expires_at: "",
          expires_in: 900,
        }),
      favorites: () => Promise.resolve([]),
    },
  });
  await sltr.realtime.trackPresence(id);
  sltr.realtime.watchStatus(() => {});
  return { id, topic, inbox: inboxTopic(id), sltr };
}
const back = (a: App) =>
  a.sltr.realtime.status(a.topic) === "SUBSCRIBED" &&
  a.sltr.realtime.status(a.inbox) === "SUBSCRIBED";

// ---- the ramp, paced at half the plan's joins/s (two joins an app) ------------------------
const rampStarted = performance.now();
const apps: App[] = [];
const perStep = Math.max(1, Math.floor(plan.maxJoinsPerSecond / 4 / 10)); // a tenth of a second
for (let i = 0; i < CLIENTS; i += perStep) {
  const step = performance.now();
  const batch = ids.slice(i, i + perStep).map(open);
  apps.push(...await Promise.all(batch));
  progress("ramp", apps.length, CLIENTS);
  await sleep(Math.max(0, 100 - (performance.now() - step)));
}
const rampSeconds = (performance.now() - rampStarted) / 1000;
let before = { online: 0 };
for (let t = 0; t < 120; t++) {
  before = await bridgeHealth();
  const inboxes = apps.filter(back).length;
  if (before.online >= CLIENTS && inboxes === CLIENTS) break;
  await sleep(500);
}
const appsBackBefore = apps.filter(back).length;
const onlineBefore = Object.values(await onlineMap(sql, ids)).filter(Boolean).length;
const presencesBefore = (await scrape()).sltr_realtime_presences ?? 0;
log(
  `ramp ${rampSeconds.toFixed(0)} s; apps back ${appsBackBefore}, presences ` +
    `${presencesBefore}, bridge ${before.online}, online in Postgres ${onlineBefore}`,
);

// ---- the event loop's lag: when it is late, the apps were not driven ------------------------
let lagMaxMs = 0;
let lagLast = performance.now();
const lagTimer = setInterval(() => {
  const now = performance.now();
  lagMaxMs = Math.max(lagMaxMs, now - lagLast - 100);
  lagLast = now;
}, 100);

// ---- the storm ---------------------------------------------------------------------------
const loadCpu0 = await cpuSeconds("self");
const counters0 = await scrape();
const killedAt = performance.now();
server.child.kill("SIGKILL");
await server.child.status;
await sleep(Math.max(0, killedAt + DOWN_SECONDS * 1000 - performance.now()));
server = await startFunctionsServer(serverEnv, "presence-webhook", port);
const outageMs = performance.now() - killedAt;
const serverCpu0 = await cpuSeconds(server.child.pid);
log(`endpoint back after ${outageMs.toFixed(0)} ms; watching`);

interface Second {
  t: number;
  apps_back: number;
  presences: number;
  bridge_online: number;
  bridge_held_leaves: number;
  online_in_postgres: number;
  joins_per_second_judged: number;
  joins: number;
  joins_refused: number;
  authorization_pool_timeouts: number;
  sockets: number;
  connections_refused: number;
  presence_limited: number;
  channels: number;
  /** The client module's view: channel statuses of the presence topics and of the inboxes. */
  presence_status: Record<string, number>;
  inbox_status: Record<string, number>;
}
function statuses(topic: (a: App) => string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const a of apps) {
    const s = a.sltr.realtime.status(topic(a)) ?? "none";
    counts[s] = (counts[s] ?? 0) + 1;
  }
  return counts;
}
const curve: Second[] = [];
/** Per user: when they were first seen offline in this stretch, and the longest stretch. */
const offlineSince = new Map<string, number>();
const longestOfflineMs = new Map<string, number>();
let allBackAt: number | undefined;
for (let t = 1; t <= TIMEOUT_SECONDS; t++) {
  await sleep(Math.max(0, killedAt + t * 1000 - performance.now()));
  const now = performance.now();
  const [metrics, health, online] = await Promise.all([
    scrape(),
    bridgeHealth(),
    onlineMap(sql, ids),
  ]);
  let onlineCount = 0;
  for (const id of ids) {
    if (online[id]) {
      onlineCount++;
      const since = offlineSince.get(id);
      if (since !== undefined) {
        longestOfflineMs.set(id, Math.max(longestOfflineMs.get(id) ?? 0, now - since));
        offlineSince.delete(id);
      }
    } else if (!offlineSince.has(id)) offlineSince.set(id, now);
  }
  const appsBack = apps.filter(back).length;
  curve.push({
    t,
    apps_back: appsBack,
    presences: metrics.sltr_realtime_presences ?? 0,
    bridge_online: health.online,
    bridge_held_leaves: health.heldLeaves,
    online_in_postgres: onlineCount,
    joins_per_second_judged: round(metrics.sltr_realtime_joins_per_second ?? 0),
    joins: metrics.sltr_realtime_joins_total ?? 0,
    joins_refused: metrics.sltr_realtime_joins_refused_total ?? 0,
    authorization_pool_timeouts: metrics.sltr_realtime_authorization_pool_timeouts_total ?? 0,
    sockets: metrics.sltr_realtime_sockets ?? 0,
    connections_refused: metrics.sltr_realtime_connections_refused_total ?? 0,
    presence_limited: metrics.sltr_realtime_presence_limited_total ?? 0,
    channels: metrics.sltr_realtime_channels ?? 0,
    presence_status: statuses((a) => a.topic),
    inbox_status: statuses((a) => a.inbox),
  });
  progress(
    "storm",
    appsBack,
    CLIENTS,
    `t=${t}s presences ${curve.at(-1)!.presences} joins ${curve.at(-1)!.joins} pool timeouts ${
      curve.at(-1)!.authorization_pool_timeouts
    }`,
  );
  if (appsBack === CLIENTS && curve.at(-1)!.presences >= CLIENTS && allBackAt === undefined) {
    allBackAt = t;
  }
  // Watch a little past everyone's return: the bridge's held leaves end 60 s after its rejoin.
  if (allBackAt !== undefined && t >= allBackAt + 5 && health.heldLeaves === 0) break;
}
for (const [id, since] of offlineSince) {
  longestOfflineMs.set(id, Math.max(longestOfflineMs.get(id) ?? 0, performance.now() - since));
}
clearInterval(lagTimer);
const after = await scrape();
const stormSeconds = (performance.now() - killedAt) / 1000;
const last = curve.at(-1)!;
const offlineMs = [...longestOfflineMs.values()];
const boundMs = outageMs + 5000;
const expiredRefusals = after.sltr_realtime_joins_refused_expired_token_total ?? 0;
const peakJudged = Math.max(...curve.map((s) => s.joins_per_second_judged));

const report = {
  when: new Date().toISOString(),
  machine:
    `${navigator.hardwareConcurrency} cores; the endpoint, Postgres, Redis, the bridge and ${CLIENTS} client-module apps (one socket each) on one machine`,
  topology: `${TOPICS} presence topics (${
    Math.round(CLIENTS / TOPICS)
  } members each), one bridge holding all; an inbox per app`,
  plan: {
    name: PLAN,
    joins_per_second: plan.maxJoinsPerSecond,
    connections_cap_raised_to: Number(serverEnv.REALTIME_MAX_CONCURRENT_USERS),
    database_connection_pool_size: DB_POOL,
  },
  clients: CLIENTS,
  token_lifetime_seconds: TOKEN_SECONDS,
  token_renewed_seconds_before_expiry: RENEW_SECONDS,
  reconnect_spread_seconds: SPREAD_SECONDS,
  bridge_rejoin_grace_seconds: GRACE_SECONDS,
  before: {
    ramp_seconds: round(rampSeconds),
    apps_back: appsBackBefore,
    presences: presencesBefore,
    bridge_online: before.online,
    online_in_postgres: onlineBefore,
  },
  outage_ms: Math.round(outageMs),
  all_back_seconds: allBackAt ?? null,
  joins: {
    during_storm: last.joins, // the new endpoint's counters start at 0
    refused: last.joins_refused,
    refused_expired_token: expiredRefusals,
    // Authorization checks that found no connection of the pool in time (IncreaseConnectionPool).
    authorization_pool_timeouts: after.sltr_realtime_authorization_pool_timeouts_total ?? 0,
    peak_per_second_judged: peakJudged,
    plan_limit: plan.maxJoinsPerSecond,
    peak_share_of_limit: round(peakJudged / plan.maxJoinsPerSecond, 3),
  },
  offline_to_a_watcher: {
    bound_ms: Math.round(boundMs),
    users_ever_offline: offlineMs.length,
    users_over_bound: offlineMs.filter((ms) => ms > boundMs).length,
    longest_ms: Math.round(Math.max(0, ...offlineMs)),
  },
  end: {
    seconds: round(stormSeconds),
    apps_back: last.apps_back,
    presences: last.presences,
    bridge_online: last.bridge_online,
    online_in_postgres: last.online_in_postgres,
  },
  cpu_seconds: {
    endpoint_after_restart: round(await cpuSeconds(server.child.pid) - serverCpu0),
    load_generator: round(await cpuSeconds("self") - loadCpu0),
  },
  load_generator_event_loop_lag_max_ms: Math.round(lagMaxMs),
  counters_before_restart: {
    joins: counters0.sltr_realtime_joins_total ?? 0,
    joins_refused: counters0.sltr_realtime_joins_refused_total ?? 0,
  },
  curve,
};
console.log(JSON.stringify({ ...report, curve: `${curve.length} seconds` }, null, 2));
const held = before.online >= CLIENTS * 0.99 && onlineBefore >= CLIENTS * 0.99 &&
  presencesBefore >= CLIENTS * 0.99;
const driven = lagMaxMs < 2000;
if (held && driven) {
  await Deno.mkdir(OUT, { recursive: true });
  const file = `${OUT}/storm-${report.when.slice(0, 10)}-${CLIENTS}-spread${SPREAD_SECONDS}.json`;
  await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
  log(`written to ${file}`);
} else {
  const file = flag("failed-out", "/tmp/storm-not-held.json");
  await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
  log(`not a result (kept in ${file} to read):`);
  log(
    held
      ? `the load generator lagged ${lagMaxMs.toFixed(0)} ms: it could not drive ${CLIENTS} apps`
      : `the workload did not hold before the restart: bridge ${before.online}, online ${onlineBefore}, presences ${presencesBefore} of ${CLIENTS}`,
  );
}
await Promise.all(apps.map((a) => a.sltr.realtime.close().catch(() => {})));
await bridge.stop();
server.child.kill();
await server.child.status;
await sql`delete from auth.users where email like 'bench-%@sltr.bench'`;
await sql.end();
Deno.exit(held && driven ? 0 : 1);
