// Monitoring: the metrics function (service_role only, Prometheus text), the shared wrapper's
// request metrics, JSON logs and request ids on every function, and Sentry on and off.
import assert from "node:assert/strict";
import { functions } from "../../functions/_serve/registry.ts";
import { json, serveJson } from "../../functions/_shared/http.ts";
import { recordCache, registry } from "../../functions/_shared/metrics.ts";
import { ANON_KEY, FUNCTIONS_URL, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { unsignedJwt, userJwt } from "../_lib/jwt.ts";

async function scrape(key = SERVICE_ROLE_KEY): Promise<Response> {
  return await fetch(`${FUNCTIONS_URL}/metrics`, { headers: { authorization: `Bearer ${key}` } });
}

/** The value of one sample line (`name{labels} value`), 0 when absent. */
function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

Deno.test("metrics_refuses_callers_without_a_jwt_with_401", async () => {
  for (
    const auth of [undefined, "Bearer garbage", `Bearer ${unsignedJwt({ role: "service_role" })}`]
  ) {
    const res = await fetch(`${FUNCTIONS_URL}/metrics`, {
      headers: auth ? { authorization: auth } : {},
    });
    assert.equal(res.status, 401, String(auth));
    assert.ok((await res.json()).error.code);
  }
});

Deno.test("metrics_refuses_the_anon_key_and_users_with_403", async () => {
  for (const key of [ANON_KEY, await userJwt("7f0c4a5e-0000-4000-a000-00000000f00d")]) {
    const res = await scrape(key);
    assert.equal(res.status, 403);
    assert.deepEqual(await res.json(), {
      error: {
        code: "service_role_required",
        message: "Metrics are for the service_role key only.",
      },
    });
  }
});

Deno.test("metrics_serves_prometheus_text_to_service_role", async () => {
  const res = await scrape();
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  for (
    const family of [
      "sltr_http_requests_total",
      "sltr_http_request_duration_seconds",
      "sltr_db_query_duration_seconds",
      "sltr_cache_requests_total",
      "sltr_cache_hit_ratio",
      "sltr_presence_events_total",
      "sltr_database_up",
      "sltr_redis_up",
      "sltr_users_online",
      "sltr_presence_buffer_depth",
      "sltr_presence_buffer_pending",
      "sltr_presence_flush_lag_seconds",
      "sltr_presence_flush_interval_seconds",
      "sltr_db_server_connections",
      "sltr_db_server_connections_by_state",
      "sltr_db_server_connections_cap",
      "sltr_db_server_connections_utilization",
      "sltr_alerts_firing_count",
    ]
  ) {
    assert.match(text, new RegExp(`^# TYPE ${family} `, "m"), `${family} is exported`);
  }
  assert.equal(sample(text, "sltr_database_up"), 1);
  assert.equal(sample(text, "sltr_redis_up"), 1);
  assert.ok(sample(text, "sltr_db_server_connections") >= 1);
  assert.equal(sample(text, "sltr_db_server_connections_cap"), 100);
  for (const outcome of ["accepted", "ignored", "rejected"]) {
    assert.ok(text.includes(`sltr_presence_events_total{outcome="${outcome}"}`), outcome);
  }
  // Every sample line is well formed: name{labels} value.
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/, line);
  }
});

Deno.test("metrics_count_requests_per_function_and_status", async () => {
  const series = 'sltr_http_requests_total{function="health",method="GET",status="200"}';
  const before = sample(await (await scrape()).text(), series);
  for (let i = 0; i < 3; i++) await (await fetch(`${FUNCTIONS_URL}/health`)).body?.cancel();
  const after = await (await scrape()).text();
  assert.ok(
    sample(after, series) >= before + 3,
    `${series}: ${before} -> ${sample(after, series)}`,
  );
  assert.ok(
    sample(after, 'sltr_http_request_duration_seconds_count{function="health",status="200"}') >= 3,
  );
  assert.ok(
    sample(after, 'sltr_db_query_duration_seconds_count{query="metrics_snapshot",outcome="ok"}') >=
      1,
    "the database query histogram records the snapshot query",
  );
});

Deno.test("health_costs_the_database_one_check_per_two_seconds_however_often_it_is_called", async () => {
  const series = 'sltr_db_query_duration_seconds_count{query="health",outcome="ok"}';
  const before = sample(await (await scrape()).text(), series);
  const answers = await Promise.all(
    Array.from({ length: 50 }, () => fetch(`${FUNCTIONS_URL}/health`).then((r) => r.json())),
  );
  assert.ok(answers.every((a) => a.status === "ok" && a.database === true));
  const after = sample(await (await scrape()).text(), series);
  assert.ok(after - before <= 2, `50 calls, ${after - before} database checks`);
});

Deno.test("made_up_http_methods_are_counted_under_one_label", async () => {
  const res = await fetch(`${FUNCTIONS_URL}/health`, { method: "FROBNICATE" });
  await res.body?.cancel();
  const text = await (await scrape()).text();
  assert.ok(!text.includes('method="FROBNICATE"'), "no series per made-up method");
  assert.ok(
    sample(text, 'sltr_http_requests_total{function="health",method="OTHER",status="405"}') >= 1,
  );
});

Deno.test("every_function_answers_with_a_request_id_from_the_shared_wrapper", async () => {
  for (const name of Object.keys(functions)) {
    const own = `test-${name}-${crypto.randomUUID()}`;
    const res = await fetch(`${FUNCTIONS_URL}/${name}`, {
      method: "PATCH", // no function accepts it: each answers 405 through its wrapper
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}`, "x-request-id": own },
    });
    await res.body?.cancel();
    assert.equal(res.headers.get("x-request-id"), own, `${name} echoes x-request-id`);
    const generated = await fetch(`${FUNCTIONS_URL}/${name}`, {
      method: "PATCH",
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    });
    await generated.body?.cancel();
    assert.match(
      generated.headers.get("x-request-id") ?? "",
      /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
      `${name} generates a uuid request id`,
    );
  }
});

Deno.test("a_call_refused_by_verify_jwt_is_counted_and_gets_a_request_id", async () => {
  const series = 'sltr_http_requests_total{function="metrics",method="GET",status="401"}';
  const before = sample(await (await scrape()).text(), series);
  const res = await fetch(`${FUNCTIONS_URL}/metrics`, { headers: { "x-request-id": "gw-1" } });
  await res.body?.cancel();
  assert.equal(res.status, 401);
  assert.equal(res.headers.get("x-request-id"), "gw-1");
  assert.ok(sample(await (await scrape()).text(), series) >= before + 1);
});

/** Runs `run` with console.log and console.error captured. */
async function captureLogs<T>(run: () => Promise<T>): Promise<{ result: T; lines: string[] }> {
  const lines: string[] = [];
  const { log, error } = console;
  console.log = (...args: unknown[]) => lines.push(args.join(" "));
  console.error = (...args: unknown[]) => lines.push(args.join(" "));
  try {
    return { result: await run(), lines };
  } finally {
    console.log = log;
    console.error = error;
  }
}

Deno.test("each_request_is_one_json_log_line_with_its_request_id", async () => {
  const handler = serveJson("log-probe", () => Promise.resolve(json({ ok: true }, 201)));
  const { result: res, lines } = await captureLogs(() =>
    handler(new Request("http://127.0.0.1/", { headers: { "sb-request-id": "sb-req-42" } }))
  );
  await res.body?.cancel();
  assert.equal(res.headers.get("x-request-id"), "sb-req-42");
  assert.equal(lines.length, 1, lines.join("\n"));
  const entry = JSON.parse(lines[0]);
  assert.deepEqual(
    { ...entry, duration_ms: typeof entry.duration_ms },
    {
      level: "info",
      msg: "request",
      function: "log-probe",
      method: "GET",
      status: 201,
      duration_ms: "number",
      request_id: "sb-req-42",
    },
  );
});

Deno.test("a_failing_handler_logs_one_error_line_and_answers_a_500_json_error", async () => {
  const handler = serveJson("log-probe-failing", () => Promise.reject(new Error("boom")));
  const { result: res, lines } = await captureLogs(() =>
    handler(new Request("http://127.0.0.1/", { headers: { "x-request-id": "bad id with spaces" } }))
  );
  assert.equal(res.status, 500);
  assert.deepEqual(await res.json(), {
    error: { code: "internal_error", message: "Something went wrong on our side." },
  });
  assert.equal(lines.length, 1);
  const entry = JSON.parse(lines[0]);
  assert.equal(entry.level, "error");
  assert.equal(entry.status, 500);
  assert.equal(entry.error, "Error: boom");
  assert.notEqual(entry.request_id, "bad id with spaces", "a malformed request id is replaced");
  assert.equal(res.headers.get("x-request-id"), entry.request_id);
});

Deno.test("cache_hit_rate_is_hits_over_hits_and_misses", async () => {
  recordCache("test-cache", "hit", 3);
  recordCache("test-cache", "miss", 1);
  recordCache("test-cache", "error", 5);
  const text = await registry.metrics();
  assert.equal(sample(text, 'sltr_cache_hit_ratio{cache="test-cache"}'), 0.75);
  assert.equal(sample(text, 'sltr_cache_requests_total{cache="test-cache",result="error"}'), 5);
});

// Sentry, in a subprocess so that its configuration is that process's environment.
async function runProbe(env: Record<string, string>): Promise<{ status: number; sentry: boolean }> {
  const probe = new URL("./_sentry_probe.ts", import.meta.url).pathname;
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", probe],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(stdout).trim().split("\n");
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  return JSON.parse(out[out.length - 1]);
}

Deno.test("sentry_stays_off_without_a_dsn", async () => {
  assert.deepEqual(await runProbe({ SENTRY_DSN: "" }), { status: 500, sentry: false });
});

Deno.test("a_500_reaches_sentry_tagged_with_the_function_name", async () => {
  const envelopes: string[] = [];
  const ingest = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    envelopes.push(`${new URL(req.url).pathname}\n${await req.text()}`);
    return new Response("{}", { headers: { "content-type": "application/json" } });
  });
  try {
    const dsn = `http://public@127.0.0.1:${ingest.addr.port}/1`;
    const result = await runProbe({ SENTRY_DSN: dsn, SENTRY_TRACES_SAMPLE_RATE: "1" });
    assert.deepEqual(result, { status: 500, sentry: true });
  } finally {
    await ingest.shutdown();
  }
  assert.ok(envelopes.length > 0, "the fake ingest received envelopes");
  assert.ok(envelopes.every((e) => e.startsWith("/api/1/envelope/")));
  const items = envelopes.flatMap((e) => {
    const lines = e.split("\n").slice(2); // path, envelope header
    const out: { type: string; payload: Record<string, unknown> }[] = [];
    for (let i = 0; i + 1 < lines.length; i += 2) {
      out.push({ type: JSON.parse(lines[i]).type, payload: JSON.parse(lines[i + 1]) });
    }
    return out;
  });
  const event = items.find((i) => i.type === "event")?.payload as {
    tags: Record<string, string>;
    exception: { values: { value: string }[] };
  };
  assert.ok(event, `an error event among ${items.map((i) => i.type)}`);
  assert.equal(event.tags.function, "sentry-probe");
  assert.equal(event.tags.request_id, "sentry-probe-request");
  assert.equal(event.exception.values[0].value, "sentry probe: a handler failed");
  const transaction = items.find((i) => i.type === "transaction")?.payload as {
    transaction: string;
    tags: Record<string, string>;
  };
  assert.ok(transaction, "the request is a transaction (span)");
  assert.equal(transaction.transaction, "GET /functions/v1/sentry-probe");
  assert.equal(transaction.tags.function, "sentry-probe");
  const metric = items.find((i) => i.type === "trace_metric");
  assert.ok(metric, "the request's duration is sent as a Sentry metric");
  assert.match(JSON.stringify(metric.payload), /sltr\.http\.request\.duration/);
});
