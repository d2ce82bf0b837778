// `make bench-blocks`: what the safety controls cost a nearby read from the live index, measured
// in one run on one population: N users (default 20,000, 10 % online, seeded as `make bench`
// seeds them) read nearby-online at a fixed rate, first with no controls at all, then with
// every user blocking 20 others (one online user in a hundred blocking 5,000), 3 % incognito and
// 10 % hiding their distance. Per phase: requests, the rate achieved, p50/p99, CPU per request of
// the functions and of Redis, Redis's memory, and how many answers waited for Postgres. It
// checks its own workload: exit 1 (no result written) when a phase missed its rate by more than
// 5 % or the index did not answer.
//   deno run -A bench/blocks.ts --users 20000 --rate 200 --seconds 30
import postgres from "postgres";
import { Redis } from "ioredis";
import { localUserJwt } from "../scripts/token.ts";
import { cpuSeconds, Latency, numberFlag, paced, progress, sleep } from "./lib.ts";
import { ID_PREFIX, idOf, seedUsers } from "./population.ts";
import { DB_URL, FUNCTIONS_URL, REDIS_URL, STATE_DIR as STATE } from "../tests/_lib/env.ts";
import { BUILT, PRIVACY_SINCE } from "../functions/_shared/live_index.ts";

const USERS = numberFlag("users", 20_000);
const ONLINE = Math.round(USERS * numberFlag("online-ratio", 0.1));
const RATE = numberFlag("rate", 200);
const SECONDS = numberFlag("seconds", 30);
const BLOCKS = numberFlag("blocks-per-user", 20);
const HEAVY = numberFlag("heavy-blocks", 5000);
const OUT = Deno.args.includes("--out")
  ? Deno.args[Deno.args.indexOf("--out") + 1]
  : "bench/results";
const log = (msg: string) => console.error(`[blocks bench] ${msg}`);

const sql = postgres(DB_URL, { max: 2, onnotice: () => {} });
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
const pid = async (file: string) =>
  Number((await Deno.readTextFile(`${STATE}/run/${file}`).catch(() => "0")).split("\n")[0]);
const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await redis.info("memory"))![1]);

log(`seeding ${USERS} users, ${ONLINE} online`);
await seedUsers(sql, USERS, ONLINE);
await sql`analyze public.profiles`;
const where = await sql<{ lat: number; lng: number }[]>`
  select latitude as lat, longitude as lng from public.profiles
  where id between ${idOf(1)}::uuid and ${idOf(ONLINE)}::uuid order by id`;
await redis.del(BUILT, "{live}:rebuilding");
const tokens = await Promise.all(
  Array.from({ length: ONLINE }, (_, i) => localUserJwt(idOf(i + 1))),
);
while (await redis.get(BUILT) === null) {
  await (await fetch(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`, {
    headers: { authorization: `Bearer ${tokens[0]}` },
  })).arrayBuffer();
  await sleep(500);
}

interface Phase {
  name: string;
  requests: number;
  achieved_per_second: number;
  latency: ReturnType<Latency["summary"]>;
  not_from_the_index: number;
  cpu_ms_per_request: { functions: number; redis: number; both: number };
  redis_used_memory_mib: number;
  late_calls: number;
}

async function phase(name: string): Promise<Phase> {
  const latency = new Latency();
  let notCached = 0;
  let late = 0;
  let i = 0;
  const [f0, r0] = [
    await cpuSeconds(await pid("functions.pid")),
    await cpuSeconds(await pid("redis.pid")),
  ];
  const started = performance.now();
  const until = started + SECONDS * 1000;
  const ticker = setInterval(
    () => progress(name, Math.round(performance.now() - started), SECONDS * 1000),
    1000,
  );
  await paced(RATE, 16, () => performance.now() > until, async () => {
    const n = (i++ * 7919) % ONLINE;
    const t0 = performance.now();
    const res = await fetch(
      `${FUNCTIONS_URL}/nearby-online?lat=${where[n].lat}&lng=${
        where[n].lng
      }&radius_m=5000&limit=50`,
      { headers: { authorization: `Bearer ${tokens[n]}` } },
    );
    const body = await res.json().catch(() => ({}));
    latency.recordMs(performance.now() - t0, res.status);
    if (res.status >= 500) latency.errors++;
    if (!body.cached) notCached++;
  }, () => late++);
  clearInterval(ticker);
  const seconds = (performance.now() - started) / 1000;
  const f = (await cpuSeconds(await pid("functions.pid"))) - f0;
  const r = (await cpuSeconds(await pid("redis.pid"))) - r0;
  const count = latency.count;
  const ms = (s: number) => Math.round((s * 1000 / count) * 1000) / 1000;
  return {
    name,
    requests: count,
    achieved_per_second: Math.round(count / seconds),
    latency: latency.summary(),
    not_from_the_index: notCached,
    cpu_ms_per_request: { functions: ms(f), redis: ms(r), both: ms(f + r) },
    redis_used_memory_mib: Math.round(await usedMemory() / 1048576 * 10) / 10,
    late_calls: late,
  };
}

const without = await phase("no controls");

log(`blocks: ${BLOCKS} a user, ${HEAVY} for one online user in 100; 3 % incognito, 10 % hidden`);
const memoryBefore = await usedMemory();
await sql`
  insert into public.blocks (blocker_id, blocked_id)
  select (${ID_PREFIX} || lpad(to_hex(n), 12, '0'))::uuid,
         (${ID_PREFIX} || lpad(to_hex(t), 12, '0'))::uuid
  from generate_series(1, ${USERS}::int) as n
  cross join lateral (
    select distinct 1 + floor(random() * ${USERS}::int)::int as t
    from generate_series(1, case when n <= ${ONLINE}::int and n % 100 = 0
      then ${HEAVY}::int else ${BLOCKS}::int end)
  ) as k
  where k.t <> n
  on conflict do nothing`;
await sql`
  update public.profiles set incognito = (n % 33 = 0), show_distance = (n % 10 <> 1)
  from (select (${ID_PREFIX} || lpad(to_hex(n), 12, '0'))::uuid as id, n
        from generate_series(1, ${USERS}::int) as n) as s
  where profiles.id = s.id and (s.n % 33 = 0 or s.n % 10 = 1)`;
const [{ blocks }] = await sql<{ blocks: number }[]>`
  select count(*)::int as blocks from public.blocks
  where blocker_id between ${idOf(1)}::uuid and ${idOf(USERS)}::uuid`;
// The index loads it all (a full sync, as after a rebuild), then the second phase.
await redis.del(PRIVACY_SINCE);
const syncStarted = performance.now();
while (await redis.get(PRIVACY_SINCE) === null) {
  await (await fetch(`${FUNCTIONS_URL}/nearby-online?lat=${where[1].lat}&lng=${where[1].lng}`, {
    headers: { authorization: `Bearer ${tokens[1]}` },
  })).arrayBuffer();
  await sleep(200);
}
const syncMs = Math.round(performance.now() - syncStarted);
const memoryAfter = await usedMemory();
const withControls = await phase("with controls");

// Leave the stack as it was: no bench blocks or settings, and the index told.
await sql`delete from public.blocks where blocker_id between ${idOf(1)}::uuid and ${
  idOf(USERS)
}::uuid`;
await sql`update public.profiles set incognito = false, show_distance = true
          where id between ${idOf(1)}::uuid and ${idOf(USERS)}::uuid`;
await redis.del(PRIVACY_SINCE);

const held = [without, withControls].every((p) =>
  p.achieved_per_second >= RATE * 0.95 && p.not_from_the_index <= p.requests * 0.01
);
const report = {
  when: new Date().toISOString(),
  machine: `${navigator.hardwareConcurrency} cores, the whole stack and the load generator`,
  users: USERS,
  online: ONLINE,
  rate_per_second: RATE,
  seconds_per_phase: SECONDS,
  blocks: { rows: blocks, per_user: BLOCKS, heavy_users_block: HEAVY },
  full_privacy_sync_ms: syncMs,
  redis_extra_memory_mib: Math.round((memoryAfter - memoryBefore) / 1048576 * 10) / 10,
  phases: [without, withControls],
  cpu_per_request_increase: Math.round(
    (withControls.cpu_ms_per_request.both / without.cpu_ms_per_request.both - 1) * 1000,
  ) / 1000,
  workload_held: held,
};
console.log(JSON.stringify(report, null, 2));
await sql.end();
redis.disconnect();
if (!held) {
  log("the workload did not hold (rate or index): no result written");
  Deno.exit(1);
}
const file = `${OUT}/blocks-${report.when.slice(0, 10)}-${USERS}.json`;
await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
log(`written to ${file}`);
