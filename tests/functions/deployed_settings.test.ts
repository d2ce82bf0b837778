// The settings docs/deploy.md gives a hosted project, as a set: a functions server whose
// environment is exactly what the hosted platform injects (SUPABASE_URL, SUPABASE_DB_URL and the
// legacy keys, minted as hosted mints them: issuer `supabase`, the project's ref) plus the
// secrets `supabase secrets set` names in docs/deploy.md, nothing inherited from the local
// stack. Every function must answer as it would there: a setting the doc forgets, or one that
// refuses the platform's own keys (SLTR_JWT_ISSUER once refused the service_role key, so
// metrics answered 401), fails here.
import assert from "node:assert/strict";
import postgres from "postgres";
import { signJwt } from "../_lib/jwt.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { postSignedEvents } from "../_lib/webhook.ts";
import {
  DB_URL,
  JWT_SECRET,
  POOLER_URL,
  REDIS_URL,
  REPLICA_DB_URL,
  ROOT,
  WEBHOOK_SECRET,
} from "../_lib/env.ts";
import { test } from "../_lib/harness.ts";

const REF = "sltrdeployedsettings"; // a project ref: 20 lowercase letters
const ISSUER = `https://${REF}.supabase.co/auth/v1`;

/** The names `supabase secrets set` sets in docs/deploy.md's deploy block. */
function documentedSecrets(): string[] {
  const doc = Deno.readTextFileSync(`${ROOT}/docs/deploy.md`);
  const block = /supabase secrets set \\\n((?:.*\\\n)*.*\n)/.exec(doc)?.[1];
  assert.ok(block, "docs/deploy.md has a `supabase secrets set` block");
  return [...block.matchAll(/(?:^|\s)([A-Z][A-Z0-9_]*)=/g)].map((m) => m[1]);
}

/** A hosted project's legacy API key: minted by the platform, not by Auth. */
async function apiKey(role: "anon" | "service_role", ref = REF): Promise<string> {
  return await signJwt({ iss: "supabase", ref, role }, JWT_SECRET, { expiresIn: "10y" });
}

/** A user's access token as hosted Auth issues it. */
async function accessToken(sub: string): Promise<string> {
  return await signJwt(
    { iss: ISSUER, role: "authenticated", aud: "authenticated", session_id: crypto.randomUUID() },
    JWT_SECRET,
    { sub, expiresIn: "1h" },
  );
}

const functionsRole = new URL(Deno.env.get("SUPABASE_DB_URL")!); // sltr_functions via PgBouncer
const functionsReplica = new URL(functionsRole);
functionsReplica.pathname = "/postgres_replica";

// What each documented secret is on this machine. A name the doc adds without a value here
// fails the test, so the doc and this test stay one list.
const LOCAL_VALUES: Record<string, string> = {
  SLTR_DB_URL: functionsRole.href,
  SLTR_DB_REPLICA_URL: REPLICA_DB_URL ? functionsReplica.href : functionsRole.href,
  SLTR_JWT_SECRET: JWT_SECRET,
  SLTR_JWT_ISSUER: ISSUER,
  REDIS_URL,
  PRESENCE_WEBHOOK_SECRETS: WEBHOOK_SECRET,
  SENTRY_DSN: "", // set below: a local ingest
  SENTRY_ENVIRONMENT: "production",
};

test("a_server_with_exactly_the_documented_secrets_answers_every_function", async () => {
  const names = documentedSecrets();
  assert.ok(names.includes("SLTR_JWT_ISSUER") && names.includes("SLTR_DB_URL"), names.join(","));
  const unknown = names.filter((n) => !(n in LOCAL_VALUES));
  assert.deepEqual(unknown, [], "every documented secret has a local value in this test");

  // Sentry's ingest, local: a function that fails would report an error ("event") here. The
  // traces sampled at SENTRY_TRACES_SAMPLE_RATE (0.1: one run in ten) arrive as transactions,
  // which are not failures.
  const reports: string[] = [];
  const ingest = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const envelope = await req.text();
    const types = envelope.split("\n").slice(1).flatMap((line) => {
      try {
        return [(JSON.parse(line) as { type?: unknown }).type];
      } catch {
        return [];
      }
    });
    if (types.includes("event")) reports.push(envelope);
    return new Response("{}", { headers: { "content-type": "application/json" } });
  });
  const secrets = Object.fromEntries(names.map((n) => [n, LOCAL_VALUES[n]]));
  if ("SENTRY_DSN" in secrets) secrets.SENTRY_DSN = `http://key@127.0.0.1:${ingest.addr.port}/1`;

  const serviceKey = await apiKey("service_role");
  const anonKey = await apiKey("anon");
  const db = postgres(DB_URL, { max: 1, onnotice: () => {} });
  const server = await startFunctionsServer(
    {
      // What Deno itself needs to start, and the local gateway's own switches (not a function's).
      ...pick("PATH", "HOME", "DENO_DIR", "TMPDIR"),
      REALTIME_ENABLED: "false",
      SLTR_GATEWAY_DB_URL: POOLER_URL,
      // What the hosted platform injects into every function.
      SUPABASE_URL: "http://127.0.0.1",
      SUPABASE_DB_URL: POOLER_URL,
      SUPABASE_ANON_KEY: anonKey,
      SUPABASE_SERVICE_ROLE_KEY: serviceKey,
      ...secrets,
    },
    "health",
    undefined,
    { clearEnv: true },
  );
  try {
    const id = crypto.randomUUID();
    await db`insert into auth.users (id, aud, role, email)
             values (${id}, 'authenticated', 'authenticated', ${`${id}@deployed-settings.test`})`;
    await db`insert into public.profiles (id, display_name) values (${id}, 'Deployed')`;
    const user = { authorization: `Bearer ${await accessToken(id)}` };
    const where = { lat: 63 + Math.random(), lng: 21 + Math.random() };

    const answers: Record<string, [number, string]> = {};
    const call = async (name: string, path: string, init: RequestInit = {}) => {
      const res = await fetch(`${server.url}/${path}`, init);
      answers[name] = [res.status, await res.text()];
    };
    await call("health", "health");
    const event = { user_id: id, status: "online", at: new Date().toISOString(), ...where };
    const webhook = await postSignedEvents([event], server.url);
    answers["presence-webhook"] = [webhook.status, await webhook.text()];
    await call("presence-ticket", "presence-ticket", { method: "POST", headers: user });
    await call("nearby-online", `nearby-online?lat=${where.lat}&lng=${where.lng}`, {
      headers: user,
    });
    await call("online-status", "online-status", {
      method: "POST",
      headers: { ...user, "content-type": "application/json" },
      body: JSON.stringify({ user_ids: [id] }),
    });
    await call("metrics", "metrics", { headers: { authorization: `Bearer ${serviceKey}` } });
    const statuses = Object.fromEntries(Object.entries(answers).map(([k, [s]]) => [k, s]));
    assert.deepEqual(statuses, {
      "health": 200,
      "presence-webhook": 202,
      "presence-ticket": 200,
      "nearby-online": 200,
      "online-status": 200,
      "metrics": 200,
    }, JSON.stringify(answers));
    assert.match(answers.metrics[1], /^sltr_/m, "metrics in Prometheus' text format");
    assert.equal(JSON.parse(answers["online-status"][1]).users.length, 1);

    // The platform's keys are the project's, not any `supabase` token: another project's
    // service_role key, or a user token claiming the keys' issuer, is refused.
    for (
      const [what, jwt] of [
        ["another project's service_role key", await apiKey("service_role", "anotherprojectref0")],
        [
          "an authenticated token with the keys' issuer",
          await signJwt(
            { iss: "supabase", ref: REF, role: "authenticated", aud: "authenticated" },
            JWT_SECRET,
            { sub: id },
          ),
        ],
      ]
    ) {
      const res = await fetch(`${server.url}/metrics`, {
        headers: { authorization: `Bearer ${jwt}` },
      });
      assert.equal(res.status, 401, `${what}: ${await res.text()}`);
    }
    assert.deepEqual(reports, [], "nothing reached Sentry");
  } finally {
    server.child.kill();
    await server.child.status;
    await ingest.shutdown();
    await db`delete from auth.users where email like '%@deployed-settings.test'`;
    await db.end();
  }
});

function pick(...names: string[]): Record<string, string> {
  return Object.fromEntries(
    names.flatMap((n) => (Deno.env.get(n) === undefined ? [] : [[n, Deno.env.get(n)!]])),
  );
}
