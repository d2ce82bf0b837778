// A benchmark is not a test: this only checks that a 5-second run produces a well-formed report.
import assert from "node:assert/strict";
import { ROOT } from "../_lib/env.ts";

Deno.test("a_five_second_benchmark_writes_a_well_formed_report", async () => {
  const out = await Deno.makeTempDir({ prefix: "sltr-bench-" });
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}/bench/run.ts`,
      "--smoke",
      "--users",
      "2000",
      "--duration",
      "5",
      "--warmup",
      "1",
      "--polling-duration",
      "2",
      "--out",
      out,
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  const files = [...Deno.readDirSync(out)].map((e) => e.name).sort();
  assert.equal(files.length, 3, `expected json, md and svg, got ${files}`);
  const md = await Deno.readTextFile(`${out}/${files.find((f) => f.endsWith(".md"))}`);
  const json = JSON.parse(
    await Deno.readTextFile(`${out}/${files.find((f) => f.endsWith(".json"))}`),
  );
  for (
    const key of [
      "api_p99_ms",
      "propagation_p99_ms",
      "peak_server_connections",
      "cache_hit_rate",
      "presence_db_statements_per_min",
      "polling_db_statements_per_min",
      "flush_ms",
    ]
  ) {
    assert.equal(typeof json.summary[key], "number", `summary.${key}`);
    assert.ok(Number.isFinite(json.summary[key]), `summary.${key} is finite`);
  }
  assert.ok(json.presence.endpoints["nearby-online"].count > 0, "nearby-online was exercised");
  assert.ok(json.presence.endpoints["presence-webhook"].count > 0, "the webhook was exercised");
  if (Deno.env.get("REPLICA_DB_URL")) {
    assert.ok(json.presence.replica.lag_ms_functions_view.samples > 0, "the replica's lag sampled");
    assert.match(md, /replica lag, sampled every second/);
  }
  assert.match(md, /\| metric \| target \| measured \| met \|/);
  const svg = await Deno.readTextFile(`${out}/${files.find((f) => f.endsWith(".svg"))}`);
  assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /<\/svg>\n$/);
  await Deno.remove(out, { recursive: true });
});
