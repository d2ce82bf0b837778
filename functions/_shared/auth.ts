// Who is calling: Supabase JWTs (HS256, the project's JWT secret) and signed service batches.
import { jwtVerify } from "jose";
import { env } from "./env.ts";
import { HttpError } from "./http.ts";

export interface Claims {
  sub?: string;
  role: string;
  exp?: number;
  [key: string]: unknown;
}

let key: Uint8Array | undefined;

/** Tokens already verified, until their `exp`: a client sends the same access token for up to
 * an hour, and checking its signature again each time was a fifth of a nearby request's CPU.
 * Keyed by the whole token (signature included); oldest dropped first beyond the bound.
 * Expiry is checked on every use. */
const verified = new Map<string, Readonly<Claims>>();
const VERIFIED_MAX = 50_000; // ~0.5 KB each

/** The issuer of a hosted project's legacy API keys (anon, service_role): GoTrue issues user
 * tokens as `https://<ref>.supabase.co/auth/v1`, but the keys on the dashboard were minted by the
 * platform with `"iss": "supabase"` and the project's `ref`. */
const API_KEY_ISSUER = "supabase";
const API_KEY_ROLES = new Set(["anon", "service_role"]);

/** With an issuer configured: a token from it, or one of the project's legacy API keys (issuer
 * `supabase`, role anon or service_role, and the project's ref when the issuer names one). */
function issuedHere(payload: Record<string, unknown>, issuer: string): boolean {
  if (payload.iss === issuer) return true;
  if (payload.iss !== API_KEY_ISSUER || !API_KEY_ROLES.has(payload.role as string)) return false;
  const ref = /^https:\/\/([a-z0-9]+)\.supabase\.co\/auth\/v1\/?$/.exec(issuer)?.[1];
  return ref === undefined || payload.ref === ref;
}

/** A project JWT: HS256 with the project secret, `exp` required (and in the future), a `role`,
 * and, when SLTR_JWT_ISSUER is set, issued by it (users) or one of the project's API keys. */
export async function verifyJwt(token: string): Promise<Readonly<Claims>> {
  const known = verified.get(token);
  // jose's own test: expired once exp <= now, in whole seconds.
  if (known && known.exp! > Math.floor(Date.now() / 1000)) return known;
  if (known) verified.delete(token);
  key ??= new TextEncoder().encode(env().jwtSecret);
  try {
    const { payload } = await jwtVerify(token, key, {
      algorithms: ["HS256"],
      requiredClaims: ["exp"],
    });
    if (typeof payload.role !== "string") throw new Error("no role claim");
    const issuer = env().jwtIssuer;
    if (issuer && !issuedHere(payload, issuer)) throw new Error("another issuer");
    const claims = Object.freeze(payload as Claims);
    if (verified.size >= VERIFIED_MAX) verified.delete(verified.keys().next().value!);
    verified.set(token, claims);
    return claims;
  } catch {
    throw new HttpError(
      401,
      "invalid_jwt",
      "The JWT is missing, malformed, expired or not signed by this project.",
    );
  }
}

export function bearerToken(req: Request): string | undefined {
  const header = req.headers.get("authorization") ?? "";
  const match = /^Bearer\s+(\S+)$/i.exec(header);
  return match?.[1];
}

/** Supabase's verify_jwt: any valid project JWT (anon key, user, service_role). */
export async function requireJwt(req: Request): Promise<Claims> {
  const token = bearerToken(req);
  if (!token) {
    throw new HttpError(401, "missing_jwt", "An Authorization: Bearer <JWT> header is required.");
  }
  return await verifyJwt(token);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A signed-in user with a real account: role and audience `authenticated`, a uuid subject,
 * not an anonymous sign-in (GoTrue's `is_anonymous`). */
export async function requireUser(req: Request): Promise<Claims & { sub: string }> {
  const claims = await requireJwt(req);
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (
    claims.role !== "authenticated" || !aud.includes("authenticated") ||
    typeof claims.sub !== "string" || !UUID.test(claims.sub)
  ) {
    throw new HttpError(401, "user_jwt_required", "A signed-in user's JWT is required.");
  }
  if (claims.is_anonymous === true) {
    throw new HttpError(
      403,
      "account_required",
      "Anonymous sign-ins cannot do this; sign in with an account.",
    );
  }
  return claims as Claims & { sub: string };
}

const signingKeys = new Map<string, CryptoKey>();

async function hmacKey(secret: string): Promise<CryptoKey> {
  let key = signingKeys.get(secret);
  if (!key) {
    key = await crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    if (signingKeys.size >= 8) signingKeys.clear();
    signingKeys.set(secret, key);
  }
  return key;
}

const hex = (bytes: Uint8Array) =>
  Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** The x-sltr-signature header for a body: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
 * "<t>.<body>")>`, what verifySignature() accepts. Used by every sender of signed batches. */
export async function signBody(
  secret: string,
  body: string,
  nowSeconds = Math.floor(Date.now() / 1000),
): Promise<string> {
  const mac = await crypto.subtle.sign(
    "HMAC",
    await hmacKey(secret),
    new TextEncoder().encode(`${nowSeconds}.${body}`),
  );
  return `t=${nowSeconds},v1=${hex(new Uint8Array(mac))}`;
}

/** Compares two byte strings in time independent of where they differ. */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  let diff = 0;
  for (let i = 0; i < a.byteLength; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function fromHex(hex: string): Uint8Array | undefined {
  if (!/^(?:[0-9a-f]{2})+$/i.test(hex)) return undefined;
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

/**
 * A signed service batch: `x-sltr-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
 * "<t>.<raw body>")>` (several v1= entries allowed), made with any of `secrets` (a rotation
 * accepts old and new). Refused with 401 when malformed, not matching, or more than
 * `toleranceSeconds` away from now (a replayed capture).
 */
export async function verifySignature(
  header: string,
  rawBody: string,
  secrets: readonly string[],
  toleranceSeconds = 300,
  nowSeconds = Math.floor(Date.now() / 1000),
): Promise<void> {
  const invalid = () =>
    new HttpError(
      401,
      "invalid_signature",
      "The x-sltr-signature header is malformed or does not match the body.",
    );
  let timestamp: string | undefined;
  const candidates: Uint8Array[] = [];
  for (const part of header.split(",")) {
    const [name, value, ...rest] = part.trim().split("=");
    if (rest.length || value === undefined) throw invalid();
    if (name === "t") timestamp = value;
    else if (name === "v1") {
      const mac = fromHex(value);
      if (mac) candidates.push(mac);
    }
  }
  if (!timestamp || !/^\d{1,12}$/.test(timestamp) || candidates.length === 0) throw invalid();
  if (Math.abs(nowSeconds - Number(timestamp)) > toleranceSeconds) {
    throw new HttpError(
      401,
      "stale_signature",
      `The signature timestamp is more than ${toleranceSeconds} seconds away from now.`,
    );
  }
  const signed = new TextEncoder().encode(`${timestamp}.${rawBody}`);
  let matched = false;
  for (const secret of secrets) {
    const expected = new Uint8Array(
      await crypto.subtle.sign("HMAC", await hmacKey(secret), signed),
    );
    for (const mac of candidates) matched = timingSafeEqual(mac, expected) || matched;
  }
  if (!matched) throw invalid();
}
