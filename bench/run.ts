// `make bench`: loads clustered users with the online population seeded consistently
// (profiles, buffer and the Redis live index agree, every online user seen just now), keeps it
// alive as the bridge does (everyone present re-sent every 60 s), drives the per-user rates
// uncapped (every online user reads nearby every ~30 s, comes and goes on ~20-minute sessions,
// moves every ~5 minutes) through the signed webhook and the functions, probes arrivals, leaves
// and moves, samples the online count in Postgres and in Redis every 5 s (the run fails when
// either strays more than 5 % from the target), reports CPU time per request for every process,
// then the seed's polling baseline on the same users. Writes bench/results/<date>-<users>.*.
//   deno run -A bench/run.ts --users 50000 --online-ratio 0.1 --duration 120
import postgres from "postgres";
import { Redis } from "ioredis";
import { localUserJwt } from "../scripts/token.ts";
import {
  Args,
  cpuSeconds,
  Latency,
  paced,
  parseArgs,
  progress,
  sleep,
  treeCpuSeconds,
} from "./lib.ts";
import { ID_PREFIX, idOf, Population, seedUsers } from "./population.ts";
import { writeReport } from "./report.ts";
import {
  DB_URL,
  FUNCTIONS_URL,
  POOLER_URL,
  REDIS_URL,
  REPLICA_DB_URL,
  SERVICE_ROLE_KEY,
  STATE_DIR as STATE,
} from "../tests/_lib/env.ts";
import { rng } from "../tests/_lib/rng.ts";
import { postSignedEvents as signedPost } from "../tests/_lib/webhook.ts";

const args: Args = parseArgs(Deno.args);
const redis = new Redis(REDIS_URL, {
  maxRetriesPerRequest: 1,
});

// The benchmark's own direct connections are named, and left out of the connection counts.
const BENCH_APP = "sltr-bench-direct";
const direct = postgres(DB_URL, {
  max: 2,
  onnotice: () => {},
  connection: { application_name: BENCH_APP },
});
// The RPCs as PostgREST would send them, through the pooler.
const pooled = postgres(POOLER_URL, {
  max: 8,
  prepare: false,
  onnotice: () => {},
  connection: { application_name: "sltr-bench-rpc" },
});
const monitor = postgres(DB_URL, {
  max: 1,
  onnotice: () => {},
  connection: { application_name: BENCH_APP },
});
// The read replica, when the stack has one (REPLICA_DB_URL): its lag, its statements, and
// status as a client reading it would see it.
const replicaDb = REPLICA_DB_URL
  ? postgres(REPLICA_DB_URL, {
    max: 2,
    onnotice: () => {},
    connection: { application_name: BENCH_APP },
  })
  : undefined;

const pop = new Population(args.users);
const TARGET_ONLINE = Math.round(args.users * args.onlineRatio);

/** Users 1..N in clusters; users 1..TARGET_ONLINE online, seen a moment ago, with a buffered
 * heartbeat (as the bridge's refresh leaves one), and the live index rebuilt from that: the
 * population the run claims is the one Postgres and Redis hold from its first second. */
async function loadUsers(): Promise<void> {
  const t0 = performance.now();
  progress("load", 0, 4, `creating ${args.users} users`);
  await seedUsers(direct, args.users, TARGET_ONLINE, () => progress("load", 1, 4, "profiles"));
  progress("load", 2, 4, "analyze");
  await direct`analyze auth.users`;
  await direct`analyze public.profiles`;
  await direct`analyze public.presence_buffer`;
  // Where everyone is, for the load generator.
  const rows = await direct<{ n: number; lat: number; lng: number }[]>`
    select ('x' || right(replace(id::text, '-', ''), 12))::bit(48)::bigint::int as n,
           latitude as lat, longitude as lng
    from public.profiles where id between ${idOf(1)}::uuid and ${idOf(args.users)}::uuid`;
  for (const row of rows) {
    pop.lat[row.n] = row.lat;
    pop.lng[row.n] = row.lng;
  }
  for (let n = 1; n <= TARGET_ONLINE; n++) pop.setOnline(n, true);
  progress("load", 3, 4, "rebuilding the live index");
  await redis.del("{live}:built", "{live}:rebuilding");
  const token = await userJwt(1);
  while (await redis.get("{live}:built") === null) {
    await (await fetch(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`, {
      headers: { authorization: `Bearer ${token}` },
    })).arrayBuffer();
    await sleep(500);
  }
  progress("load", 4, 4, `${Math.round(performance.now() - t0)} ms`);
}

const tokens = new Map<number, string>();
async function userJwt(n: number): Promise<string> {
  let t = tokens.get(n);
  if (!t) tokens.set(n, t = await localUserJwt(idOf(n)));
  return t;
}

async function timed(h: Latency, fn: () => Promise<Response>): Promise<Response | undefined> {
  const t0 = performance.now();
  try {
    const res = await fn();
    await res.arrayBuffer().catch(() => {});
    h.recordMs(performance.now() - t0, res.status);
    if (res.status >= 500) h.errors++;
    return res;
  } catch {
    h.errors++;
    return undefined;
  }
}

/** get_online_users_batch exactly as PostgREST calls it: role and claims set for the transaction. */
async function batchRpc(
  sub: string,
  ids: string[],
  on: postgres.Sql = pooled,
): Promise<{ user_id: string; is_online: boolean }[]> {
  const claims = JSON.stringify({ sub, role: "authenticated" });
  return await on.begin(async (tx) => {
    await tx`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${claims}, true)`;
    return await tx<{ user_id: string; is_online: boolean }[]>`
      select user_id, is_online from public.get_online_users_batch(${ids}::uuid[])`;
  });
}

/** Server connections now: all client backends (PgBouncer keeps idle ones for 60 s) and
 * those running a statement. */
async function serverConnections(): Promise<{ total: number; active: number }> {
  const [row] = await monitor<{ total: number; active: number }[]>`
    select count(*)::int as total, (count(*) filter (where state <> 'idle'))::int as active
    from pg_stat_activity
    where backend_type = 'client backend' and application_name <> ${BENCH_APP}`;
  return row;
}

/** A point around user n's place, up to `metres` away. */
function jitter(n: number, r: () => number, metres: number): { lat: number; lng: number } {
  const d = metres / 111_320;
  const lat = Math.max(-89, Math.min(89, pop.lat[n] + (r() - 0.5) * 2 * d));
  return { lat, lng: pop.lng[n] + ((r() - 0.5) * 2 * d) / Math.cos((pop.lat[n] * Math.PI) / 180) };
}

/** CPU seconds so far of each process of the stack, and of this load generator. */
async function cpuNow(): Promise<Record<string, number>> {
  const pid = async (file: string) =>
    Number((await Deno.readTextFile(file).catch(() => "0")).split("\n")[0]);
  return {
    functions: await cpuSeconds(await pid(`${STATE}/run/functions.pid`)).catch(() => 0),
    realtime: await cpuSeconds(await pid(`${STATE}/run/realtime.pid`)).catch(() => 0),
    postgres: await treeCpuSeconds(await pid(`${STATE}/pg/postmaster.pid`)),
    replica: await treeCpuSeconds(await pid(`${STATE}/pg-replica/postmaster.pid`)),
    pgbouncer: await cpuSeconds(await pid(`${STATE}/run/pgbouncer.pid`)).catch(() => 0),
    redis: await cpuSeconds(await pid(`${STATE}/run/redis.pid`)).catch(() => 0),
    bridge: await cpuSeconds(await pid(`${STATE}/run/bridge.pid`)).catch(() => 0),
    load_generator: await cpuSeconds("self"),
  };
}

/** Postgres's CPU so far by kind of process (client backends by application_name, walsender,
 * autovacuum, checkpointer, ...), and what exited backends used (the postmaster's cutime). */
async function postgresCpuNow(): Promise<{ byPid: Map<number, [string, number]>; exited: number }> {
  const postmaster = Number(
    (await Deno.readTextFile(`${STATE}/pg/postmaster.pid`).catch(() => "0")).split("\n")[0],
  );
  const rows = await monitor<{ pid: number; label: string }[]>`
    select pid, case when backend_type = 'client backend'
      then 'client ' || coalesce(nullif(application_name, ''), 'unnamed') else backend_type end as label
    from pg_stat_activity`;
  const byPid = new Map<number, [string, number]>();
  for (const row of rows) {
    const s = await cpuSeconds(row.pid).catch(() => undefined);
    if (s !== undefined) byPid.set(row.pid, [row.label, s]);
  }
  const stat = await Deno.readTextFile(`/proc/${postmaster}/stat`).catch(() => "");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { byPid, exited: stat ? (Number(f[13]) + Number(f[14])) / 100 : 0 };
}

/** Where Postgres spent its CPU between two postgresCpuNow() readings, seconds by label. */
function postgresCpuDiff(
  a: Awaited<ReturnType<typeof postgresCpuNow>>,
  b: Awaited<ReturnType<typeof postgresCpuNow>>,
): Record<string, number> {
  const out: Record<string, number> = { "exited backends": b.exited - a.exited };
  for (const [pid, [label, s]] of b.byPid) {
    out[label] = (out[label] ?? 0) + s - (a.byPid.get(pid)?.[1] ?? 0);
  }
  return Object.fromEntries(
    Object.entries(out).filter(([, s]) => s >= 0.05).sort((x, y) => y[1] - x[1])
      .map(([k, s]) => [k, Math.round(s * 100) / 100]),
  );
}

/** pg_stat_statements now: calls and time per statement. */
async function statementsNow(): Promise<Map<string, { calls: number; ms: number; query: string }>> {
  const rows = await monitor<{ id: string; calls: string; ms: number; query: string }[]>`
    select queryid::text as id, calls::text, total_exec_time as ms,
      left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 90) as query
    from extensions.pg_stat_statements`;
  return new Map(rows.map((r) => [r.id, { calls: Number(r.calls), ms: r.ms, query: r.query }]));
}

/** The statements that took the most database time between two statementsNow() readings. */
function topStatements(
  a: Awaited<ReturnType<typeof statementsNow>>,
  b: Awaited<ReturnType<typeof statementsNow>>,
  n = 6,
) {
  return [...b].map(([id, x]) => ({
    query: x.query,
    calls: x.calls - (a.get(id)?.calls ?? 0),
    ms: Math.round(x.ms - (a.get(id)?.ms ?? 0)),
  })).filter((x) => x.calls > 0).sort((x, y) => y.ms - x.ms).slice(0, n);
}

const diff = (a: Record<string, number>, b: Record<string, number>) =>
  Object.fromEntries(Object.keys(b).map((k) => [k, Math.round((b[k] - a[k]) * 1000) / 1000]));

/** Statement calls and execution time (ms) in pg_stat_statements matching a pattern. */
async function statements(
  pattern: string,
  on: postgres.Sql = monitor,
): Promise<{ calls: number; ms: number }> {
  const [row] = await on<{ calls: string | null; ms: number | null }[]>`
    select sum(calls)::text as calls, sum(total_exec_time) as ms
    from extensions.pg_stat_statements where query ~* ${pattern}`;
  return { calls: Number(row.calls ?? 0), ms: Number(row.ms ?? 0) };
}

// The bench population's online users (ids of the bench's own range only: the stack may hold
// other users, e.g. the test suites'), by the read rule (a newer buffered event wins), counted
// as monitoring.users_online() counts: through the partial indexes on who is online, so the
// sampling costs tens of milliseconds at 50,000 online, not a snapshot of everyone's cell.
async function benchOnlineInPostgres(): Promise<number> {
  const lo = idOf(1), hi = idOf(args.users);
  const [row] = await monitor<{ n: number }[]>`
    select (
      select count(*) from public.profiles as p
      where p.is_online and p.id between ${lo}::uuid and ${hi}::uuid
        and not exists (
          select from public.presence_buffer as b
          where b.user_id = p.id and not b.is_online
            and (p.last_seen_at is null or b.event_at > p.last_seen_at))
    ) + (
      select count(*) from public.presence_buffer as b
      join public.profiles as p on p.id = b.user_id
      where b.is_online and not p.is_online and b.user_id between ${lo}::uuid and ${hi}::uuid
        and (p.last_seen_at is null or b.event_at > p.last_seen_at)
    ) as n`.catch(() => [{ n: -1 }]);
  return Number(row.n);
}

async function benchOnlineInRedis(): Promise<number> {
  let cursor = "0";
  let n = 0;
  try {
    do {
      const [next, ids] = await redis.sscan(
        "{live}:online",
        cursor,
        "MATCH",
        `${ID_PREFIX}*`,
        "COUNT",
        5000,
      );
      cursor = next;
      n += ids.length;
    } while (cursor !== "0");
    return n;
  } catch {
    return -1;
  }
}

const PRESENCE_SQL =
  "ingest_presence|flush_presence|expire_stale_presence|live_index_snapshot\\(false, \\$1";
const RECONCILE_SQL = "live_index_snapshot\\(\\)|live_index_snapshot\\(false\\)";
const READ_SQL =
  "select user_id, display_name, distance_m, last_seen_at\\s+from (public|private)\\.find_nearby|" +
  "select user_id, is_online, last_seen_at from public\\.get_online_users_batch";

/** The replica's lag as the functions measure it (replica.ts), in ms, and the primary's
 * replay_lag for its slot (null once caught up and idle). */
async function replicaLagMs(): Promise<{ replica: number; primary: number | null } | undefined> {
  if (!replicaDb) return undefined;
  const [[a], [b]] = await Promise.all([
    replicaDb<{ lag: number }[]>`
      select (case
        when pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0
        else coalesce(extract(epoch from clock_timestamp() - pg_last_xact_replay_timestamp()), 0)
      end * 1000)::float8 as lag`,
    monitor<{ lag: number | null }[]>`
      select (max(replay_lag_seconds) * 1000)::float8 as lag
      from monitoring.replication_status() where slot_name is not null`,
  ]);
  return { replica: a.lag, primary: b.lag };
}

/** Waits until the replica has replayed the population load: on a machine that also runs the
 * replica, replaying a million inserts takes a core for minutes, and a run measured meanwhile
 * would price that replay, not the workload. */
async function replicaCaughtUp(): Promise<void> {
  if (!replicaDb) return;
  const started = performance.now();
  const [{ lsn }] = await monitor<{ lsn: string }[]>`select pg_current_wal_lsn()::text as lsn`;
  for (;;) {
    const [{ ok }] = await replicaDb<{ ok: boolean }[]>`
      select pg_last_wal_replay_lsn() >= ${lsn}::pg_lsn as ok`;
    if (ok) break;
    if (performance.now() - started > 600_000) throw new Error("the replica never caught up");
    await sleep(500);
  }
  console.error(
    `replica caught up with the load in ${Math.round((performance.now() - started) / 1000)} s`,
  );
}

/** Reads by route, as the functions server counts them (sltr_db_reads_total). */
async function readRoutes(): Promise<Record<string, number>> {
  const res = await fetch(`${FUNCTIONS_URL}/metrics`, {
    headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
  }).catch(() => undefined);
  const text = res?.ok ? await res.text() : "";
  const routes: Record<string, number> = {};
  for (const m of text.matchAll(/^sltr_db_reads_total\{route="([a-z_]+)"\} (\d+)$/gm)) {
    routes[m[1]] = Number(m[2]);
  }
  return routes;
}

const pct = (xs: number[], q: number) => {
  if (!xs.length) return null;
  const sorted = [...xs].sort((a, b) => a - b);
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] * 10) / 10;
};

async function presencePhase() {
  const r = rng(7);
  const h = {
    webhook: new Latency(),
    nearby: new Latency(),
    status: new Latency(),
    rpc: new Latency(),
    arrival: { batch: new Latency(), nearby: new Latency(), replica: new Latency() },
    leave: { batch: new Latency(), nearby: new Latency(), replica: new Latency() },
    move: { nearby: new Latency() },
  };
  const hits = { nearby: 0, nearbyMiss: 0, status: 0, statusMiss: 0, degraded: 0 };
  let peak = 0;
  let peakActive = 0;
  const online = { pg: [] as number[], redis: [] as number[] };
  const lag = { replica: [] as number[], primary: [] as number[] };

  // Per-user rates, uncapped: every online user reads nearby every ~30 s, a session lasts ~20
  // minutes (a join and a leave per online user per 1,200 s), a move every ~5 minutes, and the
  // bridge re-sends everyone present every 60 s.
  const joinsPerSec = TARGET_ONLINE / 1200;
  const movesPerSec = TARGET_ONLINE / 300;
  const refreshPerSec = TARGET_ONLINE / 60;
  const nearbyPerSec = TARGET_ONLINE / 30;
  const statusPerSec = args.smoke ? 10 : 50;
  const rpcPerSec = args.smoke ? 10 : 50;

  let stop = false;
  let measuring = false;
  let nearbyOnly = false;
  const startedAt = performance.now();
  const total = (args.warmup + args.duration) * 1000;
  const done = () => stop;
  let refreshCursor = 0;
  let carry = { join: 0, move: 0, refresh: 0 };
  let sentEvents = 0;
  // Probe events ride in the bridge's next batch, as a real transition would: no statement of
  // their own. Each waiter is told when its batch was accepted.
  const probeQueue: { event: Record<string, unknown>; accepted: () => void }[] = [];
  const viaBridge = (event: Record<string, unknown>) =>
    new Promise<void>((accepted) => probeQueue.push({ event, accepted }));

  // The bridge: one signed batch every 250 ms with what happened meanwhile and a quarter
  // second's share of the refresh.
  const bridge = paced(4, 1, done, async () => {
    const probes = probeQueue.splice(0);
    const events: Record<string, unknown>[] = probes.map((p) => p.event);
    if (nearbyOnly) {
      // The last probe of the mixed phase still gets its batch.
      if (events.length) await (await signedPost(events)).arrayBuffer();
      for (const p of probes) p.accepted();
      return;
    }
    const at = new Date().toISOString();
    carry = {
      join: carry.join + joinsPerSec / 4,
      move: carry.move + movesPerSec / 4,
      refresh: carry.refresh + refreshPerSec / 4,
    };
    for (; carry.join >= 1; carry.join--) {
      const leaving = pop.pick(true, r);
      const arriving = pop.pick(false, r);
      if (leaving !== undefined && pop.online > 1) {
        pop.setOnline(leaving, false);
        events.push({ user_id: idOf(leaving), status: "offline", at });
      }
      if (arriving !== undefined) {
        const p = jitter(arriving, r, 50);
        pop.setOnline(arriving, true);
        events.push({ user_id: idOf(arriving), status: "online", at, lat: p.lat, lng: p.lng });
      }
    }
    for (; carry.move >= 1; carry.move--) {
      const n = pop.pick(true, r);
      if (n === undefined) continue;
      const p = jitter(n, r, 300);
      pop.lat[n] = p.lat;
      pop.lng[n] = p.lng;
      events.push({ user_id: idOf(n), status: "online", at, lat: p.lat, lng: p.lng });
    }
    for (; carry.refresh >= 1; carry.refresh--) {
      if (pop.online === 0) break;
      const n = pop.onlineAt(refreshCursor++ % pop.online);
      if (!pop.reserved.has(n)) events.push({ user_id: idOf(n), status: "online", at });
    }
    for (let i = 0; i < events.length; i += 1000) {
      const res = await timed(
        measuring ? h.webhook : new Latency(),
        () => signedPost(events.slice(i, i + 1000)),
      );
      if (res && res.status !== 202) console.error(`webhook answered ${res.status}`);
      if (measuring) sentEvents += Math.min(1000, events.length - i);
    }
    for (const p of probes) p.accepted();
  });

  // Readers: open loop at the per-user rate; as many in flight as it takes, up to 64.
  let nearbyDue = 0;
  let nearbyLate = 0;
  const nearby = paced(nearbyPerSec, 64, done, async () => {
    nearbyDue++;
    const reader = pop.pick(true, r);
    if (reader === undefined) return;
    const from = jitter(reader, r, 20);
    const url = `${FUNCTIONS_URL}/nearby-online?lat=${from.lat.toFixed(5)}&lng=${
      from.lng.toFixed(5)
    }&radius_m=5000&limit=50`;
    const token = await userJwt(reader);
    const t0 = performance.now();
    try {
      const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
      const body = res.status === 200 ? await res.json() : (await res.arrayBuffer(), undefined);
      if (!measuring) return;
      h.nearby.recordMs(performance.now() - t0, res.status);
      if (res.status >= 500) h.nearby.errors++;
      if (body?.cached) hits.nearby++;
      else if (body) hits.nearbyMiss++;
      if (body?.degraded) hits.degraded++;
    } catch {
      if (measuring) h.nearby.errors++;
    }
  }, () => {
    if (measuring) nearbyLate++;
  });
  const status = paced(statusPerSec, 4, done, async () => {
    if (nearbyOnly) return;
    const ids = Array.from({ length: 50 }, () => idOf(1 + Math.floor(r() * args.users)));
    const res = await timed(
      measuring ? h.status : new Latency(),
      async () =>
        await fetch(`${FUNCTIONS_URL}/online-status`, {
          method: "POST",
          headers: {
            authorization: `Bearer ${await userJwt(1 + Math.floor(r() * TARGET_ONLINE))}`,
            "content-type": "application/json",
          },
          body: JSON.stringify({ user_ids: ids }),
        }).then(async (x) => {
          const body = x.status === 200 ? await x.clone().json() : undefined;
          if (measuring && body) body.cached ? hits.status++ : hits.statusMiss++;
          return x;
        }),
    );
    void res;
  });
  const rpc = paced(rpcPerSec, 3, done, async () => {
    if (nearbyOnly) return;
    const ids = Array.from({ length: 100 }, () => idOf(1 + Math.floor(r() * args.users)));
    const t0 = performance.now();
    try {
      await batchRpc(idOf(1), ids);
      if (measuring) h.rpc.recordMs(performance.now() - t0);
    } catch {
      if (measuring) h.rpc.errors++;
    }
  });

  // Probes, one a second in turn: an arrival, a leave, a move; each until every read path
  // shows it (or 5 s).
  let probeKind = 0;
  const viewerOf = async (n: number) => {
    const v = pop.pick(true, r);
    return await userJwt(v === n || v === undefined ? 1 : v);
  };
  const seenNearby = async (n: number, where: { lat: number; lng: number }, token: string) => {
    const url = `${FUNCTIONS_URL}/nearby-online?lat=${where.lat.toFixed(5)}&lng=${
      where.lng.toFixed(5)
    }&radius_m=1000&limit=500`;
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    const body = res.status === 200 ? await res.json() : (await res.arrayBuffer(), undefined);
    return body?.users?.some((x: { user_id: string }) => x.user_id === idOf(n)) ?? false;
  };
  const seenBatch = async (n: number) =>
    (await batchRpc(idOf(1), [idOf(n)]).catch(() => []))[0]
      ?.is_online;
  // The same RPC on the replica: how long a status change takes to reach a reader there.
  const seenOnReplica = async (n: number) =>
    replicaDb
      ? (await batchRpc(idOf(1), [idOf(n)], replicaDb).catch(() => []))[0]?.is_online
      : undefined;
  const until = async (check: () => Promise<boolean>, hist: Latency, from: number) => {
    while (performance.now() - from < 5000) {
      if (await check().catch(() => false)) {
        if (measuring) hist.recordMs(performance.now() - from);
        return;
      }
      await sleep(20);
    }
    if (measuring) hist.errors++;
  };
  const probe = paced(1, 1, done, async () => {
    if (nearbyOnly) return;
    const kind = ["arrival", "leave", "move"][probeKind++ % 3];
    const n = pop.pick(kind === "arrival" ? false : true, r);
    if (n === undefined) return;
    pop.reserved.add(n);
    try {
      const token = await viewerOf(n);
      const at = new Date().toISOString();
      if (kind === "arrival") {
        pop.setOnline(n, true);
        const p = { lat: pop.lat[n], lng: pop.lng[n] };
        await viaBridge({ user_id: idOf(n), status: "online", at, ...p });
        const from = performance.now();
        await Promise.all([
          until(async () => await seenBatch(n) === true, h.arrival.batch, from),
          until(() => seenNearby(n, p, token), h.arrival.nearby, from),
          replicaDb && until(async () => await seenOnReplica(n) === true, h.arrival.replica, from),
        ]);
      } else if (kind === "leave") {
        pop.setOnline(n, false);
        const p = { lat: pop.lat[n], lng: pop.lng[n] };
        await viaBridge({ user_id: idOf(n), status: "offline", at });
        const from = performance.now();
        await Promise.all([
          until(async () => await seenBatch(n) === false, h.leave.batch, from),
          until(async () => !(await seenNearby(n, p, token)), h.leave.nearby, from),
          replicaDb && until(async () => await seenOnReplica(n) === false, h.leave.replica, from),
        ]);
      } else {
        // 3 km north: seen from the new place, gone from the old one.
        const old = { lat: pop.lat[n], lng: pop.lng[n] };
        const p = { lat: Math.min(89, old.lat + 0.027), lng: old.lng };
        pop.lat[n] = p.lat;
        await viaBridge({ user_id: idOf(n), status: "online", at, ...p });
        const from = performance.now();
        await until(
          async () => await seenNearby(n, p, token) && !(await seenNearby(n, old, token)),
          h.move.nearby,
          from,
        );
      }
    } finally {
      pop.reserved.delete(n);
    }
  });
  const sampler = (async () => {
    let nextCount = 0;
    let nextLag = 0;
    while (!stop) {
      if (replicaDb && performance.now() >= nextLag) {
        nextLag = performance.now() + 1000;
        const l = await replicaLagMs().catch(() => undefined);
        if (measuring && l) {
          lag.replica.push(l.replica);
          if (l.primary !== null) lag.primary.push(l.primary);
        }
      }
      const n = await serverConnections().catch(() => ({ total: 0, active: 0 }));
      if (measuring) peak = Math.max(peak, n.total);
      if (measuring) peakActive = Math.max(peakActive, n.active);
      if (performance.now() >= nextCount) {
        nextCount = performance.now() + 5000;
        const [pg, inRedis] = await Promise.all([benchOnlineInPostgres(), benchOnlineInRedis()]);
        if (measuring) {
          online.pg.push(pg);
          online.redis.push(inRedis);
        }
      }
      const elapsed = performance.now() - startedAt;
      progress("presence", Math.min(elapsed, total), total, measuring ? "measuring" : "warm-up");
      await sleep(250);
    }
  })();

  // Everything the window is judged by, read at its start and its end.
  const counters = async () => ({
    presence: await statements(PRESENCE_SQL),
    reconcile: await statements(RECONCILE_SQL),
    reads: await statements(READ_SQL),
    replica: replicaDb && {
      reads: await statements(READ_SQL, replicaDb),
      reconcile: await statements(RECONCILE_SQL, replicaDb),
    },
    routes: await readRoutes(),
    cpu: await cpuNow(),
    pg: await postgresCpuNow(),
    top: await statementsNow(),
  });
  await sleep(args.warmup * 1000);
  const before = await counters();
  const measureStart = performance.now();
  measuring = true;
  await sleep(args.duration * 1000);
  measuring = false;
  const seconds = (performance.now() - measureStart) / 1000;
  const after = await counters();
  // Then nearby alone, at the same rate, to price one nearby request.
  nearbyOnly = true;
  const nearbyCount0 = h.nearby.count;
  const alone0 = await cpuNow();
  measuring = true;
  const aloneSeconds = args.smoke ? 2 : 20;
  await sleep(aloneSeconds * 1000);
  measuring = false;
  const alone = diff(alone0, await cpuNow());
  const aloneRequests = h.nearby.count - nearbyCount0;
  stop = true;
  await Promise.all([bridge, nearby, status, rpc, probe, sampler]);
  progress("presence", total, total, "done");

  const cpu = diff(before.cpu, after.cpu);
  const requests = h.webhook.count + h.nearby.count - aloneRequests + h.status.count;
  const perRequestMs = Object.fromEntries(
    Object.entries(cpu).map((
      [k, v],
    ) => [k, Math.round((v * 1000 / Math.max(1, requests)) * 1000) / 1000]),
  );
  const achievedNearby = (h.nearby.count - aloneRequests) / seconds;
  const minutes = seconds / 60;
  const f0 = performance.now();
  const [{ changed }] = await direct<
    { changed: number }[]
  >`select private.flush_presence() as changed`;
  const flushMs = Math.round((performance.now() - f0) * 100) / 100;
  const within = (xs: number[]) =>
    xs.length > 0 && xs.every((x) => Math.abs(x - TARGET_ONLINE) <= 0.05 * TARGET_ONLINE);
  const busiest = Object.entries(cpu).sort((a, b) => b[1] - a[1])[0];
  const saturated = achievedNearby < 0.95 * nearbyPerSec
    ? `nearby reads ran at ${achievedNearby.toFixed(0)}/s of ${nearbyPerSec.toFixed(0)}/s; the ` +
      `machine's two cores were ${
        Math.round(Object.values(cpu).reduce((a, b) => a + b, 0) / seconds * 50)
      } % busy, ` +
      `most of it ${busiest[0]} (${Math.round(busiest[1] / seconds * 100)} % of a core)`
    : null;

  return {
    target_online: TARGET_ONLINE,
    online_measured_min: Math.min(...online.pg, ...online.redis),
    online_measured_max: Math.max(...online.pg, ...online.redis),
    online_samples: online,
    online_held: within(online.pg) && within(online.redis),
    endpoints: {
      "presence-webhook": h.webhook.summary(),
      "nearby-online": h.nearby.summary(),
      "online-status": h.status.summary(),
      "get_online_users_batch (PgBouncer)": h.rpc.summary(),
    },
    propagation: {
      "arrival -> get_online_users_batch": h.arrival.batch.summary(),
      "arrival -> nearby-online": h.arrival.nearby.summary(),
      "leave -> get_online_users_batch": h.leave.batch.summary(),
      "leave -> nearby-online": h.leave.nearby.summary(),
      "move -> nearby-online": h.move.nearby.summary(),
      ...(replicaDb
        ? {
          "arrival -> get_online_users_batch on the replica": h.arrival.replica.summary(),
          "leave -> get_online_users_batch on the replica": h.leave.replica.summary(),
        }
        : {}),
    },
    replica: replicaDb
      ? {
        lag_ms_functions_view: {
          samples: lag.replica.length,
          p50: pct(lag.replica, 0.5),
          p99: pct(lag.replica, 0.99),
          max: lag.replica.length ? Math.max(...lag.replica) : null,
        },
        replay_lag_ms_primary_view: {
          samples: lag.primary.length,
          p50: pct(lag.primary, 0.5),
          p99: pct(lag.primary, 0.99),
          max: lag.primary.length ? Math.max(...lag.primary) : null,
        },
        statements_in_window: {
          reads: after.replica!.reads.calls - before.replica!.reads.calls,
          reconcile: after.replica!.reconcile.calls - before.replica!.reconcile.calls,
          reconcile_db_ms: Math.round(after.replica!.reconcile.ms - before.replica!.reconcile.ms),
        },
        functions_reads_by_route: Object.fromEntries(
          Object.keys(after.routes).map((k) => [k, after.routes[k] - (before.routes[k] ?? 0)]),
        ),
      }
      : null,
    rates_per_s: {
      nearby_target: Math.round(nearbyPerSec),
      nearby_achieved: Math.round(achievedNearby),
      nearby_scheduled_late: nearbyLate,
      presence_events_target: Math.round(2 * joinsPerSec + movesPerSec + refreshPerSec),
      presence_events_achieved: Math.round(sentEvents / seconds),
      online_status: statusPerSec,
      get_online_users_batch: rpcPerSec,
    },
    saturated,
    cache: {
      hits: hits.nearby,
      misses: hits.nearbyMiss,
      degraded: hits.degraded,
      hit_rate: hits.nearby + hits.nearbyMiss ? hits.nearby / (hits.nearby + hits.nearbyMiss) : 0,
      online_status_hit_rate: hits.status + hits.statusMiss
        ? hits.status / (hits.status + hits.statusMiss)
        : 0,
      read_statements_in_window: after.reads.calls - before.reads.calls,
    },
    cpu_seconds: cpu,
    postgres_cpu_seconds_by_process: postgresCpuDiff(before.pg, after.pg),
    top_statements: topStatements(before.top, after.top),
    cpu_ms_per_request: perRequestMs,
    functions_cpu_ms_per_nearby_request:
      Math.round((alone.functions * 1000 / Math.max(1, aloneRequests)) * 1000) / 1000,
    nearby_alone: { requests: aloneRequests, seconds: aloneSeconds, cpu_seconds: alone },
    peak_server_connections: peak,
    peak_active_server_connections: peakActive,
    presence_db_statements: after.presence.calls - before.presence.calls,
    presence_db_statements_per_min: Math.round(
      (after.presence.calls - before.presence.calls) / minutes,
    ),
    reconciliation: {
      statements: after.reconcile.calls - before.reconcile.calls,
      db_ms: Math.round(after.reconcile.ms - before.reconcile.ms),
    },
    flush: { rows_changed: changed, ms: flushMs },
  };
}

/** The seed's "BAD" design: every client polls the online list every 30 s. */
async function pollingPhase() {
  const requiredPerSec = args.users / 30;
  const h = new Latency();
  const conns = Math.min(100, Math.max(4, Math.ceil(requiredPerSec / 20)));
  const pool = postgres(POOLER_URL, { max: conns, prepare: false, onnotice: () => {} });
  let stop = false;
  let peak = 0;
  let peakActive = 0;
  let calls = 0;
  const total = args.pollingDuration * 1000;
  const t0 = performance.now();
  const sampler = (async () => {
    while (!stop) {
      const n = await serverConnections().catch(() => ({ total: 0, active: 0 }));
      peak = Math.max(peak, n.total);
      peakActive = Math.max(peakActive, n.active);
      progress("polling", Math.min(performance.now() - t0, total), total, `${calls} polls`);
      await sleep(250);
    }
  })();
  await paced(requiredPerSec, conns, () => stop || performance.now() - t0 > total, async () => {
    const s = performance.now();
    try {
      await pool`select id, display_name, is_online from public.get_online_users()`;
      h.recordMs(performance.now() - s);
      calls++;
    } catch {
      h.errors++;
    }
  });
  stop = true;
  await sampler;
  progress("polling", total, total, "done");
  await pool.end();
  const minutes = (performance.now() - t0) / 60_000;
  return {
    required_statements_per_min: Math.round(requiredPerSec * 60),
    achieved_statements_per_min: Math.round(calls / minutes),
    latency: h.summary(),
    peak_server_connections: peak,
    peak_active_server_connections: peakActive,
    client_connections: conns,
  };
}

const started = new Date();
let held = true;
try {
  await loadUsers();
  await replicaCaughtUp();
  const presence = await presencePhase();
  held = presence.online_held;
  const polling = await pollingPhase();
  const files = await writeReport(args, started, presence, polling);
  console.log(await Deno.readTextFile(files.md));
  console.log(`results: ${files.json}, ${files.md}, ${files.svg}`);
  if (!held) {
    console.error(
      `the run did not hold its online population: ${presence.online_measured_min}..${presence.online_measured_max} for ${TARGET_ONLINE}`,
    );
  }
} finally {
  if (!args.keep) {
    await direct`delete from auth.users where email like 'bench-%@sltr.bench'`.catch(() => {});
    await redis.del("{live}:built").catch(() => 0); // rebuilt without them on the next read
  }
  redis.disconnect();
  await Promise.all([direct.end(), pooled.end(), monitor.end(), replicaDb?.end()]);
}
if (!held) Deno.exit(1);
