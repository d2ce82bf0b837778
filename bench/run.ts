// `make bench`: loads clustered users, drives presence churn through the signed webhook and
// reads through the functions and PgBouncer, then the seed's polling baseline on the same
// users, and writes bench/results/<date>-<users>.{json,md,svg}.
//   deno run -A bench/run.ts --users 50000 --online-ratio 0.1 --duration 60
import postgres from "postgres";
import { SignJWT } from "jose";
import { Args, CITIES, Latency, paced, parseArgs, progress, rng, sleep } from "./lib.ts";
import { writeReport } from "./report.ts";

const args: Args = parseArgs(Deno.args);
const FUNCTIONS_URL = Deno.env.get("FUNCTIONS_URL") ??
  `${Deno.env.get("SUPABASE_URL") ?? "http://127.0.0.1:54321"}/functions/v1`;
const DB_URL = Deno.env.get("DB_URL") ?? "postgresql://postgres:postgres@127.0.0.1:54322/postgres";
const POOLER_URL = Deno.env.get("POOLER_URL") ??
  "postgresql://postgres:postgres@127.0.0.1:54329/postgres";
const JWT_SECRET = Deno.env.get("SUPABASE_JWT_SECRET") ??
  "super-secret-jwt-token-with-at-least-32-characters-long";
const WEBHOOK_SECRET = Deno.env.get("PRESENCE_WEBHOOK_SECRET") ??
  "local-presence-webhook-secret-do-not-use-in-production";

// The benchmark's own direct connections are named, and left out of the connection counts.
const BENCH_APP = "sltr-bench-direct";
const direct = postgres(DB_URL, {
  max: 2,
  onnotice: () => {},
  connection: { application_name: BENCH_APP },
});
const pooled = postgres(POOLER_URL, { max: 8, prepare: false, onnotice: () => {} });
const monitor = postgres(DB_URL, {
  max: 1,
  onnotice: () => {},
  connection: { application_name: BENCH_APP },
});

interface User {
  id: string;
  lat: number;
  lng: number;
  online: boolean;
}

async function loadUsers(): Promise<void> {
  const t0 = performance.now();
  progress("load", 0, 3, `creating ${args.users} users`);
  await direct`delete from auth.users where email like 'bench-%@sltr.bench'`;
  await direct.begin(async (tx) => {
    await tx`select setseed(0.42)`;
    await tx`
      insert into auth.users (id, aud, role, email)
      select ('b0000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'authenticated', 'authenticated',
             'bench-' || n || '@sltr.bench'
      from generate_series(1, ${args.users}::int) as n`;
    progress("load", 1, 3, "profiles");
    await tx`
      insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
      select ('b0000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'Bench ' || n,
             random() < ${args.onlineRatio}::float8,
             least(89.0, greatest(-89.0, c.lat + r * cos(t) * 0.045)),
             c.lng + r * sin(t) * 0.045 / cos(radians(c.lat)),
             now() - interval '10 minutes'
      from generate_series(1, ${args.users}::int) as n
      cross join lateral (select sqrt(-2 * ln(1 - random())) as r, 2 * pi() * random() as t, n as k) as g
      join jsonb_to_recordset(${tx.json(CITIES.map((c, i) => ({ ...c, i })))}::jsonb)
        as c(i int, lat float8, lng float8) on c.i = g.k % ${CITIES.length}::int`;
  });
  progress("load", 2, 3, "analyze");
  await direct`analyze auth.users`;
  await direct`analyze public.profiles`;
  progress("load", 3, 3, `${Math.round(performance.now() - t0)} ms`);
}

async function sampleUsers(n: number): Promise<User[]> {
  const rows = await direct<
    { id: string; latitude: number; longitude: number; is_online: boolean }[]
  >`
    select id, latitude, longitude, is_online from public.profiles
    where id >= 'b0000000-0000-4000-8000-000000000000' and id <= 'b0000000-0000-4000-8000-ffffffffffff'
    order by md5(id::text) limit ${n}`;
  return rows.map((r) => ({ id: r.id, lat: r.latitude, lng: r.longitude, online: r.is_online }));
}

const key = new TextEncoder().encode(JWT_SECRET);
function userJwt(sub: string): Promise<string> {
  return new SignJWT({ role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" }).setSubject(sub).setIssuedAt()
    .setExpirationTime("2h")
    .sign(key);
}

const hmacKey = await crypto.subtle.importKey(
  "raw",
  new TextEncoder().encode(WEBHOOK_SECRET),
  { name: "HMAC", hash: "SHA-256" },
  false,
  ["sign"],
);
async function signedPost(events: unknown[]): Promise<Response> {
  const body = JSON.stringify({ events });
  const t = Math.floor(Date.now() / 1000);
  const mac = new Uint8Array(
    await crypto.subtle.sign("HMAC", hmacKey, new TextEncoder().encode(`${t}.${body}`)),
  );
  const hex = Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
  return await fetch(`${FUNCTIONS_URL}/presence-webhook`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-sltr-signature": `t=${t},v1=${hex}` },
    body,
  });
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
): Promise<{ user_id: string; is_online: boolean }[]> {
  const claims = JSON.stringify({ sub, role: "authenticated" });
  return await pooled.begin(async (tx) => {
    await tx`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${claims}, true)`;
    return await tx<{ user_id: string; is_online: boolean }[]>`
      select user_id, is_online from public.get_online_users_batch(${ids}::uuid[])`;
  });
}

async function statementCalls(pattern: string): Promise<number> {
  const [row] = await monitor<{ calls: string | null }[]>`
    select sum(calls)::text as calls from extensions.pg_stat_statements where query ~* ${pattern}`;
  return Number(row.calls ?? 0);
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

function pick<T>(xs: T[], r: () => number): T {
  return xs[Math.floor(r() * xs.length)];
}

function jitter(u: User, r: () => number, metres: number): { lat: number; lng: number } {
  const d = metres / 111_320;
  return {
    lat: u.lat + (r() - 0.5) * 2 * d,
    lng: u.lng + ((r() - 0.5) * 2 * d) / Math.cos((u.lat * Math.PI) / 180),
  };
}

async function presencePhase(users: User[], tokens: string[]) {
  const r = rng(7);
  const h = {
    webhook: new Latency(),
    nearby: new Latency(),
    status: new Latency(),
    rpc: new Latency(),
    propagationBatch: new Latency(),
    propagationNearby: new Latency(),
  };
  let cached = 0;
  let uncached = 0;
  let degraded = 0;
  let peak = 0;
  let peakActive = 0;
  // Churn as the bridge would see it: sessions of ~20 min (a join and a leave per online user
  // every 1,200 s) and a move every ~5 min while online.
  const onlineUsers = args.users * args.onlineRatio;
  const joinRate = onlineUsers / 1200;
  const moveRate = onlineUsers / 300;
  const churnPerSec = Math.max(20, Math.round(2 * joinRate + moveRate));
  // Each online user looks at who is nearby about every 30 s.
  const nearbyPerSec = args.smoke ? 40 : Math.min(250, Math.max(40, Math.round(onlineUsers / 30)));
  const online = () => users.filter((u) => u.online);
  const probing = new Set<string>();

  // Warm-up: the same mix, not recorded.
  let stop = false;
  let measuring = false;
  const startedAt = performance.now();
  const total = (args.warmup + args.duration) * 1000;
  const done = () => stop;

  let presenceCallsBefore = 0;
  const cronBefore = new Date();
  const bridge = paced(4, 1, done, async () => {
    const events: Record<string, unknown>[] = [];
    for (let i = 0; i < churnPerSec / 4; i++) {
      const at = new Date().toISOString();
      const kind = r() * (2 * joinRate + moveRate);
      const u = kind < joinRate ? pick(users, r) : pick(online(), r);
      if (probing.has(u.id)) continue;
      if (kind >= joinRate && kind < 2 * joinRate) {
        u.online = false;
        events.push({ user_id: u.id, status: "offline", at });
      } else {
        // A join (whoever was picked, usually someone offline) or a move of up to ~300 m.
        const p = jitter(u, r, u.online ? 300 : 50);
        u.online = true;
        u.lat = p.lat;
        u.lng = p.lng;
        events.push({ user_id: u.id, status: "online", at, lat: p.lat, lng: p.lng });
      }
    }
    const res = await timed(measuring ? h.webhook : new Latency(), () => signedPost(events));
    if (res && res.status !== 202) console.error(`webhook answered ${res.status}`);
  });
  const nearby = paced(nearbyPerSec, 6, done, async () => {
    const from = jitter(pick(online(), r), r, 20); // from where an online user is
    const url = `${FUNCTIONS_URL}/nearby-online?lat=${from.lat.toFixed(5)}&lng=${
      from.lng.toFixed(5)
    }&radius_m=5000&limit=50`;
    const t0 = performance.now();
    try {
      const res = await fetch(url, { headers: { authorization: `Bearer ${pick(tokens, r)}` } });
      const body = res.status === 200 ? await res.json() : (await res.arrayBuffer(), undefined);
      if (!measuring) return;
      h.nearby.recordMs(performance.now() - t0, res.status);
      if (res.status >= 500) h.nearby.errors++;
      if (body?.cached) cached++;
      else if (body) uncached++;
      if (body?.degraded) degraded++;
    } catch {
      if (measuring) h.nearby.errors++;
    }
  });
  const status = paced(args.smoke ? 20 : 50, 3, done, async () => {
    const ids = Array.from({ length: 50 }, () => pick(users, r).id);
    await timed(
      measuring ? h.status : new Latency(),
      () =>
        fetch(`${FUNCTIONS_URL}/online-status`, {
          method: "POST",
          headers: {
            authorization: `Bearer ${pick(tokens, r)}`,
            "content-type": "application/json",
          },
          body: JSON.stringify({ user_ids: ids }),
        }),
    );
  });
  const rpc = paced(args.smoke ? 20 : 50, 3, done, async () => {
    const ids = Array.from({ length: 100 }, () => pick(users, r).id);
    const t0 = performance.now();
    try {
      await batchRpc(users[0].id, ids);
      if (measuring) h.rpc.recordMs(performance.now() - t0);
    } catch {
      if (measuring) h.rpc.errors++;
    }
  });
  // Propagation: an offline user comes online; how long until each read path shows it.
  const probe = paced(1, 1, done, async () => {
    // Not one of the viewers (tokens belong to users[0..199]: a caller never sees themself),
    // and kept out of the churn while probed.
    const candidates = users.slice(tokens.length);
    const u = candidates.find((x) => !x.online && r() < 0.05) ?? pick(candidates, r);
    const at = new Date().toISOString();
    u.online = true;
    probing.add(u.id);
    const res = await signedPost([{ user_id: u.id, status: "online", at, lat: u.lat, lng: u.lng }]);
    await res.arrayBuffer();
    if (res.status !== 202) return;
    const accepted = performance.now();
    const viewer = pick(tokens, r);
    let seenBatch = false;
    let seenNearby = false;
    while ((!seenBatch || !seenNearby) && performance.now() - accepted < 5000) {
      if (!seenBatch) {
        const rows = await batchRpc(users[0].id, [u.id]).catch(() => []);
        if (rows[0]?.is_online) {
          seenBatch = true;
          if (measuring) h.propagationBatch.recordMs(performance.now() - accepted);
        }
      }
      if (!seenNearby) {
        const url = `${FUNCTIONS_URL}/nearby-online?lat=${u.lat.toFixed(5)}&lng=${
          u.lng.toFixed(5)
        }&radius_m=2000&limit=500`;
        const nres = await fetch(url, { headers: { authorization: `Bearer ${viewer}` } });
        const body = nres.status === 200
          ? await nres.json()
          : (await nres.arrayBuffer(), undefined);
        if (body?.users?.some((x: { user_id: string }) => x.user_id === u.id)) {
          seenNearby = true;
          if (measuring) h.propagationNearby.recordMs(performance.now() - accepted);
        }
      }
      await sleep(20);
    }
    probing.delete(u.id);
    if (measuring && !seenBatch) h.propagationBatch.errors++;
    if (measuring && !seenNearby) h.propagationNearby.errors++;
  });
  const sampler = (async () => {
    while (!stop) {
      const n = await serverConnections().catch(() => ({ total: 0, active: 0 }));
      if (measuring) peak = Math.max(peak, n.total);
      if (measuring) peakActive = Math.max(peakActive, n.active);
      const elapsed = performance.now() - startedAt;
      progress("presence", Math.min(elapsed, total), total, measuring ? "measuring" : "warm-up");
      await sleep(250);
    }
  })();

  await sleep(args.warmup * 1000);
  presenceCallsBefore = await statementCalls(
    "ingest_presence|flush_presence|expire_stale_presence",
  );
  const measureStart = performance.now();
  measuring = true;
  await sleep(args.duration * 1000);
  measuring = false;
  const minutes = (performance.now() - measureStart) / 60_000;
  const presenceCalls =
    (await statementCalls("ingest_presence|flush_presence|expire_stale_presence")) -
    presenceCallsBefore;
  stop = true;
  await Promise.all([bridge, nearby, status, rpc, probe, sampler]);
  progress("presence", total, total, "done");

  // One interval's flush, timed directly (cron may also have run during the window).
  const f0 = performance.now();
  const [{ changed }] = await direct<
    { changed: number }[]
  >`select public.flush_presence() as changed`;
  const flushMs = Math.round((performance.now() - f0) * 100) / 100;
  const cronRuns = await direct<{ ms: number; status: string }[]>`
    select extract(epoch from end_time - start_time) * 1000 as ms, status from cron.job_run_details d
    join cron.job j using (jobid) where j.jobname = 'presence-flush' and d.start_time >= ${cronBefore}`
    .catch(() => []);

  return {
    endpoints: {
      "presence-webhook": h.webhook.summary(),
      "nearby-online": h.nearby.summary(),
      "online-status": h.status.summary(),
      "get_online_users_batch (PgBouncer)": h.rpc.summary(),
    },
    propagation: {
      get_online_users_batch: h.propagationBatch.summary(),
      "nearby-online": h.propagationNearby.summary(),
    },
    churn_events_per_s: churnPerSec,
    nearby_requests_per_s: nearbyPerSec,
    cache: {
      hits: cached,
      misses: uncached,
      degraded,
      hit_rate: cached + uncached ? cached / (cached + uncached) : 0,
    },
    peak_server_connections: peak,
    peak_active_server_connections: peakActive,
    presence_db_statements: presenceCalls,
    presence_db_statements_per_min: Math.round(presenceCalls / minutes),
    flush: { rows_changed: changed, ms: flushMs, cron_runs: cronRuns },
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
try {
  await loadUsers();
  const users = await sampleUsers(Math.min(args.users, 20_000));
  const tokens = await Promise.all(users.slice(0, 200).map((u) => userJwt(u.id)));
  const presence = await presencePhase(users, tokens);
  const polling = await pollingPhase();
  const files = await writeReport(args, started, presence, polling);
  console.log(await Deno.readTextFile(files.md));
  console.log(`results: ${files.json}, ${files.md}, ${files.svg}`);
} finally {
  if (!args.keep) {
    await direct`delete from auth.users where email like 'bench-%@sltr.bench'`.catch(() => {});
  }
  await Promise.all([direct.end(), pooled.end(), monitor.end()]);
}
