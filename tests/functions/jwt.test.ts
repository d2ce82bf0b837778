// The JWTs the functions accept from users: exp required, a uuid sub, aud authenticated, the
// issuer when one is configured, and no anonymous sign-in where an account is meant. Each
// refusal is a 4xx JSON error, never a 500.
import assert from "node:assert/strict";
import { FUNCTIONS_URL, JWT_SECRET } from "../_lib/env.ts";
import { signJwt } from "../_lib/jwt.ts";
import { startFunctionsServer } from "../_lib/servers.ts";

async function token(
  claims: Record<string, unknown>,
  opts: { exp?: boolean } = {},
): Promise<string> {
  return await signJwt({ role: "authenticated", aud: "authenticated", ...claims }, JWT_SECRET, {
    expiresIn: opts.exp === false ? false : "1h",
  });
}

async function nearbyAs(jwt: string, base = FUNCTIONS_URL) {
  const res = await fetch(`${base}/nearby-online?lat=52.5&lng=13.4`, {
    headers: { authorization: `Bearer ${jwt}` },
  });
  return { status: res.status, body: await res.json() };
}

Deno.test("a_user_jwt_needs_exp_a_uuid_sub_and_the_authenticated_audience", async () => {
  const sub = crypto.randomUUID();
  const cases: [string, string, number, string][] = [
    ["no exp", await token({ sub }, { exp: false }), 401, "invalid_jwt"],
    ["a sub that is not a uuid", await token({ sub: "admin" }), 401, "user_jwt_required"],
    ["no sub", await token({}), 401, "user_jwt_required"],
    ["another audience", await token({ sub, aud: "service" }), 401, "user_jwt_required"],
    ["the anon role", await token({ sub, role: "anon" }), 401, "user_jwt_required"],
    ["an anonymous sign-in", await token({ sub, is_anonymous: true }), 403, "account_required"],
  ];
  for (const [what, jwt, status, code] of cases) {
    const res = await nearbyAs(jwt);
    assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
    assert.equal(res.body.error.code, code, what);
  }
  assert.equal((await nearbyAs(await token({ sub }))).status, 200, "a real user's token");
});

Deno.test("with_an_issuer_configured_only_its_tokens_are_accepted", async () => {
  const iss = "https://project-ref.supabase.co/auth/v1";
  const server = await startFunctionsServer({ SUPABASE_JWT_ISSUER: iss });
  try {
    const sub = crypto.randomUUID();
    assert.equal((await nearbyAs(await token({ sub, iss }), server.url)).status, 200);
    const other = await nearbyAs(
      await token({ sub, iss: "https://evil.example/auth/v1" }),
      server.url,
    );
    assert.deepEqual([other.status, other.body.error.code], [401, "invalid_jwt"]);
    const none = await nearbyAs(await token({ sub }), server.url);
    assert.deepEqual([none.status, none.body.error.code], [401, "invalid_jwt"]);
  } finally {
    server.child.kill();
    await server.child.status;
  }
});
