// Benchmark plumbing: arguments, HdrHistogram percentiles, a progress bar, rate pacing.
import * as hdr from "hdr-histogram-js";
import { type Limits, type Plan, PLANS } from "../realtime/config.ts";
import { sleep } from "../tests/_lib/harness.ts";

export { sleep };

export interface Args {
  users: number;
  onlineRatio: number;
  duration: number;
  warmup: number;
  out: string;
  smoke: boolean;
  keep: boolean;
  pollingDuration: number;
}

export function parseArgs(argv: string[]): Args {
  const args: Args = {
    users: 50_000,
    onlineRatio: 0.1,
    duration: 60,
    warmup: 5,
    out: "bench/results",
    smoke: false,
    keep: false,
    pollingDuration: -1,
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split("=", 2);
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case "--users":
        args.users = Number(value());
        break;
      case "--online-ratio":
        args.onlineRatio = Number(value());
        break;
      case "--duration":
        args.duration = Number(value());
        break;
      case "--warmup":
        args.warmup = Number(value());
        break;
      case "--polling-duration":
        args.pollingDuration = Number(value());
        break;
      case "--out":
        args.out = value();
        break;
      case "--smoke":
        args.smoke = true;
        break;
      case "--keep":
        args.keep = true;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (
    !(args.users >= 100) || !(args.onlineRatio > 0 && args.onlineRatio <= 1) || !(args.duration > 0)
  ) {
    throw new Error("--users >= 100, 0 < --online-ratio <= 1, --duration > 0");
  }
  if (args.pollingDuration < 0) args.pollingDuration = args.duration;
  return args;
}

/** The value after `--name` on the command line, else `fallback` (bench/push.ts, realtime.ts). */
export function flag(name: string, fallback: string, argv = Deno.args): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
}

/** A number after `--name` on the command line, else `fallback`. */
export function numberFlag(name: string, fallback: number, argv = Deno.args): number {
  return Number(flag(name, String(fallback), argv));
}

/** Latencies in microseconds, reported in milliseconds. */
export class Latency {
  private h = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 120_000_000,
    numberOfSignificantValueDigits: 3,
  });
  errors = 0;
  statuses: Record<string, number> = {};

  recordMs(ms: number, status = 200): void {
    this.h.recordValue(Math.max(1, Math.round(ms * 1000)));
    this.statuses[status] = (this.statuses[status] ?? 0) + 1;
  }

  get count(): number {
    return this.h.totalCount;
  }

  pct(p: number): number {
    return this.h.totalCount ? Math.round(this.h.getValueAtPercentile(p) / 10) / 100 : 0;
  }

  summary(): {
    count: number;
    errors: number;
    p50_ms: number;
    p95_ms: number;
    p99_ms: number;
    max_ms: number;
    statuses: Record<string, number>;
  } {
    return {
      count: this.count,
      errors: this.errors,
      p50_ms: this.pct(50),
      p95_ms: this.pct(95),
      p99_ms: this.pct(99),
      max_ms: this.h.totalCount ? Math.round(this.h.maxValue / 10) / 100 : 0,
      statuses: this.statuses,
    };
  }
}

/** Runs `fn` on `workers` concurrent loops at about `perSecond` in total until `until`;
 * `onLate` hears of every call that started behind its schedule (the rate was not held). */
export async function paced(
  perSecond: number,
  workers: number,
  until: () => boolean,
  fn: () => Promise<void>,
  onLate: () => void = () => {},
): Promise<void> {
  const interval = (1000 * workers) / perSecond;
  await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      await sleep((interval * w) / workers);
      let next = performance.now();
      while (!until()) {
        await fn();
        next += interval;
        const wait = next - performance.now();
        if (wait > 0) await sleep(wait);
        else {
          next = performance.now(); // behind schedule: do not burst to catch up
          if (wait < -100) onLate();
        }
      }
    }),
  );
}

export function progress(label: string, done: number, total: number, extra = ""): void {
  if (!Deno.stderr.isTerminal() && done < total && Math.floor(done) % 10 !== 0) return;
  const width = 30;
  const filled = Math.min(width, Math.round((done / total) * width));
  const bar = "#".repeat(filled) + "-".repeat(width - filled);
  const line = `${label.padEnd(10)} [${bar}] ${
    String(Math.round((done / total) * 100)).padStart(3)
  }% ${extra}`;
  const enc = new TextEncoder();
  Deno.stderr.writeSync(enc.encode(Deno.stderr.isTerminal() ? `\r${line}\x1b[K` : `${line}\n`));
  if (done >= total && Deno.stderr.isTerminal()) Deno.stderr.writeSync(enc.encode("\n"));
}

/** CPU time (user + system, seconds) a process has used so far, from /proc (Linux). */
export async function cpuSeconds(pid: number | "self"): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  // Fields after the command name (which may contain spaces) start after the last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks
}

/** Resident memory of a process in MiB, from /proc. */
export async function rssMiB(pid: number | "self"): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

// Several cities, weighted; users are scattered around each with a ~5 km standard deviation.
export const CITIES = [
  { name: "Berlin", lat: 52.52, lng: 13.405 },
  { name: "Paris", lat: 48.857, lng: 2.352 },
  { name: "London", lat: 51.507, lng: -0.128 },
  { name: "New York", lat: 40.713, lng: -74.006 },
  { name: "Sao Paulo", lat: -23.55, lng: -46.633 },
  { name: "Berlin", lat: 52.52, lng: 13.405 },
];

/** CPU time (seconds) of a process and all its children, the exited ones included (a parent
 * accounts its reaped children in cutime/cstime): Postgres's postmaster and its backends. */
export async function treeCpuSeconds(pid: number): Promise<number> {
  const fields = async (p: number | string) => {
    const stat = await Deno.readTextFile(`/proc/${p}/stat`).catch(() => "");
    return stat ? stat.slice(stat.lastIndexOf(")") + 2).split(" ") : undefined;
  };
  const root = await fields(pid);
  if (!root) return 0;
  let ticks = Number(root[11]) + Number(root[12]) + Number(root[13]) + Number(root[14]);
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === pid) continue;
    const f = await fields(e.name);
    if (f && Number(f[1]) === pid) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / 100;
}

/** A Realtime load in the units hosted counts and bills (realtime/config.ts, docs/realtime.md):
 * messages once where a broadcast enters and once per delivery, averaged per second. */
export interface RealtimeLoad {
  connections?: number;
  messagesPerSecond?: number;
  joinsPerSecond?: number;
  presenceMessagesPerSecond?: number;
}

const PLAN_LIMITS: [keyof RealtimeLoad, keyof Limits][] = [
  ["connections", "maxConcurrentUsers"],
  ["messagesPerSecond", "maxEventsPerSecond"],
  ["joinsPerSecond", "maxJoinsPerSecond"],
  ["presenceMessagesPerSecond", "maxPresenceEventsPerSecond"],
];

/** Each hosted plan against a load: per figure the plan's limit and the share of it used
 * (1 = at the limit), whether all of it fits, and the smallest plan that fits (none: beyond
 * the published Enterprise floor, a contract or a sharded design). */
export interface PlanFigure {
  used: number;
  limit: number;
  used_share: number;
}
export type PlanFit = { fits: boolean } & { [K in keyof RealtimeLoad]?: PlanFigure };

export function planHeadroom(
  load: RealtimeLoad,
): { smallest_plan_that_fits: Plan | "none"; plans: Record<Plan, PlanFit> } {
  const plans = {} as Record<Plan, PlanFit>;
  for (const plan of Object.keys(PLANS) as Plan[]) {
    const fit: PlanFit = { fits: true };
    for (const [figure, limit] of PLAN_LIMITS) {
      const used = load[figure];
      if (used === undefined) continue;
      const max = PLANS[plan][limit];
      fit[figure] = {
        used: Math.round(used * 10) / 10,
        limit: max,
        used_share: Math.round((used / max) * 1000) / 1000,
      };
      if (used > max) fit.fits = false;
    }
    plans[plan] = fit;
  }
  const smallest = (Object.keys(plans) as Plan[]).find((p) => plans[p].fits) ?? "none";
  return { smallest_plan_that_fits: smallest, plans };
}
