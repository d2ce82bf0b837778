// `make bench-presence`: presence at scale, on one private topic (online-users) or sharded over
// --topics T (online-users:<k>, each user on their shard), with real supabase-js sockets: N
// clients (default 10,000), one socket
// each, join the topic as signed-in users and track {user_id, proof}, through a private endpoint
// (limits raised so that the machine, not a plan, is the limit; counting as hosted counts) and
// its own presence bridge, into the stack's database. It reports:
//   - the ramp: clients joined and tracking per second, and the bridge's view of them;
//   - presence messages per second on the topic, as the endpoint's limit judges them (hosted's
//     5 s ticks over a minute), during the ramp and during churn (tracks and untracks at the
//     rate N online users make them: sessions of ~20 minutes, a move every ~5 minutes), against
//     every plan's presence limit (planHeadroom);
//   - what a bridge's (re)join costs: the presence_state a service_role join receives (bytes,
//     time to arrive) and a fresh bridge's time until it holds everyone;
//   - track -> online in Postgres, p50/p99, for samples taken while the N are held;
//   - CPU of the endpoint and of this load generator.
// The run checks its own workload: it fails (exit 1) when fewer than 95 % of the clients hold
// their presence, in the endpoint or in the bridge.
// With --topics, the figures per topic: members, presence messages sent, and the sync of one.
//   deno run -A bench/presence_scale.ts --clients 10000 --churn-seconds 60 --samples 100
import { createClient, type RealtimeChannel, type SupabaseClient } from "@supabase/supabase-js";
import { cpuSeconds, flag, Latency, numberFlag, planHeadroom, progress, sleep } from "./lib.ts";
import { idOf, seedUsers } from "./population.ts";
import { startBridge, startFunctionsServer } from "../tests/_lib/servers.ts";
import { userJwt } from "../tests/_lib/jwt.ts";
import { database, onlineMap, ticketFor } from "../tests/realtime/_helpers.ts";
import { ANON_KEY, DB_URL, SERVICE_ROLE_KEY } from "../tests/_lib/env.ts";
import { presenceTopic, presenceTopics } from "../functions/_shared/presence_ticket.ts";

const CLIENTS = numberFlag("clients", 10_000);
const CHURN_SECONDS = numberFlag("churn-seconds", 60);
const SAMPLES = numberFlag("samples", 100);
const OUT = flag("out", "bench/results");
const TOPICS = numberFlag("topics", 1);
const topicOf = (n: number) => presenceTopic(idOf(n), TOPICS);
const log = (msg: string) => console.error(`[presence bench] ${msg}`);
const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

const sql = database();
const users = CLIENTS + SAMPLES;
log(`seeding ${users} users`);
await seedUsers(sql, users, 0);

const server = await startFunctionsServer({
  REALTIME_MAX_CONCURRENT_USERS: "1000000",
  REALTIME_MAX_JOINS_PER_SECOND: "1000000",
  REALTIME_MAX_EVENTS_PER_SECOND: "100000000",
  REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND: "100000000",
  REALTIME_REPLICATION_DB_URL: DB_URL,
  SLTR_PRESENCE_TOPICS: String(TOPICS),
});
const base = server.url.replace(/\/functions\/v1$/, "");
const shards = { SLTR_PRESENCE_TOPICS: String(TOPICS) };
const bridge = await startBridge(base, { ...shards, BRIDGE_STATS_INTERVAL_MS: "0" });
const serverPid = server.child.pid;

async function scrape(): Promise<Record<string, number>> {
  const text = await (await fetch(`${server.url}/metrics`, {
    headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
  })).text();
  return Object.fromEntries(
    [...text.matchAll(/^(sltr_realtime_[a-z_]+) ([\d.e+-]+)$/gm)].map((m) => [m[1], Number(m[2])]),
  );
}
const bridgeOnline = async () =>
  ((await (await fetch(bridge.health)).json()) as { online: number }).online;

interface App {
  n: number;
  client: SupabaseClient;
  channel?: RealtimeChannel;
}

/** One user's app: its own socket, the topic joined with the user's token, presence tracked. */
async function open(n: number): Promise<App> {
  const token = await userJwt(idOf(n));
  const client = createClient(base, ANON_KEY, {
    accessToken: () => Promise.resolve(token),
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });
  // The join then carries the user's token (realtime-js fetches it from the callback later).
  await client.realtime.setAuth();
  const app: App = { n, client };
  await track(app);
  return app;
}

async function track(app: App): Promise<void> {
  const id = idOf(app.n);
  const topic = topicOf(app.n);
  const channel = app.client.channel(topic, {
    config: { private: true, presence: { key: id } },
  });
  const [status, error] = await new Promise<[string, Error | undefined]>((resolve) =>
    channel.subscribe((s, e) => resolve([s, e]))
  );
  if (status !== "SUBSCRIBED") throw new Error(`user ${app.n}: ${status} ${error?.message}`);
  const tracked = await channel.track({ user_id: id, proof: ticketFor(id, { topic }) });
  if (tracked !== "ok") throw new Error(`user ${app.n}: track ${tracked}`);
  app.channel = channel;
}

async function untrack(app: App): Promise<void> {
  if (app.channel) await app.client.removeChannel(app.channel);
  app.channel = undefined;
}

// ---- the ramp ----------------------------------------------------------------------------
const loadCpu0 = await cpuSeconds("self");
const serverCpu0 = await cpuSeconds(serverPid);
const rampStarted = performance.now();
const apps: App[] = [];
for (let i = 1; i <= CLIENTS; i += 200) {
  const batch = Array.from({ length: Math.min(200, CLIENTS - i + 1) }, (_, j) => open(i + j));
  apps.push(...await Promise.all(batch));
  progress("ramp", apps.length, CLIENTS);
}
const rampSeconds = (performance.now() - rampStarted) / 1000;
const atRamp = await scrape();
let held = 0;
for (let t = 0; t < 60 && (held = await bridgeOnline()) < CLIENTS * 0.99; t++) await sleep(500);
log(`${apps.length} tracking after ${rampSeconds.toFixed(1)} s; the bridge holds ${held}`);

// ---- what a bridge's (re)join costs --------------------------------------------------------
/** A service_role join's presence_state: bytes and time to arrive (raw V1 JSON frames). */
async function syncCost(): Promise<{ bytes: number; ms: number; members: number }> {
  const ws = new WebSocket(
    `${base.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${SERVICE_ROLE_KEY}&vsn=1.0.0`,
  );
  await new Promise((r) => ws.onopen = r);
  const t0 = performance.now();
  const state = new Promise<{ bytes: number; ms: number; members: number }>((resolve) => {
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.event === "presence_state") {
        resolve({
          bytes: new TextEncoder().encode(e.data).length,
          ms: performance.now() - t0,
          members: Object.keys(msg.payload).length,
        });
      }
    };
  });
  ws.send(JSON.stringify({
    topic: `realtime:${presenceTopics(TOPICS)[0]}`,
    event: "phx_join",
    ref: "1",
    join_ref: "1",
    payload: {
      access_token: SERVICE_ROLE_KEY,
      config: { private: true, presence: { enabled: true }, broadcast: { self: false } },
    },
  }));
  const result = await state;
  ws.close();
  return result;
}
const sync = await syncCost();
const freshStarted = performance.now();
const fresh = await startBridge(base, { ...shards, BRIDGE_STATS_INTERVAL_MS: "0" });
let freshHeld = 0;
for (let t = 0; t < 240; t++) {
  freshHeld = ((await (await fetch(fresh.health)).json()) as { online: number }).online;
  if (freshHeld >= CLIENTS * 0.99) break;
  await sleep(250);
}
const freshMs = performance.now() - freshStarted;
await fresh.stop();

// ---- churn: N online users' sessions and moves ----------------------------------------------
// Sessions of ~20 minutes: N/1200 leave and as many arrive each second; a move every ~5 minutes
// is a re-track: N/300 a second. Each is one presence message where it enters.
const leavesPerSecond = CLIENTS / 1200;
const movesPerSecond = CLIENTS / 300;
const churnBefore = await scrape();
const churnCpu0 = await cpuSeconds(serverPid);
let churned = 0;
const churnedPerTopic = new Map<string, number>();
const count = (a: App, n: number) =>
  churnedPerTopic.set(topicOf(a.n), (churnedPerTopic.get(topicOf(a.n)) ?? 0) + n);
const churnStarted = performance.now();
for (let s = 0; s < CHURN_SECONDS; s++) {
  const tick = performance.now();
  const leaving = Array.from(
    { length: Math.round(leavesPerSecond) },
    () => apps[Math.floor(Math.random() * apps.length)],
  );
  await Promise.all(leaving.map(async (a) => {
    await untrack(a);
    await track(a);
  }));
  const moving = Array.from(
    { length: Math.round(movesPerSecond) },
    () => apps[Math.floor(Math.random() * apps.length)],
  );
  await Promise.all(
    moving.map((a) =>
      a.channel?.track({
        user_id: idOf(a.n),
        proof: ticketFor(idOf(a.n), { topic: topicOf(a.n) }),
        moved: s,
      })
    ),
  );
  churned += leaving.length * 2 + moving.length;
  for (const a of leaving) count(a, 2);
  for (const a of moving) count(a, 1);
  await sleep(Math.max(0, 1000 - (performance.now() - tick)));
}
const churnSeconds = (performance.now() - churnStarted) / 1000;
const churnCpu = await cpuSeconds(serverPid) - churnCpu0;
const churnAfter = await scrape();

// ---- track -> online, with the N held --------------------------------------------------------
const trackToOnline = new Latency();
for (let k = 0; k < SAMPLES; k++) {
  const n = CLIENTS + 1 + k;
  await sleep(Math.random() * 300); // a random phase against the bridge's 250 ms flush
  const t0 = performance.now();
  const app = await open(n);
  for (let i = 0; i < 100 && !(await onlineMap(sql, [idOf(n)]))[idOf(n)]; i++) await sleep(10);
  trackToOnline.recordMs(performance.now() - t0);
  await untrack(app);
  app.client.realtime.disconnect();
}

const stillHeld = await bridgeOnline();
const presences = (await scrape()).sltr_realtime_presences ?? 0;
const report = {
  when: new Date().toISOString(),
  machine:
    `${navigator.hardwareConcurrency} cores; the endpoint, Postgres, Redis, the bridges and ${CLIENTS} supabase-js clients on one machine`,
  topology: TOPICS === 1
    ? "one private topic, online-users; one bridge"
    : `${TOPICS} private topics online-users:<k> (by user id); one bridge holding all`,
  per_topic: Object.fromEntries(
    presenceTopics(TOPICS).map((topic) => [topic, {
      members: apps.filter((a) => topicOf(a.n) === topic).length,
      presence_messages_per_second_sent: round(
        (churnedPerTopic.get(topic) ?? 0) / churnSeconds,
      ),
    }]),
  ),
  clients: CLIENTS,
  ramp: {
    seconds: round(rampSeconds),
    clients_per_second: round(CLIENTS / rampSeconds),
    presence_messages_per_second_judged: round(atRamp.sltr_realtime_presence_events_per_second),
  },
  held: { endpoint_presences: presences, bridge_online: stillHeld },
  bridge_sync: {
    presence_state_bytes: sync.bytes,
    presence_state_topic: presenceTopics(TOPICS)[0],
    presence_state_members: sync.members,
    presence_state_ms: round(sync.ms),
    fresh_bridge_holds_everyone_ms: round(freshMs),
    fresh_bridge_held: freshHeld,
  },
  churn: {
    seconds: round(churnSeconds),
    presence_messages_per_second_sent: round(churned / churnSeconds),
    presence_messages_per_second_judged: round(
      churnAfter.sltr_realtime_presence_events_per_second,
    ),
    endpoint_cpu_ms_per_presence_message: round((churnCpu * 1000) / Math.max(1, churned), 3),
    plans: planHeadroom({
      connections: CLIENTS,
      presenceMessagesPerSecond: churned / churnSeconds,
    }),
    frames_sent_per_second: round(
      ((churnAfter.sltr_realtime_frames_sent_total ?? 0) -
        (churnBefore.sltr_realtime_frames_sent_total ?? 0)) / churnSeconds,
    ),
  },
  track_to_online_ms: trackToOnline.summary(),
  cpu_seconds: {
    endpoint: round(await cpuSeconds(serverPid) - serverCpu0),
    load_generator: round(await cpuSeconds("self") - loadCpu0),
  },
};
console.log(JSON.stringify(report, null, 2));
const ok = presences >= CLIENTS * 0.95 && stillHeld >= CLIENTS * 0.95;
if (ok) {
  await Deno.mkdir(OUT, { recursive: true });
  const shape = TOPICS === 1 ? "" : `-${TOPICS}topics`;
  const file = `${OUT}/presence-${report.when.slice(0, 10)}-${CLIENTS}${shape}.json`;
  await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
  log(`written to ${file}`);
} else {
  log(`the workload did not hold: ${presences} presences, the bridge ${stillHeld}, of ${CLIENTS}`);
}
for (const a of apps) a.client.realtime.disconnect();
await bridge.stop();
server.child.kill();
await server.child.status;
await sql`delete from auth.users where email like 'bench-%@sltr.bench'`;
await sql.end();
Deno.exit(ok ? 0 : 1);
