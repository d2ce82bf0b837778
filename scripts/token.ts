// Local access tokens, minted with the local JWT secret as GoTrue would sign them (GoTrue does
// not run here). For the local stack only: never point this at a real project's secret.
//   deno run --allow-env scripts/token.ts 7          # seed user 7 (seed-user-7@sltr.local)
//   deno run --allow-env scripts/token.ts <uuid>     # any user id
import { createHash } from "node:crypto";
import { SignJWT } from "jose";

/** The id seed.sql gives seed user `n` (md5('sltr-seed-' || n) shaped as a uuid). */
export function seedUserId(n: number): string {
  const h = createHash("md5").update(`sltr-seed-${n}`).digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${
    h.slice(20, 32)
  }`;
}

/**
 * A JWT signed HS256 with `secret`, as GoTrue signs them: `claims` as given, `iat` now, `exp`
 * after `expiresIn` (a jose time span such as "1h", or seconds since the epoch; `false`: no
 * exp at all), `sub` when given. Every token minted here, by the demo, the tests and the
 * benchmarks, is made by this function.
 */
export async function signJwt(
  claims: Record<string, unknown>,
  secret: string,
  opts: { sub?: string; expiresIn?: string | number | false } = {},
): Promise<string> {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt();
  if (opts.sub !== undefined) jwt.setSubject(opts.sub);
  if (opts.expiresIn !== false) jwt.setExpirationTime(opts.expiresIn ?? "1h");
  return await jwt.sign(new TextEncoder().encode(secret));
}

/** A signed-in user's access token (role authenticated), valid for an hour. */
export async function localUserJwt(
  sub: string,
  secret = Deno.env.get("JWT_SECRET") ?? Deno.env.get("SUPABASE_JWT_SECRET"),
): Promise<string> {
  if (!secret) throw new Error("JWT_SECRET is not set (make status prints it)");
  return await signJwt({ role: "authenticated", aud: "authenticated" }, secret, { sub });
}

if (import.meta.main) {
  const who = Deno.args[0];
  if (!who) {
    console.error("usage: token.ts <seed user number | user id>");
    Deno.exit(2);
  }
  console.log(await localUserJwt(/^\d+$/.test(who) ? seedUserId(Number(who)) : who));
}
