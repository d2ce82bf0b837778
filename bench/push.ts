// `make bench-push`: what pushing status to the people who care costs, against the old global
// topic, at a realistic online population, in one run.
//
//   deno run -A bench/push.ts [--online 50000] [--clients 500] [--duration 120] [--warmup 30]
//
// Loads `online` online users (and a quarter as many offline ones to come online), each with 20
// favorites and a nearby screen of 50 users (watch lists), then drives session churn (~20 min
// sessions) through the signed presence webhook every 250 ms, as the bridge does. `clients` of
// the online users are real supabase-js clients on the local Realtime endpoint: they join their
// inbox (watchStatus) and the old global topic, and time what reaches them. The rest are a
// model: their inbox messages are written and replicated like anyone's (the database and
// Realtime work is real), nobody reads them. Two measured phases in one run: the inboxes alone
// (the design), then with the old global topic switched on (sltr.presence_global_broadcast)
// beside them. It reports push latency (202 -> callback, and request -> callback), messages
// and bytes delivered per second per 1,000 online users for both designs, the Realtime plan
// each needs at this population, and what one push message costs three ways: realtime.send per
// message, one insert for all (what push_status_changes does), Realtime's broadcast REST API
// (one write check per private topic).
import postgres from "postgres";
import { createSltrClient, type SltrClient, type StatusChange } from "../client/mod.ts";
import { signBody } from "../functions/_shared/auth.ts";
import { localUserJwt } from "../scripts/token.ts";
import { CITIES, cpuSeconds, flag, Latency, numberFlag, planHeadroom, sleep } from "./lib.ts";
import {
  ANON_KEY as ANON,
  API_URL,
  DB_URL,
  SERVICE_ROLE_KEY as SERVICE,
  STATE_DIR,
  WEBHOOK_SECRET as SECRET,
} from "../tests/_lib/env.ts";

const ONLINE = numberFlag("online", 50_000);
const OFFLINE = Math.round(ONLINE / 4);
const TOTAL = ONLINE + OFFLINE;
const CLIENTS = numberFlag("clients", 500);
const DURATION = numberFlag("duration", 120);
const WARMUP = numberFlag("warmup", 30);
const FAVORITES = 20;
const SCREEN = 50;
const OUT = flag("out", "bench/results");

const direct = postgres(DB_URL, {
  max: 2,
  onnotice: () => {},
  connection: { application_name: "sltr-bench-direct" },
});
const log = (msg: string) => console.error(`[push bench] ${msg}`);
const PREFIX = "b1000000-0000-4000-8000-";
const idOf = (n: number) => `${PREFIX}${n.toString(16).padStart(12, "0")}`;

async function load(): Promise<void> {
  const t0 = performance.now();
  await direct`delete from auth.users where email like 'push-%@sltr.bench'`;
  await direct.begin(async (tx) => {
    await tx`select setseed(0.17)`;
    await tx`insert into auth.users (id, aud, role, email)
             select (${PREFIX} || lpad(to_hex(n), 12, '0'))::uuid, 'authenticated', 'authenticated',
                    'push-' || n || '@sltr.bench'
             from generate_series(1, ${TOTAL}::int) as n`;
    // Users 1..ONLINE are online now (seen a moment ago), the rest offline since an hour.
    await tx`insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
             select (${PREFIX} || lpad(to_hex(n), 12, '0'))::uuid, 'Push ' || n, n <= ${ONLINE}::int,
                    c.lat + (random() - 0.5) * 0.1, c.lng + (random() - 0.5) * 0.15,
                    case when n <= ${ONLINE}::int then now() - interval '5 seconds'
                         else now() - interval '1 hour' end
             from generate_series(1, ${TOTAL}::int) as n
             join jsonb_to_recordset(${tx.json(CITIES.map((c, i) => ({ ...c, i })))}::jsonb)
               as c(i int, lat float8, lng float8) on c.i = n % ${CITIES.length}::int`;
    // 20 favorites each, spread over everyone (a hash of the user and the slot).
    await tx`insert into public.favorites (user_id, favorite_id)
             select distinct (${PREFIX} || lpad(to_hex(n), 12, '0'))::uuid,
                    (${PREFIX} || lpad(to_hex(1 + (abs(hashint8(n * 100 + k)) % ${TOTAL}::int)), 12, '0'))::uuid
             from generate_series(1, ${TOTAL}::int) as n, generate_series(1, ${FAVORITES}::int) as k
             where 1 + (abs(hashint8(n * 100 + k)) % ${TOTAL}::int) <> n
             on conflict do nothing`;
    // Every online user's nearby screen: 50 users of the same city (same n mod cities).
    await tx`insert into private.presence_watches (watcher_id, watched_id, expires_at)
             select (${PREFIX} || lpad(to_hex(n), 12, '0'))::uuid,
                    (${PREFIX} || lpad(to_hex(1 + ((n - 1 + j * ${CITIES.length}::int) % ${TOTAL}::int)), 12, '0'))::uuid,
                    now() + interval '2 hours'
             from generate_series(1, ${ONLINE}::int) as n, generate_series(1, ${SCREEN}::int) as j
             on conflict do nothing`;
  });
  await direct`analyze public.profiles`;
  await direct`analyze public.favorites`;
  await direct`analyze private.presence_watches`;
  log(
    `loaded ${TOTAL} users (${ONLINE} online) with watch lists in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s`,
  );
}

interface Client {
  n: number;
  app: SltrClient;
}

/** Sent events by `${user_id}|${is_online}|${epoch ms}`: when the request went, when 202 came. */
const sent = new Map<string, { requestAt: number; acceptedAt?: number }>();

/** What one measured phase saw. */
class Phase {
  readonly webhook = new Latency();
  readonly push = new Latency();
  readonly pushFromRequest = new Latency();
  readonly global = new Latency();
  events = 0;
  received = 0;
  globalReceived = 0;
  since = new Date();
  cpuSeconds = 0;
}
let phase: Phase | undefined;

function record(change: StatusChange, at: number, kind: "inbox" | "global") {
  const key = `${change.user_id}|${change.is_online}|${Date.parse(change.last_seen_at ?? "")}`;
  const s = sent.get(key);
  if (!s || !phase) return;
  if (kind === "inbox") {
    phase.pushFromRequest.recordMs(at - s.requestAt);
    // A push is committed with the batch, so it may arrive before the 202 does: 0 then.
    phase.push.recordMs(s.acceptedAt === undefined ? 0 : Math.max(0, at - s.acceptedAt));
  } else if (s.acceptedAt !== undefined) phase.global.recordMs(at - s.acceptedAt);
}

async function startClients(): Promise<Client[]> {
  const clients: Client[] = [];
  for (let i = 0; i < CLIENTS; i += 50) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(50, CLIENTS - i) }, async (_, k) => {
        const n = i + k + 1;
        const token = await localUserJwt(idOf(n));
        const app = createSltrClient(API_URL, ANON, {
          accessToken: () => Promise.resolve(token),
          auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
          realtimeService: { favorites: () => Promise.resolve([]) },
        });
        const c: Client = { n, app };
        let first = true;
        app.realtime.watchStatus((changes) => {
          if (first) return void (first = false); // the re-read on join
          const now = performance.now();
          if (phase) phase.received++;
          for (const change of changes) record(change, now, "inbox");
        });
        app.realtime.onStatusChanges((changes) => {
          const now = performance.now();
          if (phase) phase.globalReceived++;
          for (const change of changes) record(change, now, "global");
        });
        return c;
      }),
    );
    clients.push(...batch);
    await sleep(200);
  }
  return clients;
}

/** Session churn as the bridge would deliver it: ~20 min sessions, one batch per 250 ms. */
async function churn(until: () => boolean) {
  const online = Array.from({ length: ONLINE }, (_, i) => i + 1);
  const offline = Array.from({ length: OFFLINE }, (_, i) => ONLINE + i + 1);
  const perTick = ONLINE / 1200 / 4; // leaves per 250 ms, and as many arrivals
  let carry = 0;
  let next = performance.now();
  while (!until()) {
    carry += perTick;
    const k = Math.floor(carry);
    carry -= k;
    const batch: { user_id: string; status: string; at: string }[] = [];
    const at = new Date();
    for (let i = 0; i < k; i++) {
      // Real clients stay online: they are the ones listening.
      const li = CLIENTS + Math.floor(Math.random() * (online.length - CLIENTS));
      const leaving = online[li];
      const ai = Math.floor(Math.random() * offline.length);
      const arriving = offline[ai];
      online[li] = arriving;
      offline[ai] = leaving;
      batch.push({ user_id: idOf(leaving), status: "offline", at: at.toISOString() });
      batch.push({ user_id: idOf(arriving), status: "online", at: at.toISOString() });
    }
    if (batch.length) {
      const body = JSON.stringify({ events: batch });
      const requestAt = performance.now();
      const keys = batch.map((e) => `${e.user_id}|${e.status === "online"}|${at.getTime()}`);
      for (const key of keys) sent.set(key, { requestAt });
      const res = await fetch(`${API_URL}/functions/v1/presence-webhook`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-sltr-signature": await signBody(SECRET, body),
        },
        body,
      });
      await res.arrayBuffer();
      const acceptedAt = performance.now();
      for (const key of keys) sent.get(key)!.acceptedAt = acceptedAt;
      if (phase) {
        phase.webhook.recordMs(acceptedAt - requestAt, res.status);
        phase.events += batch.length;
      }
    }
    next += 250;
    const wait = next - performance.now();
    if (wait > 0) await sleep(wait);
    else next = performance.now();
  }
}

/** What one push message costs: realtime.send in a transaction vs the REST batch endpoint. */
async function deliveryCost(n: number) {
  const topics = Array.from({ length: n }, (_, i) => `presence:user:${idOf(ONLINE - i)}`);
  const payload = {
    changes: [{ user_id: idOf(1), is_online: true, last_seen_at: new Date().toISOString() }],
  };
  const statements = async () =>
    Number(
      (await direct`select coalesce(sum(calls), 0)::bigint as n from extensions.pg_stat_statements`)[
        0
      ].n,
    );
  const s0 = await statements();
  const t0 = performance.now();
  await direct.begin(async (tx) => {
    for (const topic of topics) {
      await tx`select realtime.send(${tx.json(payload)}, 'status_changes', ${topic}, true)`;
    }
  });
  const dbMs = performance.now() - t0;
  const s1 = await statements();
  const tSet = performance.now();
  await direct`insert into realtime.messages (id, topic, extension, event, payload, private)
               select id, topic, 'broadcast', 'status_changes', ${
    direct.json(payload)
  }::jsonb || jsonb_build_object('id', id), true
               from (select gen_random_uuid() as id, unnest(${topics}::text[]) as topic) as t`;
  const setMs = performance.now() - tSet;
  const sSet = await statements();
  const t1 = performance.now();
  const res = await fetch(`${API_URL}/realtime/v1/api/broadcast`, {
    method: "POST",
    headers: { authorization: `Bearer ${SERVICE}`, "content-type": "application/json" },
    body: JSON.stringify({
      messages: topics.map((topic) => ({ topic, event: "status_changes", payload, private: true })),
    }),
  });
  await res.arrayBuffer();
  const restMs = performance.now() - t1;
  const s2 = await statements();
  return {
    messages: n,
    realtime_send_per_message: {
      ms_per_message: round(dbMs / n, 3),
      statements_per_message: round((s1 - s0 - 1) / n, 2),
    },
    one_insert_for_all_in_transaction: {
      ms_per_message: round(setMs / n, 3),
      statements_per_message: round((sSet - s1 - 1) / n, 2),
    },
    rest_broadcast_private: {
      status: res.status,
      ms_per_message: round(restMs / n, 3),
      statements_per_message: round((s2 - sSet - 1) / n, 2),
    },
  };
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

async function windowCounts(since: Date, until: Date) {
  const [inbox] = await direct`
    select count(*)::int as messages, coalesce(sum(octet_length(payload::text)), 0)::bigint as bytes
    from realtime.messages
    where topic like ${"presence:user:" + PREFIX + "%"}
      and inserted_at >= ${since}::timestamp and inserted_at < ${until}::timestamp`;
  const [global] = await direct`
    select count(*)::int as messages, coalesce(sum(octet_length(payload::text)), 0)::bigint as bytes
    from realtime.messages where topic = 'presence:changes'
      and inserted_at >= ${since}::timestamp and inserted_at < ${until}::timestamp`;
  const flushes = await direct`
    select extract(epoch from end_time - start_time) * 1000 as ms from cron.job_run_details as d
    join cron.job as j using (jobid)
    where j.jobname = 'presence-flush' and d.start_time >= ${since} and d.start_time < ${until}
      and d.status = 'succeeded'`;
  return {
    inbox: { messages: inbox.messages, bytes: Number(inbox.bytes) },
    global: { messages: global.messages, bytes: Number(global.bytes) },
    flush_ms: flushes.map((f) => round(Number(f.ms))),
  };
}

// ---- the run ----
await load();
const clientsStarted = performance.now();
const clients = await startClients();
log(
  `${clients.length} real clients joined in ${
    ((performance.now() - clientsStarted) / 1000).toFixed(1)
  } s`,
);
const serverPid = Number(
  (await Deno.readTextFile(`${STATE_DIR}/run/functions.pid`)).trim(),
);

/** Runs one measured phase of DURATION seconds. */
async function measure(
  name: string,
): Promise<{ stats: Phase; counts: Awaited<ReturnType<typeof windowCounts>> }> {
  const stats = new Phase();
  const cpu0 = await cpuSeconds(serverPid);
  phase = stats;
  log(`${name}: measuring ${DURATION} s`);
  await sleep(DURATION * 1000);
  phase = undefined;
  stats.cpuSeconds = await cpuSeconds(serverPid) - cpu0;
  await sleep(2000); // what was sent in the window arrives
  return {
    stats,
    counts: await windowCounts(stats.since, new Date(stats.since.getTime() + DURATION * 1000)),
  };
}

let stop = false;
const churning = churn(() => stop);
log(`warm-up ${WARMUP} s`);
await sleep(WARMUP * 1000);
const inboxOnly = await measure("inboxes only (the design)");
await direct`alter database postgres set sltr.presence_global_broadcast = 'on'`;
const both = await measure("inboxes and the old global topic");
stop = true;
await churning;
await direct`alter database postgres reset sltr.presence_global_broadcast`;
const cost = await deliveryCost(200);

const perSecondPer1000 = (x: number) => round((x / DURATION) / (ONLINE / 1000), 2);
const inboxSummary = (p: { stats: Phase; counts: Awaited<ReturnType<typeof windowCounts>> }) => ({
  status_changes_per_second: round(p.stats.events / DURATION),
  webhook: p.stats.webhook.summary(),
  functions_and_realtime_cpu_ms_per_status_change: round(
    (p.stats.cpuSeconds * 1000) / Math.max(1, p.stats.events),
    3,
  ),
  push_latency_202_to_callback: p.stats.push.summary(),
  push_latency_request_to_callback: p.stats.pushFromRequest.summary(),
  messages_per_second: round(p.counts.inbox.messages / DURATION),
  messages_per_second_per_1000_online: perSecondPer1000(p.counts.inbox.messages),
  bytes_per_second_per_1000_online: perSecondPer1000(p.counts.inbox.bytes),
  real_clients_received: p.stats.received,
  flush_ms: p.counts.flush_ms,
  // Hosted counts each inbox row once at the source and once for its one delivery (the owner's
  // inbox channel, joined while they are online).
  realtime_plans_at_this_population: planHeadroom({
    connections: ONLINE,
    messagesPerSecond: (p.counts.inbox.messages * 2) / DURATION,
  }),
});
// Global: every message reaches every online signed-in client.
const globalDelivered = both.counts.global.messages * ONLINE;
const report = {
  when: new Date().toISOString(),
  machine:
    `${navigator.hardwareConcurrency} cores; Postgres, Redis, functions + Realtime, the load generator and ${CLIENTS} supabase-js clients on one machine`,
  online_users: ONLINE,
  watch_sets: { favorites_per_user: FAVORITES, screen_per_online_user: SCREEN },
  real_clients: clients.length,
  duration_s_per_phase: DURATION,
  inbox: inboxSummary(inboxOnly),
  inbox_while_the_global_topic_is_on: inboxSummary(both),
  global_topic: {
    latency_202_to_callback: both.stats.global.summary(),
    broadcasts_in_window: both.counts.global.messages,
    messages_per_second_per_1000_online: perSecondPer1000(globalDelivered),
    bytes_per_second_per_1000_online: perSecondPer1000(both.counts.global.bytes * ONLINE),
    real_clients_received: both.stats.globalReceived,
    flush_ms_with_global_broadcast: both.counts.flush_ms,
    // Once at the source and once for each online member.
    realtime_plans_at_this_population: planHeadroom({
      connections: ONLINE,
      messagesPerSecond: (both.counts.global.messages + globalDelivered) / DURATION,
    }),
  },
  delivery_cost: cost,
};
await Deno.mkdir(OUT, { recursive: true });
const file = `${OUT}/push-${report.when.slice(0, 10)}-${ONLINE}.json`;
await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
console.log(JSON.stringify(report, null, 2));
log(`written to ${file}`);
for (const c of clients) await c.app.realtime.close().catch(() => {});
await direct`delete from auth.users where email like 'push-%@sltr.bench'`;
await direct.end();
Deno.exit(0);
