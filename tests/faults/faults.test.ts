// Fault injection against a throwaway copy of the whole stack (its own Postgres cluster,
// PgBouncer, Redis and functions server, in a temporary state dir on free ports: see
// tests/_lib/throwaway.ts), never the shared one. One stack serves every fault below, in order
// (the Postgres restart last: for a while after it PgBouncer fast-fails new client logins,
// server_login_retry); it is stopped and removed at the end. It runs with
// POOL_MAX_SERVER_CONNECTIONS=5 (PgBouncer's cap, for the pool fault) and SLTR_DB_POOL_SIZE=40
// (the functions server may open 40 client connections to PgBouncer, so that the cap, not the
// client pool, is what requests queue on). SLTR_FAULTS=redis,pool runs only the steps whose
// names contain one of the words; SLTR_KEEP_THROWAWAY=1 keeps the state dir and its logs.
//
//   redis_outage            Redis stopped and started mid-run: no 5xx, answers flagged
//                           degraded while it is down, the cache refills after.
//   postgres_restart        Postgres stopped and started (pg_ctl, as stack.sh runs it) under a
//                           stream of signed webhook batches: 503 + Retry-After while down,
//                           recovery without restarting the functions server, and every event
//                           of every batch answered 202 is in Postgres afterwards.
//   pool_exhausted          100 concurrent requests plus sleeping pooler clients against a cap
//                           of 5 server connections: all finish 2xx, and pg_stat_activity
//                           never shows more than 5 of the pooler's connections.
//   pushes                  a watcher's inbox on the throwaway's Realtime endpoint: pushes
//                           do not need Redis (Redis stopped: they still arrive); with
//                           Postgres stopped they pause (the webhook answers 503) and resume
//                           once it is back (the replication stream is recreated).
//   missing_inbox_partition today's partition of realtime.messages detached (as on a hosted
//                           project whose Realtime has not created it): a signed batch with
//                           watched changes is still answered 202 and buffered; the failed
//                           push is counted (monitoring.push_failures, push_failed, metrics).
//   replica_stopped         the read replica stopped and started under a stream of reads
//                           that need Postgres (Redis stopped): no 5xx, reads move to the
//                           primary within seconds and come back to the replica after.
//   cron_flush_failure      flush_presence() failing on a lock held on profiles: nothing is
//                           lost, the alerts fire, the next flush catches up. pg_cron runs at
//                           most once a minute, so the test does not wait for it: it calls
//                           private.flush_presence() itself (as the job's command does) with a
//                           lock_timeout, and records the failed run in cron.job_run_details
//                           as pg_cron would.
import assert from "node:assert/strict";
import { sample, scrape as scrapeMetrics } from "../_lib/metrics.ts";
import postgres from "postgres";
import { createClient } from "@supabase/supabase-js";
import { userJwt } from "../_lib/jwt.ts";
import {
  direct,
  DIRECT_APP,
  pgCtl,
  serverErrors,
  signature,
  sleep,
  type Stack,
  stackSh,
  startStack,
  stopStack,
  uuidArray,
} from "../_lib/throwaway.ts";
import type { PresenceEvent } from "../../functions/_shared/presence.ts";

const POOL_CAP = 5;
const REQUEST_TIMEOUT_MS = 15_000;
const STEP_TIMEOUT_MS = 90_000;

/** A fault step that hangs fails instead (and the stack is still stopped). */
async function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish in ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Redis gone: SHUTDOWN closes every client connection at once (stack.sh start brings it back). */
async function stopRedis(stack: Stack): Promise<void> {
  await new Deno.Command("redis-cli", {
    args: ["-p", String(stack.redisPort), "shutdown", "nosave"],
    stdout: "null",
    stderr: "null",
  }).output();
}

function functionsPid(stack: Stack): number {
  return Number(Deno.readTextFileSync(`${stack.state}/run/functions.pid`).trim());
}

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

// --- requests -------------------------------------------------------------------------

interface Answer {
  fn: string;
  status: number;
  body: Record<string, unknown> | undefined;
  headers: Headers | undefined;
  startedAt: number;
  ms: number;
  error?: string;
}

async function call(stack: Stack, fn: string, init: RequestInit = {}): Promise<Answer> {
  const startedAt = performance.now();
  try {
    const res = await fetch(`${stack.url}/${fn}`, {
      ...init,
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    const text = await res.text();
    let body: Record<string, unknown> | undefined;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    return {
      fn,
      status: res.status,
      body,
      headers: res.headers,
      startedAt,
      ms: performance.now() - startedAt,
    };
  } catch (e) {
    return {
      fn,
      status: 0,
      body: undefined,
      headers: undefined,
      startedAt,
      ms: performance.now() - startedAt,
      error: String(e),
    };
  }
}

// Strictly increasing event times per user, so that each event is newer than the last.
const lastAt = new Map<string, number>();
function nextAt(userId: string): string {
  const at = Math.max(Date.now(), (lastAt.get(userId) ?? 0) + 1);
  lastAt.set(userId, at);
  return new Date(at).toISOString();
}

async function sendBatch(stack: Stack, events: PresenceEvent[]): Promise<Answer> {
  const body = JSON.stringify({ events });
  return await call(stack, "presence-webhook", {
    method: "POST",
    headers: { "content-type": "application/json", "x-sltr-signature": await signature(body) },
    body,
  });
}

interface User {
  id: string;
  lat: number;
  lng: number;
}

const scrape = (stack: Stack) => scrapeMetrics(stack.url);

/** Every user's newest event time held in Postgres (profile or buffer), in ms. */
async function heldAt(db: postgres.Sql, ids: string[]): Promise<Map<string, number>> {
  const rows = await db<{ id: string; held: Date | null }[]>`
    select p.id, greatest(p.last_seen_at, b.event_at) as held
    from public.profiles as p
    left join public.presence_buffer as b on b.user_id = p.id
    where p.id = any(${uuidArray(ids)}::uuid[])`;
  return new Map(rows.map((r) => [r.id, r.held ? r.held.getTime() : 0]));
}

// --- the faults -----------------------------------------------------------------------

async function redisOutage(stack: Stack, users: User[]): Promise<void> {
  const viewer = await userJwt(users[0].id);
  const ids = users.map((u) => u.id);
  const answers: Answer[] = [];
  const accepted = new Map<string, number>();
  let stop = false;
  let round = 0;

  const worker = async () => {
    while (!stop) {
      const mine = users[round++ % users.length];
      const events: PresenceEvent[] = [{
        user_id: mine.id,
        status: "online",
        at: nextAt(mine.id),
        lat: mine.lat,
        lng: mine.lng,
      }];
      const batch = await sendBatch(stack, events);
      if (batch.status === 202) {
        for (const e of events) accepted.set(e.user_id, Date.parse(e.at));
      }
      answers.push(
        batch,
        ...await Promise.all([
          call(stack, "nearby-online?lat=52.52&lng=13.405&radius_m=20000&limit=20", {
            headers: { authorization: `Bearer ${viewer}` },
          }),
          call(stack, "online-status", {
            method: "POST",
            headers: { authorization: `Bearer ${viewer}`, "content-type": "application/json" },
            body: JSON.stringify({ user_ids: ids.slice(0, 20) }),
          }),
          call(stack, "health"),
        ]),
      );
    }
  };
  const workers = [worker(), worker()];

  await sleep(800);
  // Redis goes away.
  await stopRedis(stack);
  const downAt = performance.now();
  await sleep(1500);
  const duringOutage = await scrape(stack);
  await sleep(2000); // past health's 2 s check interval
  // And comes back (stack.sh start starts only what is not running).
  const restartAt = performance.now();
  await stackSh(stack, "start");
  const upAt = performance.now();
  await sleep(500);
  stop = true;
  await Promise.all(workers);

  // Wait for the cache to work again: a nearby answer served from Redis. (The load is
  // stopped first: each accepted online event invalidates the cached answers around it.)
  let refilled: Answer | undefined;
  for (let i = 0; i < 50 && !refilled; i++) {
    await sleep(200);
    const a = await call(stack, "nearby-online?lat=52.52&lng=13.405&radius_m=20000&limit=20", {
      headers: { authorization: `Bearer ${viewer}` },
    });
    answers.push(a);
    if (a.status === 200 && a.body?.cached === true && a.body?.degraded === false) refilled = a;
  }

  const failed = answers.filter((a) => a.status === 0 || a.status >= 500);
  assert.deepEqual(
    failed.map((a) => `${a.fn} ${a.status} ${a.error ?? JSON.stringify(a.body)}`),
    [],
    "no 5xx and no hang while Redis was down",
  );
  const down = answers.filter((a) => a.startedAt > downAt && a.startedAt + a.ms < restartAt);
  for (const fn of ["presence-webhook", "nearby-online", "online-status", "health"]) {
    // health answers its last check for up to 2 s (it must not cost a query per anonymous call).
    const seen = down.filter((a) =>
      a.fn.startsWith(fn) && (fn !== "health" || a.startedAt > downAt + 2500)
    );
    assert.ok(seen.length > 0, `${fn} was called while Redis was down`);
    for (const a of seen) {
      assert.equal(
        a.body?.degraded,
        true,
        `${fn} answered without Redis: ${JSON.stringify(a.body)}`,
      );
      assert.ok(a.status === 200 || a.status === 202, `${fn} ${a.status}`);
    }
  }
  assert.equal(sample(duringOutage, "sltr_redis_up"), 0, "metrics report Redis down");
  assert.ok(refilled, "after Redis is back, nearby answers are cached again");
  let health = await call(stack, "health");
  for (let i = 0; i < 30 && health.body?.redis !== true; i++) {
    await sleep(100);
    health = await call(stack, "health");
  }
  assert.deepEqual({ ...health.body, replica: undefined }, {
    status: "ok",
    database: true,
    redis: true,
    replica: undefined,
    degraded: false,
  });
  const after = await scrape(stack);
  assert.equal(sample(after, "sltr_redis_up"), 1);
  assert.ok((sample(after, 'sltr_cache_requests_total{cache="nearby",result="error"}') ?? 0) > 0);
  assert.ok((sample(after, 'sltr_degraded_responses_total{function="nearby-online"}') ?? 0) > 0);

  // Batches accepted without Redis are in Postgres all the same.
  const db = direct(stack);
  try {
    const held = await heldAt(db, [...accepted.keys()]);
    for (const [id, at] of accepted) assert.ok((held.get(id) ?? 0) >= at, `event of ${id} kept`);
  } finally {
    await db.end();
  }
  console.log(
    `redis_outage: ${answers.length} requests, ${down.length} while down (all degraded), ` +
      `cache refilled ${Math.round(performance.now() - upAt)} ms after restart`,
  );
}

async function postgresRestart(stack: Stack, users: User[]): Promise<void> {
  const pidBefore = functionsPid(stack);
  const accepted = new Map<string, number>();
  const answers: Answer[] = [];
  let stop = false;

  const sender = async (mine: User[]) => {
    let i = 0;
    while (!stop) {
      const events = Array.from({ length: 5 }, () => {
        const u = mine[i++ % mine.length];
        return { user_id: u.id, status: "online" as const, at: nextAt(u.id) };
      });
      const a = await sendBatch(stack, events);
      answers.push(a);
      if (a.status === 202) {
        for (const e of events) {
          accepted.set(e.user_id, Math.max(accepted.get(e.user_id) ?? 0, Date.parse(e.at)));
        }
      } else await sleep(100);
    }
  };
  const quarter = Math.ceil(users.length / 4);
  const senders = [0, 1, 2, 3].map((k) => sender(users.slice(k * quarter, (k + 1) * quarter)));

  await sleep(1000);
  await pgCtl(stack, "-m", "fast", "-w", "stop");
  const downAt = performance.now();
  // Down for longer than a request's 5 s database deadline, so that the batches sent early in
  // the outage must be refused (PgBouncer holds them waiting for a server, server_login_retry
  // 2 s, and a shorter outage would let them through once Postgres is back).
  await sleep(2500);
  const duringOutage = await scrape(stack);
  await sleep(3500);
  await pgCtl(stack, "-l", `${stack.state}/log/postgres.log`, "-w", "-t", "60", "start");
  const upAt = performance.now();

  // Recovered: 202s again (PgBouncer retries the server login every server_login_retry = 2 s).
  let recoveredAt: number | undefined;
  for (let i = 0; i < 300 && recoveredAt === undefined; i++) {
    await sleep(100);
    if (answers.some((a) => a.status === 202 && a.startedAt > upAt)) {
      recoveredAt = performance.now();
    }
  }
  await sleep(500);
  stop = true;
  await Promise.all(senders);

  // Fully recovered: bursts of concurrent requests all succeed again (PgBouncer reopens its
  // server connections one login at a time), so the next fault starts from a healthy stack.
  let settledAt: number | undefined;
  for (let healthy = 0, i = 0; i < 60 && healthy < 2; i++) {
    const burst = await Promise.all(Array.from({ length: 20 }, () => call(stack, "health")));
    healthy = burst.every((a) => a.status === 200) ? healthy + 1 : 0;
    if (healthy === 2) settledAt = performance.now();
    else await sleep(500);
  }
  assert.ok(settledAt !== undefined, "concurrent requests all succeed again after the restart");

  const statuses = new Map<number, number>();
  for (const a of answers) statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
  const odd = answers.filter((a) => a.status !== 202 && a.status !== 503);
  assert.deepEqual(
    odd.map((a) => `${a.status} ${a.error ?? JSON.stringify(a.body)}`),
    [],
    "every batch is answered 202 or 503, never a 500 or a hang",
  );
  const unavailable = answers.filter((a) => a.status === 503);
  assert.ok(unavailable.length > 0, "batches sent while Postgres was down were refused");
  for (const a of unavailable) {
    assert.equal(a.headers?.get("retry-after"), "2");
    assert.equal((a.body?.error as { code?: string })?.code, "database_unavailable");
  }
  assert.ok(
    answers.every((a) => a.status !== 202 || a.startedAt < downAt || a.startedAt + a.ms > upAt),
    "nothing was accepted while Postgres was down",
  );
  assert.ok(recoveredAt !== undefined, "the webhook accepts batches again after the restart");
  assert.equal(functionsPid(stack), pidBefore, "the functions server was not restarted");
  assert.ok(alive(pidBefore), "the functions server survived the restart");
  assert.equal(sample(duringOutage, "sltr_database_up"), 0, "metrics report the database down");

  // No event answered 202 is lost.
  const db = direct(stack);
  try {
    const held = await heldAt(db, [...accepted.keys()]);
    const lost = [...accepted].filter(([id, at]) => (held.get(id) ?? 0) < at);
    assert.deepEqual(lost, [], "every accepted event is in Postgres");
  } finally {
    await db.end();
  }
  console.log(
    `postgres_restart: ${answers.length} batches (${
      [...statuses].map(([s, n]) => `${n} x ${s}`).join(", ")
    }), ${accepted.size} users' accepted events all kept, first 202 ${
      Math.round((recoveredAt ?? upAt) - upAt)
    } ms and fully recovered ${Math.round((settledAt ?? upAt) - upAt)} ms after Postgres was back`,
  );
}

/** Reads by route (sltr_db_reads_total) in one scrape. */
async function readRoutes(stack: Stack): Promise<Record<string, number>> {
  const text = await scrape(stack);
  const routes: Record<string, number> = {};
  for (const m of text.matchAll(/^sltr_db_reads_total\{route="([a-z_]+)"\} (\d+)$/gm)) {
    routes[m[1]] = Number(m[2]);
  }
  return routes;
}

const primaryReads = (r: Record<string, number>) =>
  Object.entries(r).filter(([k]) => k.startsWith("primary")).reduce((n, [, v]) => n + v, 0);

/** Polls until `ok` holds (every 100 ms, up to `ms`); returns how long it took. */
async function until(ms: number, what: string, ok: () => Promise<boolean>): Promise<number> {
  const started = performance.now();
  while (!(await ok())) {
    if (performance.now() - started > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(100);
  }
  return performance.now() - started;
}

async function replicaStopped(stack: Stack, users: User[]): Promise<void> {
  const viewer = await userJwt(users[0].id);
  const ids = users.map((u) => u.id);
  // Redis away, so that every read is answered by Postgres: the replica when it can.
  await stopRedis(stack);
  const answers: Answer[] = [];
  let stop = false;
  const worker = async () => {
    while (!stop) {
      answers.push(
        ...await Promise.all([
          call(stack, "nearby-online?lat=52.52&lng=13.405&radius_m=20000&limit=20", {
            headers: { authorization: `Bearer ${viewer}` },
          }),
          call(stack, "online-status", {
            method: "POST",
            headers: { authorization: `Bearer ${viewer}`, "content-type": "application/json" },
            body: JSON.stringify({ user_ids: ids }),
          }),
        ]),
      );
      await sleep(20);
    }
  };
  const workers = [worker(), worker()];
  try {
    const before = await readRoutes(stack);
    await until(
      10_000,
      "reads served by the replica",
      async () => ((await readRoutes(stack)).replica ?? 0) > (before.replica ?? 0) + 10,
    );

    await stackSh(stack, "replica-stop");
    const stopped = await readRoutes(stack);
    const fellBack = await until(
      10_000,
      "reads on the primary after the replica stopped",
      async () => primaryReads(await readRoutes(stack)) > primaryReads(stopped) + 10,
    );
    // Now every read is the primary's: the replica's count stands still.
    const onPrimary = await readRoutes(stack);
    await sleep(1000);
    assert.equal((await readRoutes(stack)).replica ?? 0, onPrimary.replica ?? 0);

    await stackSh(stack, "replica-start");
    const restarted = await readRoutes(stack);
    const returned = await until(
      20_000,
      "reads back on the replica",
      async () => ((await readRoutes(stack)).replica ?? 0) > (restarted.replica ?? 0) + 10,
    );
    stop = true;
    await Promise.all(workers);

    const failed = answers.filter((a) => a.status !== 200);
    assert.deepEqual(
      failed.map((a) => `${a.fn} ${a.status} ${a.error ?? JSON.stringify(a.body)}`),
      [],
      "every read answered 200 while the replica went away and came back",
    );
    const slowest = Math.max(...answers.map((a) => a.ms));
    console.log(
      `replica: ${answers.length} reads, all 200 (slowest ${Math.round(slowest)} ms); on the ` +
        `primary ${Math.round(fellBack)} ms after the replica stopped, back on the replica ` +
        `${Math.round(returned)} ms after it started`,
    );
  } finally {
    stop = true;
    await Promise.all(workers);
    await stackSh(stack, "start"); // Redis (and anything else) back
  }
}

async function poolExhausted(stack: Stack, users: User[]): Promise<void> {
  const sampler = direct(stack);
  const load = postgres(stack.poolerUrl, {
    max: 10,
    prepare: false,
    fetch_types: false,
    onnotice: () => {},
    connection: { application_name: "sltr-fault-load" },
  });
  try {
    let stop = false;
    let maxSeen = 0;
    const sampling = (async () => {
      while (!stop) {
        const [{ n }] = await sampler<{ n: number }[]>`
          select count(*)::int as n from pg_stat_activity
          where backend_type = 'client backend' and application_name <> ${DIRECT_APP}`;
        maxSeen = Math.max(maxSeen, n);
        await sleep(5);
      }
    })();

    const viewer = await userJwt(users[0].id);
    const sleepers = Array.from({ length: 10 }, async () => {
      for (let i = 0; i < 2; i++) await load`select pg_sleep(0.25)`;
    });
    const requests = Array.from({ length: 100 }, (_, i) => {
      const u = users[i % users.length];
      if (i % 3 === 0) {
        return sendBatch(stack, [{
          user_id: u.id,
          status: "online",
          at: nextAt(u.id),
          lat: u.lat,
          lng: u.lng,
        }]);
      }
      if (i % 3 === 1) {
        // A different cell each: a cache miss, so a database query.
        return call(stack, `nearby-online?lat=${40 + i * 0.1}&lng=${10 + i * 0.1}&radius_m=1000`, {
          headers: { authorization: `Bearer ${viewer}` },
        });
      }
      return call(stack, "online-status", {
        method: "POST",
        headers: { authorization: `Bearer ${viewer}`, "content-type": "application/json" },
        body: JSON.stringify({ user_ids: [crypto.randomUUID(), u.id] }),
      });
    });
    const started = performance.now();
    const answers = await Promise.all(requests);
    const took = performance.now() - started;
    await Promise.all(sleepers);
    stop = true;
    await sampling;

    const bad = answers.filter((a) => a.status < 200 || a.status >= 300);
    assert.deepEqual(
      bad.map((a) => `${a.fn} ${a.status} ${a.error ?? JSON.stringify(a.body)}`),
      [],
      "all 100 requests finish 2xx",
    );
    assert.ok(
      maxSeen <= POOL_CAP,
      `server connections ${maxSeen} never exceed the cap ${POOL_CAP}`,
    );
    assert.equal(maxSeen, POOL_CAP, "the pool was saturated (the cap was reached)");
    console.log(
      `pool_exhausted: 100 requests + 20 pg_sleep(0.25) on ${POOL_CAP} server connections: all 2xx in ${
        Math.round(took)
      } ms, at most ${maxSeen} server connections seen`,
    );
  } finally {
    await load.end();
    await sampler.end();
  }
}

async function cronFlushFailure(stack: Stack, users: User[]): Promise<void> {
  const db = direct(stack);
  // The lock holder: a transaction kept open until release() (postgres.js reserve() never
  // resolves with fetch_types off, so a sql.begin that waits is used instead).
  let release = () => {};
  const released = new Promise<void>((r) => release = r);
  let holding: Promise<unknown> = Promise.resolve();
  try {
    // Pending presence: every user comes online somewhere new.
    const events: PresenceEvent[] = users.map((u) => ({
      user_id: u.id,
      status: "online",
      at: nextAt(u.id),
      lat: 48.1 + Math.random() * 0.1,
      lng: 11.5 + Math.random() * 0.1,
    }));
    const sent = await sendBatch(stack, events);
    assert.equal(sent.status, 202, JSON.stringify(sent.body));
    assert.equal(sent.body?.accepted, users.length);

    // Something holds a lock on profiles; the flush gives up (as the cron job would fail).
    let locked = () => {};
    const isLocked = new Promise<void>((r) => locked = r);
    holding = db.begin(async (tx) => {
      await tx`lock table public.profiles in share mode`;
      locked();
      await released;
    });
    await isLocked;
    const failure = await db.begin(async (tx) => {
      await tx`set local lock_timeout = '300ms'`;
      await tx`select private.flush_presence()`;
    }).then(() => undefined, (e: { code?: string; message?: string }) => e);
    assert.equal(failure?.code, "55P03", "the flush times out on the lock");
    await db`
      insert into cron.job_run_details
        (jobid, job_pid, database, username, command, status, return_message, start_time, end_time)
      select j.jobid, 0, 'postgres', 'postgres', j.command, 'failed', ${`ERROR:  ${failure?.message}`}, now(), now()
      from cron.job as j where j.jobname = 'presence-flush'`;

    // Nothing is lost: every event is still buffered, pending.
    const ids = users.map((u) => u.id);
    const buffered = await db<{ n: number }[]>`
      select count(*)::int as n from public.presence_buffer where user_id = any(${
      uuidArray(ids)
    }::uuid[])`;
    assert.equal(buffered[0].n, users.length, "every event is still in the buffer");

    // The alerts fire (flush interval set to 1 s so the lag passes 2 intervals quickly).
    await db`update monitoring.settings set value = 1 where name = 'flush_interval_seconds'`;
    await sleep(2200);
    const alerts = await db<{ alert: string; message: string }[]>`
      select alert, message from monitoring.check_alerts()`;
    const names = alerts.map((a) => a.alert);
    assert.ok(names.includes("cron_job_failed"), `cron_job_failed fires: ${names}`);
    assert.ok(names.includes("flush_lag"), `flush_lag fires: ${names}`);
    assert.match(
      alerts.find((a) => a.alert === "cron_job_failed")!.message,
      /presence-flush.*lock timeout/,
    );
    const metrics = await scrape(stack);
    assert.equal(sample(metrics, 'sltr_alerts_firing{alert="flush_lag",severity="critical"}'), 1);
    assert.equal(
      sample(metrics, 'sltr_alerts_firing{alert="cron_job_failed",severity="critical"}'),
      1,
    );

    // The lock goes away; the next run catches up.
    release();
    await holding;
    await db`select private.flush_presence()`;
    const profiles = await db<{ id: string; is_online: boolean; last_seen_at: Date }[]>`
      select id, is_online, last_seen_at from public.profiles where id = any(${
      uuidArray(ids)
    }::uuid[])`;
    const byId = new Map(profiles.map((p) => [p.id, p]));
    for (const e of events) {
      const p = byId.get(e.user_id)!;
      assert.equal(p.is_online, true, `${e.user_id} is online`);
      assert.equal(p.last_seen_at.getTime(), Date.parse(e.at), `${e.user_id} last seen at`);
    }
    const [pipe] = await db<{ pending_rows: number }[]>`
      select pending_rows::int from monitoring.presence_pipeline`;
    assert.equal(pipe.pending_rows, 0, "nothing is pending after the catch-up flush");
    const after = (await db<{ alert: string }[]>`select alert from monitoring.check_alerts()`)
      .map((a) => a.alert);
    assert.ok(!after.includes("flush_lag"), `flush_lag resolves: ${after}`);
    console.log(
      `cron_flush_failure: flush failed with 55P03 while profiles was locked; alerts fired (${names}); ` +
        `the next flush applied all ${users.length} events`,
    );
  } finally {
    await db`update monitoring.settings set value = null where name = 'flush_interval_seconds'`
      .catch(() => {});
    release();
    await holding.catch(() => {});
    await db.end();
  }
}

/** A push that cannot be written (no partition of realtime.messages for today) costs nothing
 * of presence: the batch commits and the failure is counted. */
async function missingInboxPartition(stack: Stack, [watcher, watched]: User[]): Promise<void> {
  const db = direct(stack);
  const today = `realtime.messages_${new Date().toISOString().slice(0, 10).replaceAll("-", "_")}`;
  let detached = false;
  try {
    await db`insert into public.favorites (user_id, favorite_id) values (${watcher.id}, ${watched.id})
             on conflict do nothing`;
    const online = await sendBatch(stack, [
      { user_id: watcher.id, status: "online", at: nextAt(watcher.id) },
      { user_id: watched.id, status: "offline", at: nextAt(watched.id) },
    ]);
    assert.equal(online.status, 202, JSON.stringify(online.body));
    await db`delete from monitoring.push_failures`;

    await db.unsafe(`alter table realtime.messages detach partition ${today}`);
    detached = true;
    const at = nextAt(watched.id);
    const sent = await sendBatch(stack, [{ user_id: watched.id, status: "online", at }]);
    assert.equal(sent.status, 202, JSON.stringify(sent.body));
    assert.equal(sent.body?.accepted, 1);
    const [buffered] = await db<{ event_at: Date; is_online: boolean }[]>`
      select event_at, is_online from public.presence_buffer where user_id = ${watched.id}`;
    assert.equal(buffered?.event_at.getTime(), Date.parse(at), "the event is in the buffer");
    assert.equal(buffered?.is_online, true);
    const failures = await db<{ sqlstate: string; changes: number }[]>`
      select sqlstate, changes::int from monitoring.push_failures`;
    assert.deepEqual([...failures], [{ sqlstate: "23514", changes: 1 }], "the failure is recorded");
    const metrics = await scrape(stack);
    assert.equal(sample(metrics, "sltr_push_failures_recent"), 1);
    assert.equal(sample(metrics, "sltr_push_changes_lost_recent"), 1);
    assert.equal(sample(metrics, 'sltr_alerts_firing{alert="push_failed",severity="critical"}'), 1);
    console.log(
      "missing_inbox_partition: batch answered 202 and buffered; push failed with 23514 and counted",
    );
  } finally {
    if (detached) {
      const day = new Date().toISOString().slice(0, 10);
      await db.unsafe(`alter table realtime.messages attach partition ${today}
        for values from ('${day}') to ('${day}'::date + 1)`).catch((e) => console.error(e));
    }
    await db`delete from monitoring.push_failures`.catch(() => {});
    await db.end();
  }
}

/** A watcher's pushes through a Redis outage and a Postgres restart. */
async function pushesThroughOutages(stack: Stack, [watcher, watched]: User[]): Promise<void> {
  const db = direct(stack);
  await db`insert into public.favorites (user_id, favorite_id) values (${watcher.id}, ${watched.id})
           on conflict do nothing`;
  await db.end();
  const base = stack.url.replace(/\/functions\/v1$/, "");
  const token = await userJwt(watcher.id);
  const client = createClient(base, Deno.env.get("SUPABASE_ANON_KEY")!, {
    accessToken: () => Promise.resolve(token),
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { reconnectAfterMs: () => 200 },
  });
  const heard: { is_online: boolean; at: number }[] = [];
  const retrySend = async (status: "online" | "offline") => {
    const events = [{ user_id: watched.id, status, at: nextAt(watched.id) }];
    for (let i = 0; i < 400; i++) {
      const a = await sendBatch(stack, events);
      if (a.status === 202) return;
      await sleep(100);
    }
    throw new Error("the webhook never accepted the batch");
  };
  const expect = async (is_online: boolean, what: string, ms: number) => {
    const until = performance.now() + ms;
    while (!heard.some((h) => h.is_online === is_online)) {
      if (performance.now() > until) throw new Error(`no push: ${what}`);
      await sleep(20);
    }
    heard.length = 0;
  };
  try {
    await client.realtime.setAuth();
    await new Promise<void>((resolve, reject) => {
      client.channel(`presence:user:${watcher.id}`, { config: { private: true } })
        .on("broadcast", { event: "status_changes" }, ({ payload }) => {
          for (const c of payload.changes) {
            heard.push({ is_online: c.is_online, at: performance.now() });
          }
        })
        .subscribe((s, e) => s === "SUBSCRIBED" ? resolve() : reject(e ?? new Error(s)));
    });
    await sendBatch(stack, [{ user_id: watcher.id, status: "online", at: nextAt(watcher.id) }]);

    // Redis away: pushes do not use it.
    await stopRedis(stack);
    await retrySend("online");
    await expect(true, "with Redis down", 2000);
    await stackSh(stack, "start");

    // Postgres away: the webhook answers 503 and nothing is pushed; once it is back (and the
    // replication stream with it) pushes resume.
    await pgCtl(stack, "-m", "fast", "-w", "stop");
    const down = await sendBatch(stack, [{
      user_id: watched.id,
      status: "offline",
      at: nextAt(watched.id),
    }]);
    assert.equal(down.status, 503);
    await sleep(1000);
    assert.equal(heard.length, 0, "nothing pushed while Postgres is down");
    await pgCtl(stack, "-l", `${stack.state}/log/postgres.log`, "-w", "-t", "60", "start");
    const backAt = performance.now();
    for (;;) {
      const up = sample(await scrape(stack), "sltr_realtime_replication_up");
      if (up === 1) break;
      if (performance.now() - backAt > 30_000) throw new Error("replication never came back");
      await sleep(200);
    }
    // A row committed in the moment before the new slot exists is never delivered (as on
    // hosted Realtime: database_broadcasts.ts), so the first change after the restart may be
    // lost; pushes must resume within the next changes.
    for (let attempt = 0;; attempt++) {
      const status = attempt % 2 === 0 ? "offline" : "online";
      await retrySend(status);
      try {
        await expect(status === "online", "after Postgres came back", 2000);
        break;
      } catch (e) {
        if (attempt === 2) throw e;
      }
    }
    console.log(
      `pushes: through Redis down, and resumed ${
        Math.round(performance.now() - backAt)
      } ms after Postgres was back`,
    );
  } finally {
    await client.removeAllChannels();
    await client.realtime.disconnect();
  }
}

Deno.test({
  name: "faults_on_a_throwaway_stack",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const started = performance.now();
    const stack = await startStack("sltr-fault-", {
      POOL_MAX_SERVER_CONNECTIONS: String(POOL_CAP),
      SLTR_DB_POOL_SIZE: "40",
    });
    try {
      const db = direct(stack);
      const users = (await db<{ id: string; latitude: number; longitude: number }[]>`
        select id, latitude, longitude from public.profiles
        where latitude is not null order by id limit 300`)
        .map((r) => ({ id: r.id, lat: r.latitude, lng: r.longitude }));
      await db.end();
      assert.ok(users.length >= 240, "the seed's users are there");

      const steps: [string, () => Promise<void>][] = [
        [
          "redis_stopped_and_restarted_mid_run_answers_degraded_and_refills",
          () => redisOutage(stack, users.slice(0, 50)),
        ],
        [
          "pgbouncer_pool_exhausted_requests_queue_and_finish_within_the_cap",
          () => poolExhausted(stack, users.slice(150, 230)),
        ],
        [
          "pushes_survive_redis_down_pause_with_postgres_down_and_resume",
          () => pushesThroughOutages(stack, users.slice(270, 272)),
        ],
        [
          "missing_inbox_partition_push_fails_and_presence_commits",
          () => missingInboxPartition(stack, users.slice(272, 274)),
        ],
        [
          "replica_stopped_reads_fall_back_to_the_primary_without_5xx_and_return",
          () => replicaStopped(stack, users.slice(0, 20)),
        ],
        [
          "cron_flush_failing_alerts_and_the_next_run_catches_up",
          () => cronFlushFailure(stack, users.slice(230, 270)),
        ],
        [
          "postgres_restarted_mid_run_answers_503_and_loses_no_accepted_event",
          () => postgresRestart(stack, users.slice(50, 150)),
        ],
      ];
      // SLTR_FAULTS=redis,pool runs only the steps whose names contain one of the words.
      const only = (Deno.env.get("SLTR_FAULTS") ?? "").split(",").filter(Boolean);
      for (const [name, step] of steps) {
        if (only.length && !only.some((w) => name.includes(w))) continue;
        await t.step(name, async () => {
          try {
            await withTimeout(step(), STEP_TIMEOUT_MS, name);
          } catch (e) {
            console.error(`${name}:`, e, "\nfunctions server errors:\n" + serverErrors(stack));
            throw e;
          }
        });
      }
    } finally {
      await stopStack(stack);
      console.log(`faults: ${Math.round((performance.now() - started) / 1000)} s in all`);
    }
  },
});
