// Shared by the Deno suites: the running stack's URLs and keys, and JWTs made like GoTrue's.
import { SignJWT } from "jose";

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
