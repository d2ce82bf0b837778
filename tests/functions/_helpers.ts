// Shared by the Deno suites: the running stack's URLs and keys, and JWTs made like GoTrue's.
import { SignJWT } from "jose";
import { signBody } from "../../functions/_shared/auth.ts";

export const FUNCTIONS_URL = `${
  Deno.env.get("SUPABASE_URL") ?? "http://127.0.0.1:54321"
}/functions/v1`;
export const ANON_KEY = Deno.env.get("SUPABASE_ANON_KEY")!;
export const SERVICE_ROLE_KEY = Deno.env.get("SUPABASE_SERVICE_ROLE_KEY")!;
export const JWT_SECRET = Deno.env.get("SUPABASE_JWT_SECRET")!;

/** A user's access token, as GoTrue issues it. */
export async function userJwt(
  sub: string,
  opts: { expiresIn?: string | number; secret?: string; role?: string } = {},
): Promise<string> {
  return await new SignJWT({ role: opts.role ?? "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(opts.expiresIn ?? "1h")
    .sign(new TextEncoder().encode(opts.secret ?? JWT_SECRET));
}

/** An unsigned token (`alg: none`), which must never be accepted. */
export function unsignedJwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) =>
    btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  return `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.`;
}

/** A free TCP port on loopback (nothing listens on it once returned). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/**
 * A private functions server (own process, own port, the test's environment plus `env`), to
 * kill or misconfigure. Ready when `readyPath` answers at all: the default, `presence-webhook`
 * by GET, is refused (405) before any connection to Postgres or Redis is made, so the server's
 * first real request starts cold.
 */
export async function startFunctionsServer(
  env: Record<string, string>,
  readyPath = "presence-webhook",
  port = freePort(),
): Promise<{ url: string; child: Deno.ChildProcess }> {
  const root = Deno.env.get("SLTR_ROOT") ?? ".";
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-sys",
      `${root}/functions/_serve/main.ts`,
    ],
    cwd: root,
    env: { ...Deno.env.toObject(), FUNCTIONS_PORT: String(port), ...env },
    stdin: "null",
    stdout: Deno.env.get("SLTR_TEST_SERVER_LOGS") ? "inherit" : "null",
    stderr: Deno.env.get("SLTR_TEST_SERVER_LOGS") ? "inherit" : "null",
  }).spawn();
  const url = `http://127.0.0.1:${port}/functions/v1`;
  for (let i = 0;; i++) {
    try {
      await (await fetch(`${url}/${readyPath}`)).body?.cancel();
      return { url, child };
    } catch (e) {
      if (i > 150) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A batch of presence events, signed as the bridge signs it, to `${base}/presence-webhook`. */
export async function postSignedEvents(
  events: unknown[],
  base = FUNCTIONS_URL,
  secret = Deno.env.get("PRESENCE_WEBHOOK_SECRET")!,
): Promise<Response> {
  const body = JSON.stringify({ events });
  return await fetch(`${base}/presence-webhook`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-sltr-signature": await signBody(secret, body),
    },
    body,
  });
}
