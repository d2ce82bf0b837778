// The benchmark's outputs: JSON (with the `summary` object), a Markdown table against the
// seed's targets, and an SVG chart (latency percentiles per endpoint; polling vs presence load).
import type { Args } from "./lib.ts";

// deno-lint-ignore no-explicit-any
type Phase = Record<string, any>;

async function machine(): Promise<string> {
  const cpu =
    (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.+)/)
      ?.[1] ??
      "unknown CPU";
  const mem = Number(
    (await Deno.readTextFile("/proc/meminfo").catch(() => "")).match(/MemTotal:\s*(\d+)/)?.[1] ?? 0,
  );
  return `${navigator.hardwareConcurrency} cores (${cpu.trim()}), ${
    Math.round(mem / 1048576)
  } GiB RAM, ${Deno.build.os}`;
}

interface ReplicaFigures {
  lag_ms_functions_view: { samples: number; p50: number; p99: number; max: number };
  replay_lag_ms_primary_view: { samples: number; p50: number; p99: number; max: number };
  statements_in_window: { reads: number; reconcile: number; reconcile_db_ms: number };
  functions_reads_by_route: Record<string, number>;
}

/** The read replica's rows: lag from both sides, what it served, where the functions' reads
 * went. */
function replicaRows(r: ReplicaFigures): string[] {
  const routes = Object.entries(r.functions_reads_by_route).map(([k, v]) => `${k} ${v}`).join(
    ", ",
  ) || "none";
  const l = r.lag_ms_functions_view, p = r.replay_lag_ms_primary_view;
  return [
    `| replica lag, sampled every second (replica's view: replay behind receipt) p50 / p99 / max | < 500 ms (SLTR_REPLICA_MAX_LAG_MS) | ${l.p50} / ${l.p99} / ${l.max} ms (${l.samples} samples) | ${
      l.max !== null && l.max < 500 ? "yes" : "**no**"
    } |`,
    `| replica replay_lag (primary's view, pg_stat_replication) p50 / p99 / max | | ${p.p50} / ${p.p99} / ${p.max} ms (${p.samples} samples) | |`,
    `| statements the replica served in the window | | ${r.statements_in_window.reconcile} reconciliation (${r.statements_in_window.reconcile_db_ms} ms), ${r.statements_in_window.reads} reads | |`,
    `| the functions' lag-tolerant reads, by route (sltr_db_reads_total) | | ${routes} | |`,
  ];
}

export async function writeReport(args: Args, started: Date, presence: Phase, polling: Phase) {
  const endpoints = presence.endpoints as Record<
    string,
    { p50_ms: number; p95_ms: number; p99_ms: number; count: number; errors: number }
  >;
  const propagation = presence.propagation as Record<
    string,
    { p99_ms: number; count: number; errors: number }
  >;
  const summary = {
    api_p99_ms: Math.max(...Object.values(endpoints).map((e) => e.p99_ms)),
    propagation_p99_ms: Math.max(...Object.values(propagation).map((e) => e.p99_ms)),
    peak_server_connections: Math.max(
      presence.peak_server_connections,
      polling.peak_server_connections,
    ),
    cache_hit_rate: Math.round(presence.cache.hit_rate * 10000) / 10000,
    presence_db_statements_per_min: presence.presence_db_statements_per_min,
    polling_db_statements_per_min: polling.required_statements_per_min,
    flush_ms: presence.flush.ms,
    target_online: presence.target_online,
    online_measured_min: presence.online_measured_min,
    online_measured_max: presence.online_measured_max,
    online_held: presence.online_held,
    nearby_requests_per_s_target: presence.rates_per_s.nearby_target,
    nearby_requests_per_s_achieved: presence.rates_per_s.nearby_achieved,
    online_status_hit_rate: Math.round(presence.cache.online_status_hit_rate * 10000) / 10000,
    functions_cpu_ms_per_nearby_request: presence.functions_cpu_ms_per_nearby_request,
    saturated: presence.saturated,
  };
  const result = {
    started_at: started.toISOString(),
    machine: await machine(),
    args,
    summary,
    presence,
    polling,
  };
  await Deno.mkdir(args.out, { recursive: true });
  const base = `${args.out}/${started.toISOString().slice(0, 10)}-${args.users}`;
  const files = { json: `${base}.json`, md: `${base}.md`, svg: `${base}.svg` };
  await Deno.writeTextFile(files.json, JSON.stringify(result, null, 2) + "\n");

  const ok = (b: boolean) => (b ? "yes" : "**no**");
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const cpuRows = Object.entries(presence.cpu_ms_per_request as Record<string, number>)
    .map(([k, v]) => `${k} ${v}`).join(", ");
  const rows = [
    "| metric | target | measured | met |",
    "| --- | --- | --- | --- |",
    `| online population held (Postgres and Redis, sampled every 5 s) | within 5 % of ${presence.target_online} | ${presence.online_measured_min} .. ${presence.online_measured_max} | ${
      ok(presence.online_held)
    } |`,
    `| nearby-online requests per second (every online user every ~30 s) | ${presence.rates_per_s.nearby_target} | ${presence.rates_per_s.nearby_achieved} | ${
      ok(presence.rates_per_s.nearby_achieved >= 0.95 * presence.rates_per_s.nearby_target)
    } |`,
    `| presence events per second through the webhook (sessions, moves, refresh) | ${presence.rates_per_s.presence_events_target} | ${presence.rates_per_s.presence_events_achieved} | ${
      ok(
        presence.rates_per_s.presence_events_achieved >=
          0.95 * presence.rates_per_s.presence_events_target,
      )
    } |`,
    ...Object.entries(endpoints).map(([name, e]) =>
      `| ${name} p50 / p95 / p99 | p99 < 100 ms | ${e.p50_ms} / ${e.p95_ms} / ${e.p99_ms} ms (${e.count} calls, ${e.errors} errors) | ${
        ok(e.p99_ms < 100 && e.errors === 0)
      } |`
    ),
    ...Object.entries(propagation).map(([name, e]) =>
      `| status propagation ${name} p99 | < 1 s | ${e.p99_ms} ms (${e.count} probes, ${e.errors} missed) | ${
        ok(e.p99_ms < 1000 && e.errors === 0)
      } |`
    ),
    `| peak Postgres server connections (of them running a statement) | <= 100 | ${presence.peak_server_connections} (${presence.peak_active_server_connections}) presence, ${polling.peak_server_connections} (${polling.peak_active_server_connections}) polling | ${
      ok(summary.peak_server_connections <= 100)
    } |`,
    `| nearby-online hit rate (answered with no database statement) | > 90 % (goal 99 %) | ${
      pct(summary.cache_hit_rate)
    } (${presence.cache.hits} hits, ${presence.cache.misses} misses, ${presence.cache.degraded} degraded) | ${
      ok(summary.cache_hit_rate > 0.9)
    } |`,
    `| online-status hit rate | >= 95 % | ${pct(summary.online_status_hit_rate)} | ${
      ok(summary.online_status_hit_rate >= 0.95)
    } |`,
    `| read statements the functions ran in the window (pg_stat_statements) | 0 per hit | ${presence.cache.read_statements_in_window} | |`,
    `| functions CPU per nearby request (nearby alone, ${presence.nearby_alone.requests} requests) | <= 0.3 ms | ${presence.functions_cpu_ms_per_nearby_request} ms | ${
      ok(presence.functions_cpu_ms_per_nearby_request <= 0.3)
    } |`,
    `| CPU per request, by process (all requests of the window) | | ${cpuRows} ms | |`,
    `| database statements per minute for presence | <= 300 | ${summary.presence_db_statements_per_min} (for ${presence.rates_per_s.presence_events_achieved} events/s) | ${
      ok(summary.presence_db_statements_per_min <= 300)
    } |`,
    `| the live index's reconciliation, in the window | | ${presence.reconciliation.statements} statements, ${presence.reconciliation.db_ms} ms of database time | |`,
    `| flush duration for the changes of one interval | | ${summary.flush_ms} ms (${presence.flush.rows_changed} rows changed) | |`,
    ...(presence.replica ? replicaRows(presence.replica) : []),
    ...(presence.saturated ? [`| **what saturated** | | ${presence.saturated} | |`] : []),
  ];
  const md = [
    `# Benchmark ${started.toISOString()}: ${args.users} users, ${
      args.onlineRatio * 100
    }% online, ${args.duration} s`,
    "",
    `Machine: ${result.machine}. Load generator: a separate Deno process on the same machine.`,
    "",
    ...rows,
    "",
    "## Polling baseline vs presence (same users)",
    "",
    "| design | DB statements per minute | peak server connections (running a statement) | read p99 |",
    "| --- | --- | --- | --- |",
    `| seed's polling (every client, every 30 s) | ${polling.required_statements_per_min} required, ${polling.achieved_statements_per_min} achieved | ${polling.peak_server_connections} (${polling.peak_active_server_connections}) | ${polling.latency.p99_ms} ms |`,
    `| presence pipeline (webhook batches + cron flush) | ${summary.presence_db_statements_per_min} | ${presence.peak_server_connections} (${presence.peak_active_server_connections}) | ${summary.api_p99_ms} ms |`,
    "",
    "## Where Postgres spent its time in the measured window",
    "",
    "| Postgres process | CPU seconds |",
    "| --- | --- |",
    ...Object.entries(presence.postgres_cpu_seconds_by_process ?? {}).map(([k, v]) =>
      `| ${k} | ${v} |`
    ),
    "",
    "| statement (pg_stat_statements) | calls | total ms |",
    "| --- | --- | --- |",
    ...(presence.top_statements ?? []).map((x: { query: string; calls: number; ms: number }) =>
      `| \`${x.query.replace(/\|/g, "\\|")}\` | ${x.calls} | ${x.ms} |`
    ),
    "",
  ].join("\n");
  await Deno.writeTextFile(files.md, md);
  await Deno.writeTextFile(files.svg, svg(endpoints, polling, summary));
  return files;
}

function svg(
  endpoints: Record<string, { p50_ms: number; p95_ms: number; p99_ms: number }>,
  polling: Phase,
  summary: { presence_db_statements_per_min: number; polling_db_statements_per_min: number },
): string {
  const names = Object.keys(endpoints);
  const max = Math.max(100, ...names.map((n) => endpoints[n].p99_ms));
  const w = 760;
  const rowH = 54;
  const chartH = names.length * rowH + 60;
  const scale = (v: number) => (v / max) * 420;
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${
      chartH + 200
    }" font-family="sans-serif" font-size="12">`,
    `<text x="10" y="20" font-size="15" font-weight="bold">API latency percentiles (ms)</text>`,
    `<line x1="${220 + scale(100)}" y1="30" x2="${220 + scale(100)}" y2="${
      chartH - 20
    }" stroke="#c00" stroke-dasharray="4"/>`,
    `<text x="${224 + scale(100)}" y="42" fill="#c00">target p99 100 ms</text>`,
  ];
  names.forEach((n, i) => {
    const y = 50 + i * rowH;
    parts.push(`<text x="10" y="${y + 22}">${esc(n)}</text>`);
    (["p50_ms", "p95_ms", "p99_ms"] as const).forEach((p, j) => {
      const v = endpoints[n][p];
      const color = ["#6baed6", "#3182bd", "#08519c"][j];
      parts.push(
        `<rect x="220" y="${y + j * 14}" width="${
          Math.max(1, scale(v))
        }" height="12" fill="${color}"/>`,
      );
      parts.push(`<text x="${224 + scale(v)}" y="${y + j * 14 + 10}">${p.slice(0, 3)} ${v}</text>`);
    });
  });
  const y0 = chartH + 20;
  const loadMax = Math.max(
    summary.polling_db_statements_per_min,
    summary.presence_db_statements_per_min,
    1,
  );
  const bar = (v: number) => Math.max(1, (v / loadMax) * 420);
  parts.push(
    `<text x="10" y="${y0}" font-size="15" font-weight="bold">Database statements per minute</text>`,
  );
  const loads: [string, number, string][] = [
    ["polling (required)", summary.polling_db_statements_per_min, "#d95f02"],
    ["polling (achieved)", polling.achieved_statements_per_min, "#fdae6b"],
    ["presence pipeline", summary.presence_db_statements_per_min, "#1b9e77"],
  ];
  loads.forEach(([label, value, color], i) => {
    const y = y0 + 20 + i * 30;
    parts.push(`<text x="10" y="${y + 12}">${label}</text>`);
    parts.push(`<rect x="220" y="${y}" width="${bar(value)}" height="16" fill="${color}"/>`);
    parts.push(`<text x="${224 + bar(value)}" y="${y + 12}">${value}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
