// Tokens for tests, minted like GoTrue's with the stack's JWT secret (scripts/token.ts signs).
import { signJwt } from "../../scripts/token.ts";
import { JWT_SECRET } from "./env.ts";

export { signJwt };

/** A user's access token, as GoTrue issues it. */
export async function userJwt(
  sub: string,
  opts: { expiresIn?: string | number; secret?: string; role?: string } = {},
): Promise<string> {
  return await signJwt(
    { role: opts.role ?? "authenticated", aud: "authenticated" },
    opts.secret ?? JWT_SECRET,
    { sub, expiresIn: opts.expiresIn ?? "1h" },
  );
}

/** An unsigned token (`alg: none`), which must never be accepted. */
export function unsignedJwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) =>
    btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  return `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.`;
}
