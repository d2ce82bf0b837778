// The functions server: routing, Supabase's verify_jwt rules, and health.
import assert from "node:assert/strict";
import { verifyJwt } from "../../functions/_shared/auth.ts";
import { functions } from "../../functions/_serve/registry.ts";
import { ANON_KEY, FUNCTIONS_URL, ROOT, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { unsignedJwt, userJwt } from "../_lib/jwt.ts";

Deno.test("health_answers_with_database_and_redis_state", async () => {
  const res = await fetch(`${FUNCTIONS_URL}/health`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/json");
  const body = await res.json();
  // The stack runs a read replica (null when none is configured).
  assert.equal(body.replica.up, true);
  assert.equal(typeof body.replica.lag_seconds, "number");
  assert.deepEqual({ ...body, replica: undefined }, {
    status: "ok",
    database: true,
    redis: true,
    replica: undefined,
    degraded: false,
  });
});

Deno.test("unknown_function_is_a_404_json_error", async () => {
  const res = await fetch(`${FUNCTIONS_URL}/no-such-function`);
  assert.equal(res.status, 404);
  assert.equal((await res.json()).error.code, "function_not_found");
});

Deno.test("health_refuses_other_methods_with_405", async () => {
  const res = await fetch(`${FUNCTIONS_URL}/health`, { method: "DELETE" });
  assert.equal(res.status, 405);
  assert.equal((await res.json()).error.code, "method_not_allowed");
});

Deno.test("cors_preflight_is_answered", async () => {
  const res = await fetch(`${FUNCTIONS_URL}/health`, { method: "OPTIONS" });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("access-control-allow-origin"), "*");
  await res.body?.cancel();
});

Deno.test("verify_jwt_accepts_the_local_anon_and_service_role_keys", async () => {
  assert.equal((await verifyJwt(ANON_KEY)).role, "anon");
  assert.equal((await verifyJwt(SERVICE_ROLE_KEY)).role, "service_role");
  assert.equal(
    (await verifyJwt(await userJwt("7f0c4a5e-0000-4000-a000-000000000001"))).role,
    "authenticated",
  );
});

Deno.test("verify_jwt_rejects_forged_expired_and_unsigned_tokens", async () => {
  const sub = "7f0c4a5e-0000-4000-a000-000000000001";
  const forged = await userJwt(sub, { secret: "not-the-project-secret-not-the-project-secret" });
  const expired = await userJwt(sub, { expiresIn: Math.floor(Date.now() / 1000) - 60 });
  const [h, p] = ANON_KEY.split(".");
  const tampered = `${h}.${p.slice(0, -2)}xx.${ANON_KEY.split(".")[2]}`;
  for (
    const token of [forged, expired, tampered, unsignedJwt({ role: "service_role" }), "garbage"]
  ) {
    await assert.rejects(verifyJwt(token), (e: { status?: number }) => e.status === 401);
  }
});

Deno.test("every_function_with_verify_jwt_refuses_calls_without_a_valid_jwt", async () => {
  for (const [name, fn] of Object.entries(functions)) {
    if (!fn.verifyJwt) continue;
    for (const auth of [undefined, "Bearer garbage", `Bearer ${unsignedJwt({ role: "anon" })}`]) {
      const res = await fetch(`${FUNCTIONS_URL}/${name}`, {
        headers: auth ? { authorization: auth } : {},
      });
      assert.equal(res.status, 401, `${name} with ${auth}`);
      assert.ok((await res.json()).error.code, `${name} answers a JSON error`);
    }
  }
});

Deno.test("the_server_registry_agrees_with_supabase_config_toml", async () => {
  const toml = await Deno.readTextFile(`${ROOT}/supabase/config.toml`);
  const configured: Record<string, boolean> = {};
  const sections = toml.split(/^(?=\[)/m).filter((t) => t.startsWith("[functions."));
  for (const section of sections) {
    const name = /^\[functions\.([a-z0-9-]+)\]/.exec(section)![1];
    const value = (key: string) =>
      new RegExp(`^${key}\\s*=\\s*"?([^"\\n]*)"?`, "m").exec(section)?.[1];
    configured[name] = value("verify_jwt") === "true";
    // What `supabase functions deploy <name>` reads: an entry point that exists, the import map.
    assert.equal(value("entrypoint"), `../functions/${name}/index.ts`, name);
    assert.equal(value("import_map"), "../functions/import_map.json", name);
    await Deno.stat(`${ROOT}/supabase/${value("entrypoint")}`);
  }
  const served = Object.fromEntries(Object.entries(functions).map(([k, v]) => [k, v.verifyJwt]));
  assert.deepEqual(served, configured);
  // Every function folder is served and configured (the _ folders are shared code).
  const folders = [...Deno.readDirSync(`${ROOT}/functions`)]
    .filter((e) => e.isDirectory && !e.name.startsWith("_")).map((e) => e.name).sort();
  assert.deepEqual(folders, Object.keys(configured).sort());
});
