// Presence tickets: the proof of identity a client carries in its Realtime presence payload.
// A Realtime client chooses its own presence key (hosted Realtime included), so a presence
// alone proves nothing; the presence bridge trusts one only with a ticket for that very user,
// issued by functions/presence-ticket to the signed-in user and checked with the same secret.
//
// A ticket is a compact HS256 JWT `{sub, aud: "sltr:presence", iat, exp}` signed with a key
// derived from the presence webhook secret (HMAC(secret, "sltr presence ticket v1")): it is
// never a Supabase JWT (another key, another audience), so a leaked ticket can show its user
// online for its few minutes and do nothing else. Synchronous (node:crypto), so the bridge
// checks one per presence callback without reordering them. docs/realtime.md, "Presence
// nobody can forge".
import { Buffer } from "node:buffer";
import { createHmac, timingSafeEqual } from "node:crypto";

export const TICKET_AUDIENCE = "sltr:presence";
/** Default lifetime; clients renew at two thirds of it. */
export const TICKET_TTL_SECONDS = 15 * 60;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export type TicketRejection = "missing_proof" | "invalid_proof" | "expired_proof";
export type TicketCheck =
  | { ok: true; sub: string; exp: number }
  | { ok: false; reason: TicketRejection };

function b64url(data: Uint8Array | string): string {
  return Buffer.from(data).toString("base64url");
}

const keys = new Map<string, Buffer>();

/** The ticket key of one webhook secret (cached). */
function ticketKey(secret: string): Buffer {
  let key = keys.get(secret);
  if (!key) {
    key = createHmac("sha256", secret).update("sltr presence ticket v1").digest();
    keys.set(secret, key);
  }
  return key;
}

const HEADER = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));

function mac(secret: string, signingInput: string): Buffer {
  return createHmac("sha256", ticketKey(secret)).update(signingInput).digest();
}

/** A ticket for `userId`, valid for `ttlSeconds` from `nowSeconds`. */
export function issueTicket(
  userId: string,
  secret: string,
  ttlSeconds = TICKET_TTL_SECONDS,
  nowSeconds = Math.floor(Date.now() / 1000),
): { ticket: string; exp: number } {
  const exp = nowSeconds + ttlSeconds;
  const claims = b64url(
    JSON.stringify({ sub: userId.toLowerCase(), aud: TICKET_AUDIENCE, iat: nowSeconds, exp }),
  );
  const input = `${HEADER}.${claims}`;
  return { ticket: `${input}.${b64url(mac(secret, input))}`, exp };
}

/** Checks a ticket against every current secret (a rotation accepts old and new). */
export function verifyTicket(
  ticket: unknown,
  secrets: readonly string[],
  nowSeconds = Date.now() / 1000,
): TicketCheck {
  if (typeof ticket !== "string" || ticket === "") return { ok: false, reason: "missing_proof" };
  const parts = ticket.split(".");
  if (parts.length !== 3 || parts[0] !== HEADER || ticket.length > 1024) {
    return { ok: false, reason: "invalid_proof" };
  }
  const given = Buffer.from(parts[2], "base64url");
  const input = `${parts[0]}.${parts[1]}`;
  const signed = secrets.some((secret) => {
    const expected = mac(secret, input);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
  if (!signed) return { ok: false, reason: "invalid_proof" };
  let claims: { sub?: unknown; aud?: unknown; exp?: unknown };
  try {
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    return { ok: false, reason: "invalid_proof" };
  }
  if (
    claims.aud !== TICKET_AUDIENCE || typeof claims.sub !== "string" || !UUID.test(claims.sub) ||
    typeof claims.exp !== "number"
  ) {
    return { ok: false, reason: "invalid_proof" };
  }
  if (claims.exp <= nowSeconds) return { ok: false, reason: "expired_proof" };
  return { ok: true, sub: claims.sub, exp: claims.exp };
}
