// `make bench-workers`: the functions on one worker against one worker per core, in one run, on
// the same data. For each, nearby-online is driven open-loop at rising rates (10 s a step) until
// its p99 passes 100 ms or the rate is not held; reported per step: the rate asked and achieved,
// p50/p99, errors, and CPU per request of the functions process and of the whole machine. The
// result is the highest rate each held with p99 < 100 ms. The loaded users are kept online (their
// heartbeat refreshed before every step) and counted after every step in Postgres and in the
// live index: a step whose population strayed more than 5 % does not hold. Loads --users profiles (5 % online,
// with bench/read_path.ts --load-only), removes them at the end.
//   deno run -A bench/workers.ts [--users 50000] [--step-seconds 10] [--rates 250,500,...]
import postgres from "postgres";
import { Redis } from "ioredis";
import { cpuSeconds, flag, Latency, numberFlag, paced, sleep } from "./lib.ts";
import { DB_URL, FUNCTIONS_URL, REDIS_URL, ROOT, STATE_DIR } from "../tests/_lib/env.ts";
import { userJwt } from "../tests/_lib/jwt.ts";

const USERS = numberFlag("--users", 50_000);
const STEP_SECONDS = numberFlag("--step-seconds", 10);
const RATES = flag("--rates", "250,500,1000,1500,2000,2500,3000,3500,4000").split(",").map(Number);
const WORKER_COUNTS = [1, navigator.hardwareConcurrency];
const DOMAIN = "read-path.bench";
const P99_LIMIT_MS = 100;

const direct = postgres(DB_URL, { max: 2, onnotice: () => {} });
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
const log = (msg: string) => console.error(`[bench-workers] ${msg}`);

async function sh(args: string[], env: Record<string, string> = {}): Promise<void> {
  const out = await new Deno.Command(args[0], {
    args: args.slice(1),
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.code !== 0) {
    throw new Error(`${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
}

/** The machine's CPU seconds so far (all cores, busy time), from /proc/stat. */
async function machineCpu(): Promise<number> {
  const [cpu] = (await Deno.readTextFile("/proc/stat")).split("\n");
  const f = cpu.split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  return (f.reduce((a, b) => a + b, 0) - idle) / 100;
}

// The loaded users online by the read rule (a newer buffered event wins), and how many of
// them the live index holds online: sampled after every step, so the result shows the
// population it was measured on.
async function onlineInPostgres(): Promise<number> {
  const [{ n }] = await direct<{ n: number }[]>`
    select count(*)::int as n
    from auth.users as u
    join public.profiles as p on p.id = u.id
    left join public.presence_buffer as b on b.user_id = p.id
    where u.email like ${"%@" + DOMAIN}
      and case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        then b.is_online else p.is_online end`;
  return n;
}

async function onlineInRedis(ids: string[]): Promise<number> {
  let n = 0;
  for (let i = 0; i < ids.length; i += 1000) {
    const flags = await redis.smismember("{live}:online", ...ids.slice(i, i + 1000));
    n += flags.filter((f) => f === 1).length;
  }
  return n;
}

/** Keeps the loaded online users online, as the bridge's refresh does: presence-expire takes
 * anyone unseen for 5 minutes offline, and a run of both worker counts lasts about that. */
async function keepAlive(): Promise<void> {
  await direct`
    update public.presence_buffer as b set event_at = now()
    from auth.users as u
    where u.id = b.user_id and u.email like ${"%@" + DOMAIN} and b.is_online`;
}

const functionsPid = async () =>
  Number((await Deno.readTextFile(`${STATE_DIR}/run/functions.pid`)).trim());

interface Step {
  rate: number;
  /** The loaded users online after the step, in Postgres and in the live index. */
  online_postgres: number;
  online_redis: number;
  achieved: number;
  p50_ms: number;
  p99_ms: number;
  errors: number;
  functions_cpu_ms_per_request: number;
  machine_cpu_ms_per_request: number;
  machine_busy_pct: number;
  held: boolean;
}

async function step(
  rate: number,
  readers: { token: string; lat: number; lng: number }[],
  onlineIds: string[],
): Promise<Step> {
  await keepAlive();
  const h = new Latency();
  let stop = false;
  let i = 0;
  const pid = await functionsPid();
  const [f0, m0, t0] = [await cpuSeconds(pid), await machineCpu(), performance.now()];
  const timer = setTimeout(() => stop = true, STEP_SECONDS * 1000);
  await paced(rate, 128, () => stop, async () => {
    const r = readers[i++ % readers.length];
    const started = performance.now();
    try {
      const res = await fetch(
        `${FUNCTIONS_URL}/nearby-online?lat=${r.lat}&lng=${r.lng}&radius_m=5000&limit=50`,
        { headers: { authorization: `Bearer ${r.token}` } },
      );
      await res.arrayBuffer();
      h.recordMs(performance.now() - started, res.status);
      if (res.status !== 200) h.errors++;
    } catch {
      h.errors++;
    }
  });
  clearTimeout(timer);
  const seconds = (performance.now() - t0) / 1000;
  const [f1, m1] = [await cpuSeconds(pid), await machineCpu()];
  const n = Math.max(1, h.count);
  const s = h.summary();
  const achieved = Math.round(h.count / seconds);
  const [online_postgres, online_redis] = [
    await onlineInPostgres(),
    await onlineInRedis(onlineIds),
  ];
  const within = (n: number) => Math.abs(n - onlineIds.length) <= 0.05 * onlineIds.length;
  return {
    rate,
    online_postgres,
    online_redis,
    achieved,
    p50_ms: s.p50_ms,
    p99_ms: s.p99_ms,
    errors: h.errors,
    functions_cpu_ms_per_request: Math.round((f1 - f0) * 1e6 / n) / 1000,
    machine_cpu_ms_per_request: Math.round((m1 - m0) * 1e6 / n) / 1000,
    machine_busy_pct: Math.round((m1 - m0) / seconds / navigator.hardwareConcurrency * 100),
    held: s.p99_ms < P99_LIMIT_MS && achieved >= 0.95 * rate && h.errors === 0 &&
      within(online_postgres) && within(online_redis),
  };
}

async function restartFunctions(workers: number): Promise<void> {
  await sh([`${ROOT}/scripts/stack.sh`, "restart-functions"], {
    FUNCTIONS_WORKERS: String(workers),
  });
  await sleep(1000);
}

let onlineIds: string[] = [];
const results: { workers: number; steps: Step[]; best_rate_p99_under_100ms: number | null }[] = [];
try {
  log(`loading ${USERS} users (5 % online)`);
  await sh([
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}/bench/read_path.ts`,
    "--users",
    String(USERS),
    "--load-only",
  ]);
  await redis.del("{live}:built"); // the index is rebuilt with them on the next read
  const online = await direct<{ id: string; latitude: number; longitude: number }[]>`
    select p.id, p.latitude, p.longitude from public.profiles as p
    join auth.users as u on u.id = p.id
    join public.presence_buffer as b on b.user_id = p.id
    where u.email like ${"%@" + DOMAIN} and b.is_online and p.latitude is not null`;
  onlineIds = online.map((u) => u.id);
  const readers = await Promise.all(
    online.slice(0, 2000).map(async (u) => ({
      token: await userJwt(u.id),
      lat: Math.round(u.latitude * 1e5) / 1e5,
      lng: Math.round(u.longitude * 1e5) / 1e5,
    })),
  );
  for (const workers of WORKER_COUNTS) {
    log(`functions on ${workers} worker(s)`);
    await restartFunctions(workers);
    // Warm: the index built, JWTs verified once in each worker.
    await step(200, readers, onlineIds);
    const steps: Step[] = [];
    for (const rate of RATES) {
      const s = await step(rate, readers, onlineIds);
      steps.push(s);
      log(
        `${workers} worker(s), ${rate}/s: achieved ${s.achieved}/s, p50 ${s.p50_ms} ms, p99 ` +
          `${s.p99_ms} ms, ${s.errors} errors, online ${s.online_postgres} / ${s.online_redis} of ` +
          `${onlineIds.length}, functions CPU ${s.functions_cpu_ms_per_request} ` +
          `ms/request, machine ${s.machine_busy_pct} % busy`,
      );
      if (!s.held) break;
    }
    const held = steps.filter((s) => s.held);
    results.push({
      workers,
      steps,
      best_rate_p99_under_100ms: held.length ? held[held.length - 1].achieved : null,
    });
  }
} finally {
  await restartFunctions(navigator.hardwareConcurrency).catch((e) => log(String(e)));
  await direct`delete from auth.users where email like ${"%@" + DOMAIN}`.catch(() => {});
  await redis.del("{live}:built").catch(() => 0);
  redis.disconnect();
  await direct.end();
}

const samples = results.flatMap((r) => r.steps.flatMap((s) => [s.online_postgres, s.online_redis]));
const online = {
  target_online: onlineIds.length,
  online_measured_min: Math.min(...samples),
  online_measured_max: Math.max(...samples),
  online_held: samples.every((n) => Math.abs(n - onlineIds.length) <= 0.05 * onlineIds.length),
};
const date = new Date().toISOString().slice(0, 10);
const out = `${ROOT}/bench/results/${date}-workers`;
const md = [
  `# Functions workers: 1 against ${navigator.hardwareConcurrency} (${date}, ${USERS} users, 5 % online)`,
  "",
  `nearby-online, open loop, ${STEP_SECONDS} s a step; a step holds when p99 < ${P99_LIMIT_MS} ms, ` +
  "at least 95 % of the rate is achieved and nothing fails. Everything (Postgres, Redis, the " +
  "functions, the load generator) shares the machine's cores.",
  "",
  `Online population (the loaded users, Postgres and the live index, sampled after every step): ` +
  `${online.online_measured_min} .. ${online.online_measured_max} of ${online.target_online}` +
  (online.online_held ? "." : " — **not held**: a step that strays beyond 5 % does not count."),
  "",
  "| workers | rate asked | achieved | p50 | p99 | errors | online (Postgres / index) | functions CPU / request | machine CPU / request | machine busy | held |",
  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ...results.flatMap((r) =>
    r.steps.map((s) =>
      `| ${r.workers} | ${s.rate}/s | ${s.achieved}/s | ${s.p50_ms} ms | ${s.p99_ms} ms | ${s.errors} | ${s.online_postgres} / ${s.online_redis} | ${s.functions_cpu_ms_per_request} ms | ${s.machine_cpu_ms_per_request} ms | ${s.machine_busy_pct} % | ${
        s.held ? "yes" : "**no**"
      } |`
    )
  ),
  "",
  ...results.map((r) =>
    `- ${r.workers} worker(s): highest rate held with p99 < ${P99_LIMIT_MS} ms: ${
      r.best_rate_p99_under_100ms ?? "none"
    }/s`
  ),
  "",
].join("\n");
await Deno.writeTextFile(
  `${out}.json`,
  JSON.stringify({ date, users: USERS, ...online, results }, null, 2),
);
await Deno.writeTextFile(`${out}.md`, md);
console.log(md);

if (!online.online_held) Deno.exit(1);
