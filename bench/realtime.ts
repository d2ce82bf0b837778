// The local Realtime endpoint's figures on this machine (loopback, 2 shared cores): how many
// connections it holds and what holding them costs, channel joins per second (public, and
// private with the RLS check in Postgres), database-broadcast latency (one member, and fanned
// out to many), time from `track` to visible in nearby-online and from leaving to gone, and from
// a lost socket to offline. CPU time per operation from /proc beside each figure.
//
//   deno run -A bench/realtime.ts [--connections 10000] [--samples 50] [--out bench/results]
//
// It starts private servers (functions + Realtime, own ports, the stack's database and Redis,
// limits raised so the machine, not a plan, is the limit) and a private presence bridge; the
// stack must be running (make start).
import postgres from "postgres";
import { createSltrClient } from "../client/mod.ts";
import { userJwt } from "../tests/_lib/jwt.ts";
import { startBridge, startFunctionsServer } from "../tests/_lib/servers.ts";
import { eventually } from "../tests/_lib/harness.ts";
import {
  createUsers,
  database,
  deleteUsers,
  onlineMap,
  ticketFor,
} from "../tests/realtime/_helpers.ts";
import { FreezableProxy } from "../tests/_lib/proxy.ts";
import { cpuSeconds, flag, Latency, numberFlag, planHeadroom, rssMiB, sleep } from "./lib.ts";
import { ANON_KEY as ANON, DB_URL, SERVICE_ROLE_KEY as SERVICE } from "../tests/_lib/env.ts";

const CONNECTIONS = numberFlag("connections", 10_000);
const SAMPLES = numberFlag("samples", 50);
const OUT = flag("out", "bench/results");
const HERE = { lat: 48.8566, lng: 2.3522 };

const log = (msg: string) => console.error(`[realtime bench] ${msg}`);

async function server(env: Record<string, string>) {
  const s = await startFunctionsServer({
    REALTIME_MAX_CONCURRENT_USERS: "100000",
    REALTIME_MAX_JOINS_PER_SECOND: "1000000",
    REALTIME_MAX_EVENTS_PER_SECOND: "10000000",
    REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND: "1000000",
    REALTIME_MAX_CHANNELS_PER_CLIENT: "1000",
    REALTIME_REPLICATION_DB_URL: DB_URL,
    ...env,
  });
  return { ...s, base: s.url.replace(/\/functions\/v1$/, ""), pid: s.child.pid };
}

/** A bare V2 socket: the protocol without supabase-js's per-client timers, so the load
 * generator can hold thousands. */
class Bare {
  ws: WebSocket;
  opened: Promise<void>;
  replies = new Map<string, (status: string) => void>();
  onBroadcast?: (bytes: Uint8Array) => void;
  closed = false;
  private ref = 0;

  constructor(base: string, key: string) {
    this.ws = new WebSocket(
      `${base.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${key}&vsn=2.0.0`,
    );
    this.ws.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("socket error"));
    });
    this.ws.onclose = () => this.closed = true;
    this.ws.onmessage = (e) => {
      if (typeof e.data !== "string") {
        this.onBroadcast?.(new Uint8Array(e.data));
        return;
      }
      const [, ref, , event, payload] = JSON.parse(e.data);
      if (event === "phx_reply") this.replies.get(ref)?.(payload.status);
    };
  }

  push(topic: string, event: string, payload: unknown, joinRef?: string): Promise<string> {
    const ref = String(++this.ref);
    const done = new Promise<string>((r) => this.replies.set(ref, r));
    this.ws.send(JSON.stringify([joinRef ?? ref, ref, topic, event, payload]));
    return done.finally(() => this.replies.delete(ref));
  }

  join(topic: string, isPrivate = false): Promise<string> {
    return this.push(`realtime:${topic}`, "phx_join", {
      config: {
        private: isPrivate,
        broadcast: { self: false, ack: false },
        presence: { enabled: false },
      },
    });
  }

  heartbeat(): Promise<string> {
    return this.push("phoenix", "heartbeat", {}, undefined);
  }
}

async function connections(base: string, pid: number) {
  log(`opening ${CONNECTIONS} sockets, one public join each`);
  const sockets: Bare[] = [];
  const cpu0 = await cpuSeconds(pid);
  const started = performance.now();
  for (let i = 0; i < CONNECTIONS; i += 250) {
    const batch = Array.from(
      { length: Math.min(250, CONNECTIONS - i) },
      () => new Bare(base, ANON),
    );
    await Promise.all(batch.map((s) => s.opened));
    const statuses = await Promise.all(batch.map((s, j) => s.join(`hold-${(i + j) % 100}`)));
    if (statuses.some((s) => s !== "ok")) {
      throw new Error(`join refused: ${statuses.find((s) => s !== "ok")}`);
    }
    sockets.push(...batch);
  }
  const openSeconds = (performance.now() - started) / 1000;
  const openCpu = await cpuSeconds(pid) - cpu0;
  log(`${sockets.length} open and joined in ${openSeconds.toFixed(1)} s; holding 30 s`);
  const holdCpu0 = await cpuSeconds(pid);
  // realtime-js heartbeats every 25 s: each socket once in the 30 s, spread.
  const hbStarted = performance.now();
  let beats = 0;
  for (const [i, s] of sockets.entries()) {
    const due = hbStarted + (i / sockets.length) * 25_000;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    void s.heartbeat().then(() => beats++);
  }
  await sleep(Math.max(0, 30_000 - (performance.now() - hbStarted)));
  const holdCpu = await cpuSeconds(pid) - holdCpu0;
  const result = {
    connections: sockets.length,
    still_open: sockets.filter((s) => !s.closed).length,
    heartbeats_answered: beats,
    open_and_join_seconds: round(openSeconds),
    sockets_per_second: round(sockets.length / openSeconds),
    server_cpu_ms_per_connect_and_join: round((openCpu * 1000) / sockets.length, 3),
    server_cpu_percent_holding: round((holdCpu / 30) * 100),
    server_rss_mib: round(await rssMiB(pid)),
  };
  return { result, sockets };
}

async function joins(base: string, pid: number, isPrivate: boolean) {
  const sockets = await Promise.all(Array.from({ length: 50 }, async () => {
    const s = new Bare(base, SERVICE);
    await s.opened;
    return s;
  }));
  const perSocket = isPrivate ? 40 : 200;
  const cpu0 = await cpuSeconds(pid);
  const started = performance.now();
  const statuses = await Promise.all(sockets.map(async (s, i) => {
    const out: string[] = [];
    // 10 joins in flight per socket (the server handles a socket's frames in order).
    for (let j = 0; j < perSocket; j += 10) {
      out.push(
        ...await Promise.all(
          Array.from({ length: 10 }, (_, k) => s.join(`j-${i}-${j + k}`, isPrivate)),
        ),
      );
    }
    return out;
  }));
  const seconds = (performance.now() - started) / 1000;
  const cpu = await cpuSeconds(pid) - cpu0;
  const n = statuses.flat().length;
  for (const s of sockets) s.ws.close();
  return {
    kind: isPrivate ? "private (RLS read check in Postgres)" : "public",
    joins: n,
    refused: statuses.flat().filter((s) => s !== "ok").length,
    joins_per_second: round(n / seconds),
    server_cpu_ms_per_join: round((cpu * 1000) / n, 3),
  };
}

async function databaseBroadcasts(base: string, pid: number, sockets: Bare[]) {
  const sql = postgres(DB_URL, { max: 1, onnotice: () => {} });
  const topic = `bench-db-${crypto.randomUUID()}`;
  try {
    // One private member.
    const one = new Bare(base, SERVICE);
    await one.opened;
    await one.join(topic, true);
    const single = new Latency();
    let arrived: (() => void) | undefined;
    one.onBroadcast = () => arrived?.();
    for (let i = 0; i < 500; i++) {
      const got = new Promise<void>((r) => arrived = r);
      const t0 = performance.now();
      await sql`select realtime.send(${sql.json({ i })}, 'tick', ${topic}, true)`;
      await got;
      single.recordMs(performance.now() - t0);
      await sleep(5);
    }
    one.ws.close();
    // Fanned out to every held socket of one room (a public topic, 1% of the sockets).
    const room = "hold-7";
    const members = sockets.filter((_, i) => i % 100 === 7);
    let pending = 0;
    let lastAt = 0;
    for (const s of members) {
      s.onBroadcast = () => {
        lastAt = performance.now();
        pending--;
      };
    }
    const fan = new Latency();
    const cpu0 = await cpuSeconds(pid);
    for (let i = 0; i < 100; i++) {
      pending = members.length;
      const t0 = performance.now();
      await sql`select realtime.send(${sql.json({ i })}, 'tick', ${room}, false)`;
      await eventually(() => pending === 0, "every member got it", 10_000);
      fan.recordMs(lastAt - t0);
    }
    const cpu = await cpuSeconds(pid) - cpu0;
    return {
      one_member: single.summary(),
      fanout_members: members.length,
      fanout_last_delivery: fan.summary(),
      server_cpu_us_per_delivery: round((cpu * 1e6) / (100 * members.length), 1),
    };
  } finally {
    await sql`delete from realtime.messages where topic = ${topic} or topic = 'hold-7'`;
    await sql.end();
  }
}

async function presencePath(base: string, functionsUrl: string) {
  const sql = database();
  const ids = await createUsers(sql, "bench-rt", SAMPLES + 1, HERE);
  const viewer = ids.pop()!;
  const viewerJwt = await userJwt(viewer);
  const seen = async (id: string) => {
    const res = await fetch(
      `${functionsUrl}/nearby-online?lat=${HERE.lat}&lng=${HERE.lng}&radius_m=3000&limit=500`,
      { headers: { authorization: `Bearer ${viewerJwt}` } },
    );
    const body = await res.json() as { users: { user_id: string }[] };
    return body.users.some((u) => u.user_id === id);
  };
  const visible = new Latency();
  const gone = new Latency();
  try {
    for (const [i, id] of ids.entries()) {
      const token = await userJwt(id);
      const app = createSltrClient(base, ANON, {
        accessToken: () => Promise.resolve(token),
        auth: { persistSession: false, autoRefreshToken: false },
        realtimeService: {
          ticket: () => Promise.resolve({ ticket: ticketFor(id), expires_in: 900, expires_at: "" }),
        },
      });
      await app.supabase.realtime.setAuth();
      // A random phase against the bridge's 250 ms flush: measured right after one, every
      // sample would wait for a whole interval.
      await sleep(Math.random() * 300);
      const t0 = performance.now();
      await app.realtime.trackPresence(id, HERE);
      await eventually(
        async () => (await onlineMap(sql, [id]))[id] && await seen(id),
        "visible",
        5000,
      );
      visible.recordMs(performance.now() - t0);
      // From the moment the app closes its socket (realtime-js's own close handshake takes
      // ~300 ms of polling; the server sees the leave at once).
      await sleep(Math.random() * 300);
      const t1 = performance.now();
      const closing = app.realtime.close();
      await eventually(
        async () => !(await onlineMap(sql, [id]))[id] && !(await seen(id)),
        "gone",
        5000,
      );
      gone.recordMs(performance.now() - t1);
      await closing;
      if (i % 10 === 9) log(`presence path: ${i + 1}/${ids.length}`);
    }
    return {
      samples: ids.length,
      track_to_visible: visible.summary(),
      leave_to_gone: gone.summary(),
    };
  } finally {
    await deleteUsers(sql, [...ids, viewer]);
    await sql.end();
  }
}

async function socketLoss() {
  const idleMs = 3000;
  const s = await server({ REALTIME_IDLE_TIMEOUT_MS: String(idleMs) });
  const bridge = await startBridge(s.base, { BRIDGE_HEARTBEAT_INTERVAL_MS: "1000" });
  const sql = database();
  const ids = await createUsers(sql, "bench-lost", 10, HERE);
  const lost = new Latency();
  try {
    for (const id of ids) {
      const proxy = new FreezableProxy(Number(new URL(s.base).port));
      const token = await userJwt(id);
      const app = createSltrClient(`http://127.0.0.1:${proxy.port}`, ANON, {
        accessToken: () => Promise.resolve(token),
        auth: { persistSession: false, autoRefreshToken: false },
        realtime: { heartbeatIntervalMs: 1000 },
        realtimeService: {
          ticket: () => Promise.resolve({ ticket: ticketFor(id), expires_in: 900, expires_at: "" }),
        },
      });
      await app.realtime.trackPresence(id, HERE);
      await eventually(async () => (await onlineMap(sql, [id]))[id], "online", 5000);
      proxy.freeze();
      const t0 = performance.now();
      await eventually(async () => !(await onlineMap(sql, [id]))[id], "offline", idleMs + 5000);
      lost.recordMs(performance.now() - t0);
      proxy.close();
      await app.realtime.close().catch(() => {});
    }
    return {
      idle_timeout_ms: idleMs,
      client_heartbeat_ms: 1000,
      socket_lost_to_offline: lost.summary(),
    };
  } finally {
    await deleteUsers(sql, ids);
    await sql.end();
    await bridge.stop();
    s.child.kill();
    await s.child.status;
  }
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

const main = await server({});
const bridge = await startBridge(main.base);
try {
  const joinsPublic = await joins(main.base, main.pid, false);
  log(`public joins: ${joinsPublic.joins_per_second}/s`);
  const joinsPrivate = await joins(main.base, main.pid, true);
  log(`private joins: ${joinsPrivate.joins_per_second}/s`);
  const held = await connections(main.base, main.pid);
  log(`connections: ${JSON.stringify(held.result)}`);
  const db = await databaseBroadcasts(main.base, main.pid, held.sockets);
  log(`database broadcasts: ${JSON.stringify(db.one_member)}`);
  for (const s of held.sockets) s.ws.close();
  await sleep(1000);
  const presence = await presencePath(main.base, main.url);
  log(`presence: ${JSON.stringify(presence)}`);
  const loss = await socketLoss();
  log(`socket loss: ${JSON.stringify(loss)}`);
  const report = {
    when: new Date().toISOString(),
    machine:
      `${navigator.hardwareConcurrency} cores, load generator, servers and Postgres on one machine`,
    connections: held.result,
    joins: [joinsPublic, joinsPrivate],
    // What this endpoint was measured to hold and admit, against each plan's limits: where a
    // share is under 1 this machine cannot drive that plan's limit, and a test of it here would
    // meet the machine first.
    plans_this_endpoint_reaches: planHeadroom({
      connections: held.result.connections,
      joinsPerSecond: Math.min(joinsPublic.joins_per_second, joinsPrivate.joins_per_second),
    }),
    database_broadcasts: db,
    presence,
    socket_loss: loss,
  };
  await Deno.mkdir(OUT, { recursive: true });
  const file = `${OUT}/realtime-${report.when.slice(0, 10)}.json`;
  await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
  console.log(JSON.stringify(report, null, 2));
  log(`written to ${file}`);
} finally {
  await bridge.stop();
  main.child.kill();
  await main.child.status;
}
