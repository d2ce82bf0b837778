// Presence write path benchmark against the running local stack (make start):
//   1. webhook throughput and latency (HdrHistogram) for signed batches of 1, 100 and 1,000
//      events, over users created in bulk with generate_series;
//   2. ingest_presence, flush_presence and expire_stale_presence over 50,000 changed users.
// The users (bench-presence-<n>@sltr.bench) and their Redis keys are removed at the end, also
// after a failure; --keep leaves them.
//
//   node_modules/.bin/deno run -A bench/presence.ts [--users 50000] [--duration 10]
//     [--warmup 2] [--concurrency 16] [--batches 1,100,1000|none] [--keep] [--json]
// The stack's settings come from the environment scripts/lib.sh exports (tests/_lib/env.ts);
// DB_URL=<scratch database> with --batches none measures the SQL part alone.
import * as hdr from "hdr-histogram-js";
import postgres from "postgres";
import { Redis } from "ioredis";
import { signBody } from "../functions/_shared/auth.ts";
import { DB_URL, FUNCTIONS_URL, REDIS_URL, WEBHOOK_SECRET } from "../tests/_lib/env.ts";

interface Options {
  users: number;
  duration: number;
  warmup: number;
  concurrency: number;
  batches: number[];
  keep: boolean;
  json: boolean;
}

function options(argv: string[]): Options {
  const o: Options = {
    users: 50_000,
    duration: 10,
    warmup: 2,
    concurrency: 16,
    batches: [1, 100, 1000],
    keep: false,
    json: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split("=", 2);
    const value = () => inline ?? argv[++i];
    if (flag === "--users") o.users = Number(value());
    else if (flag === "--duration") o.duration = Number(value());
    else if (flag === "--warmup") o.warmup = Number(value());
    else if (flag === "--concurrency") o.concurrency = Number(value());
    else if (flag === "--batches") {
      const v = value();
      o.batches = v === "none" ? [] : v.split(",").map(Number);
    } else if (flag === "--keep") o.keep = true;
    else if (flag === "--json") o.json = true;
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!(o.users >= 1000) || !(o.duration > 0) || !(o.concurrency >= 1)) {
    throw new Error("--users >= 1000, --duration > 0, --concurrency >= 1");
  }
  if (o.batches.some((b) => !(b >= 1 && b <= 1000))) throw new Error("batches are 1..1000");
  return o;
}

const EMAIL_LIKE = "bench-presence-%@sltr.bench";

class Latency {
  readonly h = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000,
    numberOfSignificantValueDigits: 3,
  });
  record(us: number): void {
    this.h.recordValue(Math.max(1, Math.round(us)));
  }
  ms(p: number): number {
    return Math.round(this.h.getValueAtPercentile(p) / 10) / 100;
  }
}

/** Event times: strictly increasing microseconds that never run ahead of the clock for long. */
function clock(): () => string {
  let last = 0;
  return () => {
    last = Math.max(Date.now() * 1000, last + 1);
    const ms = Math.floor(last / 1000);
    const us = String(last % 1000).padStart(3, "0");
    return new Date(ms).toISOString().replace("Z", `${us}Z`);
  };
}

async function main(): Promise<void> {
  const o = options(Deno.args);
  const db = postgres(DB_URL, { max: 4, onnotice: () => {} });
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  const log = (msg: string) => console.error(`[bench] ${msg}`);
  const results: Record<string, unknown> = {
    users: o.users,
    concurrency: o.concurrency,
    duration_s: o.duration,
    cpus: navigator.hardwareConcurrency,
  };
  const ids: string[] = [];

  const cleanup = async () => {
    const t = performance.now();
    const gone = await db`delete from auth.users where email like ${EMAIL_LIKE}`;
    for (let i = 0; i < ids.length; i += 5000) {
      await redis.del(...ids.slice(i, i + 5000).map((id) => `presence:${id}`));
    }
    log(`removed ${gone.count} bench users in ${Math.round(performance.now() - t)} ms`);
  };

  try {
    await db`delete from auth.users where email like ${EMAIL_LIKE}`;

    // ---- users, in bulk ----
    const t = performance.now();
    await db`
      insert into auth.users (id, aud, role, email)
      select md5('bench-presence-' || n)::uuid, 'authenticated', 'authenticated',
             'bench-presence-' || n || '@sltr.bench'
      from generate_series(1, ${o.users}) as n`;
    await db`
      insert into public.profiles (id, display_name)
      select md5('bench-presence-' || n)::uuid, 'Bench ' || n
      from generate_series(1, ${o.users}) as n`;
    ids.push(
      ...(await db<{ id: string }[]>`
        select md5('bench-presence-' || n)::uuid::text as id
        from generate_series(1, ${o.users}) as n`).map((r) => r.id),
    );
    log(`created ${o.users} users in ${Math.round(performance.now() - t)} ms`);

    // ---- webhook throughput ----
    const webhook = `${FUNCTIONS_URL}/presence-webhook`;
    const now = clock();
    const webhookResults: Record<string, unknown>[] = [];
    for (const size of o.batches) {
      const latency = new Latency();
      const statuses: Record<number, number> = {};
      let events = 0;
      let accepted = 0;
      let degraded = 0;
      let measuring = false;
      const start = performance.now();
      const stopAt = start + (o.warmup + o.duration) * 1000;
      let measuredFrom = 0;
      setTimeout(() => {
        measuring = true;
        measuredFrom = performance.now();
      }, o.warmup * 1000);
      await Promise.all(Array.from({ length: o.concurrency }, async () => {
        while (performance.now() < stopAt) {
          const first = Math.floor(Math.random() * ids.length);
          const batch = Array.from({ length: size }, (_, i) => {
            const online = Math.random() < 0.5;
            return online
              ? {
                user_id: ids[(first + i) % ids.length],
                status: "online",
                at: now(),
                lat: 52.3 + Math.random() * 0.4,
                lng: 13.1 + Math.random() * 0.6,
              }
              : { user_id: ids[(first + i) % ids.length], status: "offline", at: now() };
          });
          const body = JSON.stringify({ events: batch });
          const signature = await signBody(WEBHOOK_SECRET, body);
          const sent = performance.now();
          let res: Response;
          let answer: { accepted?: number; degraded?: boolean };
          try {
            res = await fetch(webhook, {
              method: "POST",
              body,
              headers: { "content-type": "application/json", "x-sltr-signature": signature },
            });
            answer = await res.json();
          } catch {
            // The server went away (restarted, overloaded): counted as status 0, not fatal.
            if (measuring) statuses[0] = (statuses[0] ?? 0) + 1;
            await new Promise((r) => setTimeout(r, 100));
            continue;
          }
          const took = performance.now() - sent;
          if (!measuring) continue;
          latency.record(took * 1000);
          statuses[res.status] = (statuses[res.status] ?? 0) + 1;
          if (res.status === 202) {
            events += size;
            accepted += answer.accepted ?? 0;
            if (answer.degraded) degraded++;
          }
        }
      }));
      const seconds = (performance.now() - measuredFrom) / 1000;
      const row = {
        batch: size,
        requests: latency.h.totalCount,
        requests_per_s: Math.round(latency.h.totalCount / seconds),
        events_per_s: Math.round(events / seconds),
        accepted_ratio: events ? Math.round((accepted / events) * 1000) / 1000 : 0,
        p50_ms: latency.ms(50),
        p99_ms: latency.ms(99),
        max_ms: Math.round(latency.h.maxValue / 10) / 100,
        statuses,
        degraded,
      };
      webhookResults.push(row);
      log(`batch ${size}: ${JSON.stringify(row)}`);
    }
    results.webhook = webhookResults;

    // ---- flush of 50,000 changed users ----
    // Ingest and flush in one transaction, so pg_cron's flush (another session) cannot apply the
    // rows first; the advisory lock is taken before timing so a running cron flush is not timed.
    const sqlTimes: Record<string, unknown> = {};
    const timed = async <T>(run: () => Promise<T>): Promise<[T, number]> => {
      const t0 = performance.now();
      const value = await run();
      return [value, Math.round((performance.now() - t0) * 10) / 10];
    };
    await db`update public.profiles set is_online = false, last_seen_at = now() - interval '1 hour',
             latitude = null, longitude = null where id = any(${ids}::uuid[])`;
    await db`delete from public.presence_buffer where user_id = any(${ids}::uuid[])`;
    await db.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtextextended('public.presence_buffer', 0))`;
      const [ingested, ingestMs] = await timed(() =>
        tx`
        select private.ingest_presence(jsonb_agg(jsonb_build_object(
          'user_id', id, 'status', 'online', 'at', now() - interval '1 second',
          'lat', 52.3 + random() * 0.4, 'lng', 13.1 + random() * 0.6))) as r
        from unnest(${ids}::uuid[]) as id`
      );
      const [flushed, flushMs] = await timed(() => tx`select private.flush_presence() as n`);
      sqlTimes.ingest_presence = { events: ids.length, ms: ingestMs, result: ingested[0].r };
      sqlTimes.flush_changed = { changed: flushed[0].n, ms: flushMs };
      log(`ingest_presence(${ids.length} events): ${ingestMs} ms`);
      log(`flush_presence() with ${flushed[0].n} changed users: ${flushMs} ms`);
    });
    // Now every bench user is online: heartbeats (same status, no location) cost no writes.
    await db.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtextextended('public.presence_buffer', 0))`;
      await tx`
        select private.ingest_presence(jsonb_agg(jsonb_build_object(
          'user_id', id, 'status', 'online', 'at', now()))) from unnest(${ids}::uuid[]) as id`;
      const [flushed, flushMs] = await timed(() => tx`select private.flush_presence() as n`);
      const [expired, expireMs] = await timed(() =>
        tx`select private.expire_stale_presence(interval '0 seconds') as n`
      );
      sqlTimes.flush_heartbeats = { heartbeats: ids.length, changed: flushed[0].n, ms: flushMs };
      sqlTimes.expire_all = { expired: expired[0].n, ms: expireMs };
      log(
        `flush_presence() with ${ids.length} buffered heartbeats: ${
          flushed[0].n
        } changed, ${flushMs} ms`,
      );
      log(
        `expire_stale_presence() marking ${
          expired[0].n
        } users offline: ${expireMs} ms (rolled back)`,
      );
      throw new RollbackBench();
    }).catch((e) => {
      if (!(e instanceof RollbackBench)) throw e;
    });
    results.sql = sqlTimes;
  } finally {
    if (!o.keep) await cleanup();
    await db.end({ timeout: 2 });
    redis.disconnect();
  }

  if (o.json) console.log(JSON.stringify(results, null, 2));
  else {
    console.log("\nwebhook (signed batches, concurrency %d, %d s each)", o.concurrency, o.duration);
    console.log("batch | events/s | requests/s | p50 ms | p99 ms | max ms | statuses | degraded");
    for (const r of results.webhook as Record<string, unknown>[]) {
      console.log(
        `${r.batch} | ${r.events_per_s} | ${r.requests_per_s} | ${r.p50_ms} | ${r.p99_ms} | ${r.max_ms} | ${
          JSON.stringify(r.statuses)
        } | ${r.degraded}`,
      );
    }
    console.log("\nSQL over %d users", o.users);
    for (const [k, v] of Object.entries(results.sql as Record<string, unknown>)) {
      console.log(`${k}: ${JSON.stringify(v)}`);
    }
  }
}

class RollbackBench extends Error {}

if (import.meta.main) await main();
