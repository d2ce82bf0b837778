// The read path's latency at scale: get_online_users_batch, nearby_online_users and the
// nearby-online / online-status functions (from the live index), plus the nearby search done
// three ways on the same data (B-tree bounding box, PostGIS KNN on the partial GiST index,
// Redis GEOSEARCH). Loads --users profiles (5% online, and a presence buffer as the presence
// pipeline keeps it) into the running stack, measures over persistent connections after a
// warm-up, prints a table, writes bench/results/read_path-<users>.json and removes what it
// loaded (unless --keep).
//   deno run -A bench/read_path.ts --users 50000 [--seconds 8] [--keep | --load-only]
import postgres from "postgres";
import { Redis } from "ioredis";
import * as hdr from "hdr-histogram-js";
import { signJwt } from "../scripts/token.ts";
import { DB_URL, FUNCTIONS_URL, JWT_SECRET, POOLER_URL, REDIS_URL } from "../tests/_lib/env.ts";
import { freePort } from "../tests/_lib/ports.ts";
import { rng } from "../tests/_lib/rng.ts";

// ---- settings ------------------------------------------------------------------------------

const args = { users: 50_000, seconds: 8, keep: false, onlineRatio: 0.05, loadOnly: false };
for (let i = 0; i < Deno.args.length; i++) {
  const [flag, inline] = Deno.args[i].split("=", 2);
  const value = () => inline ?? Deno.args[++i];
  if (flag === "--users") args.users = Number(value());
  else if (flag === "--seconds") args.seconds = Number(value());
  else if (flag === "--online-ratio") args.onlineRatio = Number(value());
  else if (flag === "--keep") args.keep = true;
  else if (flag === "--load-only") args.loadOnly = args.keep = true;
  else throw new Error(`unknown argument ${Deno.args[i]}`);
}
if (!(args.users >= 1000) || !(args.seconds > 0)) throw new Error("--users >= 1000, --seconds > 0");

const DOMAIN = "read-path.bench";
const RADIUS = 5000;
const LIMIT = 50;

const direct = postgres(DB_URL, { max: 2, onnotice: () => {} });
// What the functions do: through the transaction-mode pooler, no prepared statements.
const pooled = postgres(POOLER_URL, { max: 1, prepare: false, onnotice: () => {} });
// The three-way comparison times the searches themselves: prepared statements on a direct
// connection, so planning (the inlined grid expression makes it ~1 ms) is paid once.
const prepared = postgres(DB_URL, { max: 1, prepare: true, onnotice: () => {} });
const redis = new Redis(REDIS_URL);

// Deterministic (tests/_lib/rng.ts), so every run asks the same questions.
const random = rng(42);
const pick = <T>(xs: T[]) => xs[Math.floor(random() * xs.length)];
const userId = (n: number) => `c0ffee00-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;

function log(msg: string): void {
  console.error(`[read-path bench] ${msg}`);
}

// ---- measuring -----------------------------------------------------------------------------

interface Summary {
  count: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

/** Runs `op` back to back (one in flight, like one client) for `seconds`, after a warm-up. */
async function measure(
  name: string,
  op: () => Promise<boolean | void>,
  seconds = args.seconds,
): Promise<Summary> {
  const warmUntil = performance.now() + Math.min(2000, seconds * 250);
  while (performance.now() < warmUntil) await op();
  const h = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000,
    numberOfSignificantValueDigits: 3,
  });
  const until = performance.now() + seconds * 1000;
  while (performance.now() < until) {
    const t0 = performance.now();
    const keep = await op();
    const us = Math.max(1, Math.round((performance.now() - t0) * 1000));
    if (keep !== false) h.recordValue(us);
  }
  const ms = (v: number) => Math.round(v / 10) / 100;
  const s = {
    count: h.totalCount,
    p50_ms: ms(h.getValueAtPercentile(50)),
    p99_ms: ms(h.getValueAtPercentile(99)),
    max_ms: ms(h.maxValue),
  };
  log(`${name}: p50 ${s.p50_ms} ms, p99 ${s.p99_ms} ms (${s.count} calls)`);
  return s;
}

// ---- data ----------------------------------------------------------------------------------

// 70% of users around five cities (~8 km spread), 30% anywhere in a 1,500 x 1,300 km box.
const CITIES = [[52.52, 13.405], [48.857, 2.352], [51.507, -0.128], [41.9, 12.5], [52.37, 4.9]];

// In batches, retried on deadlock: the presence jobs (flush, expire) lock the same profiles
// and buffer rows in their own order, and one huge delete would collide with them.
async function cleanup(): Promise<void> {
  const t0 = performance.now();
  let removed = 0;
  for (let attempt = 0;;) {
    try {
      const [{ n }] = await direct<{ n: number }[]>`
        with gone as (
          delete from auth.users
          where id in (select id from auth.users where email like ${"%@" + DOMAIN} limit 20000)
          returning 1)
        select count(*)::int as n from gone`;
      removed += n;
      if (n === 0) break;
    } catch (e) {
      if ((e as { code?: string }).code !== "40P01" || ++attempt > 20) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  if (removed > 0) {
    await direct`vacuum analyze auth.users`;
    await direct`vacuum analyze public.profiles`;
    await direct`vacuum analyze public.presence_buffer`;
    await redis.del("{live}:built"); // the live index is rebuilt without them
    log(`removed ${removed} bench users in ${Math.round(performance.now() - t0)} ms`);
  }
}

async function load(): Promise<void> {
  const t0 = performance.now();
  const cities = CITIES.map(([lat, lng]) => `(${lat}, ${lng})`).join(", ");
  await direct.begin(async (tx) => {
    await tx`select setseed(0.4242)`;
    await tx.unsafe(`
      create temporary table loading on commit drop as
      select n, ('c0ffee00-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid as id,
             random() as r_city, random() as r_online, random() as r_buffer,
             sqrt(-2 * ln(1 - random())) as radius, 2 * pi() * random() as angle,
             random() as u1, random() as u2
      from generate_series(1, ${args.users}) as n`);
    await tx.unsafe(`
      insert into auth.users (id, aud, role, email)
      select id, 'authenticated', 'authenticated', 'bench-' || n || '@${DOMAIN}' from loading`);
    await tx.unsafe(`
      insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
      select l.id, 'Bench ' || l.n, l.r_online < ${args.onlineRatio},
             case when l.r_city < 0.7 then c.lat + l.radius * cos(l.angle) * 0.072
                  else 43 + l.u1 * 12 end,
             case when l.r_city < 0.7 then c.lng + l.radius * sin(l.angle) * 0.072 / cos(radians(c.lat))
                  else -2 + l.u2 * 20 end,
             now() - interval '1 minute'
      from loading as l
      join (select row_number() over () - 1 as i, lat, lng
            from (values ${cities}) as v (lat, lng)) as c
        on c.i = floor(l.r_city / 0.7 * ${CITIES.length})::int % ${CITIES.length}`);
    // The buffer as the presence pipeline keeps it between flushes: a heartbeat row per online
    // user, 3% of them just went offline, 5% moved by ~700 m; 0.5% of offline users just came
    // online, a tenth of those without a location.
    await tx.unsafe(`
      insert into public.presence_buffer (user_id, is_online, event_at, latitude, longitude)
      select p.id, l.r_buffer >= 0.03, now(),
             p.latitude + case when l.r_buffer between 0.03 and 0.08 then 0.0063 else 0 end,
             p.longitude
      from loading as l join public.profiles as p on p.id = l.id
      where p.is_online`);
    await tx.unsafe(`
      insert into public.presence_buffer (user_id, is_online, event_at, latitude, longitude)
      select p.id, true, now(),
             case when l.r_buffer >= 0.1 then p.latitude end, case when l.r_buffer >= 0.1 then p.longitude end
      from loading as l join public.profiles as p on p.id = l.id
      where not p.is_online and l.r_online > 0.995`);
  });
  await direct`analyze auth.users`;
  await direct`analyze public.profiles`;
  await direct`analyze public.presence_buffer`;
  const [c] = await direct<{ online: number; buffered: number }[]>`
    select (select count(*)::int from public.profiles p join auth.users u on u.id = p.id
            where u.email like ${"%@" + DOMAIN} and p.is_online) as online,
           (select count(*)::int from public.presence_buffer) as buffered`;
  log(
    `loaded ${args.users} users (${c.online} online, ${c.buffered} buffer rows) in ${
      Math.round((performance.now() - t0) / 100) / 10
    } s`,
  );
}

// ---- the three nearby searches, on the flushed profiles ------------------------------------

// B-tree bounding box on (latitude, longitude, is_online) where is_online, then the exact
// snapped distance for every candidate in the box. st_distance, not <->, so the planner
// cannot turn it into the GiST search.
async function nearbyBtree(lat: number, lng: number): Promise<number> {
  const padLat = (RADIUS + 500) / 110_000;
  const padLng = padLat / Math.cos(((Math.abs(lat) + padLat) * Math.PI) / 180);
  const rows = await prepared`
    select s.id, s.display_name, s.distance
    from (
      select p.id, p.display_name,
             extensions.st_distance(public.snap_location(p.latitude, p.longitude),
               extensions.st_point(${lng}::float8, ${lat}::float8, 4326)::extensions.geography, false) as distance
      from public.profiles as p
      where p.is_online
        and p.latitude between ${lat - padLat}::float8 and ${lat + padLat}::float8
        and p.longitude between ${lng - padLng}::float8 and ${lng + padLng}::float8
    ) as s
    where s.distance <= ${RADIUS}
    order by s.distance
    limit ${LIMIT}`;
  return rows.length;
}

// PostGIS KNN on the partial GiST index of snapped locations.
async function nearbyGist(lat: number, lng: number): Promise<number> {
  const rows = await prepared`
    select p.id, p.display_name,
           public.snap_location(p.latitude, p.longitude) operator(extensions.<->)
             extensions.st_point(${lng}::float8, ${lat}::float8, 4326)::extensions.geography as distance
    from public.profiles as p
    where p.is_online
      and extensions.st_dwithin(public.snap_location(p.latitude, p.longitude),
        extensions.st_point(${lng}::float8, ${lat}::float8, 4326)::extensions.geography, ${RADIUS}, false)
    order by public.snap_location(p.latitude, p.longitude) operator(extensions.<->)
      extensions.st_point(${lng}::float8, ${lat}::float8, 4326)::extensions.geography
    limit ${LIMIT}`;
  return rows.length;
}

async function compare(points: { lat: number; lng: number }[]) {
  // A private Redis for the geo set, so the shared one never holds 50,000 extra members.
  const port = freePort();
  const server = new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let geo: Redis | undefined;
  try {
    for (let i = 0;; i++) {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        break;
      } catch (e) {
        if (i > 50) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    geo = new Redis(`redis://127.0.0.1:${port}`);
    const t0 = performance.now();
    const online = await direct<{ id: string; lng: number; lat: number }[]>`
      select p.id,
             extensions.st_x(public.snap_location(p.latitude, p.longitude)::extensions.geometry) as lng,
             extensions.st_y(public.snap_location(p.latitude, p.longitude)::extensions.geometry) as lat
      from public.profiles as p where p.is_online and p.latitude is not null`;
    for (let i = 0; i < online.length; i += 5000) {
      const args: (string | number)[] = [];
      for (const u of online.slice(i, i + 5000)) args.push(u.lng, u.lat, u.id);
      await geo.geoadd("online", ...args);
    }
    log(`GEOADD ${online.length} online users in ${Math.round(performance.now() - t0)} ms`);

    const plan = await prepared.unsafe(
      `explain (costs off)
       select s.id from (select p.id, extensions.st_distance(public.snap_location(p.latitude, p.longitude),
         extensions.st_point(13.4, 52.5, 4326)::extensions.geography, false) as distance
       from public.profiles as p where p.is_online and p.latitude between 52.45 and 52.55
         and p.longitude between 13.3 and 13.5) as s where s.distance <= 5000 order by s.distance limit 50`,
    );
    const usesBtree = plan.some((r) =>
      String(Object.values(r)[0]).includes("idx_profiles_latitude_longitude_is_online")
    );
    log(`B-tree variant uses idx_profiles_latitude_longitude_is_online: ${usesBtree}`);

    const found = { btree: 0, gist: 0, geo: 0 };
    const result = {
      btree_bbox: await measure("compare: B-tree bounding box", async () => {
        found.btree += await nearbyBtree(...latLng(pick(points)));
      }),
      gist_knn: await measure("compare: PostGIS KNN (partial GiST)", async () => {
        found.gist += await nearbyGist(...latLng(pick(points)));
      }),
      redis_geosearch: await measure("compare: Redis GEOSEARCH", async () => {
        const p = pick(points);
        const rows = await geo!.call(
          "GEOSEARCH",
          "online",
          "FROMLONLAT",
          p.lng,
          p.lat,
          "BYRADIUS",
          RADIUS,
          "m",
          "ASC",
          "COUNT",
          LIMIT,
          "WITHDIST",
        ) as unknown[];
        found.geo += rows.length;
      }),
      btree_uses_its_index: usesBtree,
    };
    // Rows per search (including warm-up), to show the three do the same work.
    const calls = (m: Summary) => m.count;
    log(
      `rows per search: B-tree ${(found.btree / calls(result.btree_bbox)).toFixed(1)}, GiST ${
        (found.gist / calls(result.gist_knn)).toFixed(1)
      }, GEOSEARCH ${(found.geo / calls(result.redis_geosearch)).toFixed(1)} (warm-up included)`,
    );
    return result;
  } finally {
    geo?.disconnect();
    try {
      server.kill("SIGTERM");
    } catch {
      // gone
    }
    await server.status;
  }
}

const latLng = (p: { lat: number; lng: number }): [number, number] => [p.lat, p.lng];

// ---- main ----------------------------------------------------------------------------------

async function main() {
  log(`${args.users} users, ${args.onlineRatio * 100}% online, ${args.seconds} s per measurement`);
  await cleanup();
  await load();
  if (args.loadOnly) return;

  // Where people ask from: 80% next to an online user (the dense places), 20% anywhere.
  const online = await direct<{ id: string; lat: number; lng: number }[]>`
    select p.id, p.latitude as lat, p.longitude as lng
    from public.profiles as p join auth.users as u on u.id = p.id
    where u.email like ${"%@" + DOMAIN} and p.is_online`;
  const points = Array.from({ length: 5000 }, () => {
    if (random() < 0.8) {
      const u = pick(online);
      return { lat: u.lat + (random() - 0.5) * 0.005, lng: u.lng + (random() - 0.5) * 0.008 };
    }
    return { lat: 43 + random() * 12, lng: -2 + random() * 20 };
  });
  const tokens = await Promise.all(
    Array.from(
      { length: 200 },
      () =>
        signJwt({ role: "authenticated", aud: "authenticated" }, JWT_SECRET, {
          sub: pick(online).id,
          expiresIn: "2h",
        }),
    ),
  );
  const ids = (n: number) =>
    Array.from({ length: n }, () => userId(1 + Math.floor(random() * args.users)));

  const rpc = {
    get_online_users_batch_100: await measure("get_online_users_batch, 100 ids", async () => {
      await pooled`select * from public.get_online_users_batch(${ids(100)}::uuid[])`;
    }),
    get_online_users_batch_10000: await measure("get_online_users_batch, 10,000 ids", async () => {
      await pooled`select * from public.get_online_users_batch(${ids(10_000)}::uuid[])`;
    }),
    nearby_online_users: await measure("nearby_online_users (5 km, 50)", async () => {
      const p = pick(points);
      await pooled`select * from public.nearby_online_users(${p.lat}::float8, ${p.lng}::float8, ${RADIUS}, ${LIMIT})`;
    }),
    // As PostgREST calls it: role and claims set in the same transaction.
    nearby_online_users_as_postgrest: await measure(
      "nearby_online_users, as PostgREST",
      async () => {
        const p = pick(points);
        await pooled.begin(async (tx) => {
          await tx`select set_config('role', 'authenticated', true),
                        set_config('request.jwt.claims', ${
            JSON.stringify({ sub: pick(online).id, role: "authenticated" })
          }, true)`;
          await tx`select * from public.nearby_online_users(${p.lat}::float8, ${p.lng}::float8, ${RADIUS}, ${LIMIT})`;
        });
      },
    ),
  };

  // The functions: cold = every request a different query cell (a miss), warm = a few hundred
  // cells asked again and again (hits). Only answers with the expected `cached` are kept.
  const ask = async (p: { lat: number; lng: number }, want: boolean): Promise<boolean> => {
    const res = await fetch(
      `${FUNCTIONS_URL}/nearby-online?lat=${p.lat.toFixed(6)}&lng=${
        p.lng.toFixed(6)
      }&radius_m=${RADIUS}&limit=${LIMIT}`,
      { headers: { authorization: `Bearer ${pick(tokens)}` } },
    );
    if (res.status !== 200) {
      throw new Error(`nearby-online answered ${res.status}: ${await res.text()}`);
    }
    const body = await res.json();
    return body.cached === want;
  };
  // The profiles were loaded straight into Postgres: the live index is rebuilt from them.
  await redis.del("{live}:built", "{live}:rebuilding");
  while (!(await ask(pick(points), true))) await new Promise((r) => setTimeout(r, 200));
  const functions = {
    nearby_online_index: await measure("nearby-online, from the live index", async () => {
      return await ask(pick(points), true);
    }),
    online_status_100: await measure("online-status, 100 ids", async () => {
      const res = await fetch(`${FUNCTIONS_URL}/online-status`, {
        method: "POST",
        headers: { authorization: `Bearer ${pick(tokens)}`, "content-type": "application/json" },
        body: JSON.stringify({ user_ids: ids(100) }),
      });
      if (res.status !== 200) throw new Error(`online-status answered ${res.status}`);
      await res.arrayBuffer();
    }),
  };

  const comparison = await compare(points);

  const results = {
    at: new Date().toISOString(),
    users: args.users,
    online_ratio: args.onlineRatio,
    seconds_per_measurement: args.seconds,
    query: { radius_m: RADIUS, limit: LIMIT },
    machine: `${navigator.hardwareConcurrency} cores, ${Deno.build.os}`,
    // Other work on the machine while measuring (1, 5, 15 minute load averages at the end).
    load_average: (await Deno.readTextFile("/proc/loadavg").catch(() => "")).split(" ").slice(0, 3),
    rpc,
    functions,
    nearby_comparison: comparison,
  };
  await Deno.mkdir("bench/results", { recursive: true });
  const file = `bench/results/read_path-${args.users}.json`;
  await Deno.writeTextFile(file, JSON.stringify(results, null, 2) + "\n");

  const row = (name: string, s: Summary) => `| ${name} | ${s.p50_ms} | ${s.p99_ms} | ${s.count} |`;
  console.log(
    `\n### Read path, ${args.users.toLocaleString("en")} profiles, ${
      args.onlineRatio * 100
    }% online\n`,
  );
  console.log("| operation | p50 ms | p99 ms | calls |\n| --- | ---: | ---: | ---: |");
  console.log(row("get_online_users_batch (100 ids)", rpc.get_online_users_batch_100));
  console.log(row("get_online_users_batch (10,000 ids)", rpc.get_online_users_batch_10000));
  console.log(row("nearby_online_users (5 km, 50)", rpc.nearby_online_users));
  console.log(
    row(
      "nearby_online_users, role + claims in a transaction",
      rpc.nearby_online_users_as_postgrest,
    ),
  );
  console.log(row("nearby-online function (live index)", functions.nearby_online_index));
  console.log(row("online-status function (100 ids)", functions.online_status_100));
  console.log(row("nearby core: B-tree bounding box", comparison.btree_bbox));
  console.log(row("nearby core: PostGIS KNN, partial GiST", comparison.gist_knn));
  console.log(row("nearby core: Redis GEOSEARCH", comparison.redis_geosearch));
  console.log(`\nwritten to ${file}`);
}

try {
  await main();
} finally {
  if (!args.keep) await cleanup().catch((e) => log(`cleanup failed: ${e}`));
  redis.disconnect();
  await pooled.end({ timeout: 1 });
  await prepared.end({ timeout: 1 });
  await direct.end({ timeout: 1 });
}
