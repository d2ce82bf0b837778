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

/** A signed-in user's access token (role authenticated), valid for an hour. */
export async function localUserJwt(
  sub: string,
  secret = Deno.env.get("JWT_SECRET") ?? Deno.env.get("SUPABASE_JWT_SECRET"),
): Promise<string> {
  if (!secret) throw new Error("JWT_SECRET is not set (make status prints it)");
  return await new SignJWT({ role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(secret));
}

if (import.meta.main) {
  const who = Deno.args[0];
  if (!who) {
    console.error("usage: token.ts <seed user number | user id>");
    Deno.exit(2);
  }
  console.log(await localUserJwt(/^\d+$/.test(who) ? seedUserId(Number(who)) : who));
}
