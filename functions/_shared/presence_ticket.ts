// Presence tickets: the proof of identity a client carries in its Realtime presence payload.
// A Realtime client chooses its own presence key (hosted Realtime included), so a presence
// alone proves nothing; the presence bridge trusts one only with a ticket for that very user,
// issued by functions/presence-ticket to the signed-in user and checked with the same secret.
//
// A ticket is a compact HS256 JWT `{sub, aud: "sltr:presence", top, iat, exp}` signed with a key
// derived from the presence webhook secret (HMAC(secret, "sltr presence ticket v1")): it is
// never a Supabase JWT (another key, another audience), so a leaked ticket can show its user
// online for its few minutes and do nothing else. Synchronous (node:crypto), so the bridge
// checks one per presence callback without reordering them. docs/realtime.md, "Presence
// nobody can forge".
//
// The ticket also names the presence topic its user tracks on (`top`): presence is sharded
// over SLTR_PRESENCE_TOPICS topics by user id (presenceTopic), so every device of a user is on
// one topic and one bridge, and a bridge believes a presence only on the topic its ticket
// names. docs/scaling.md, "Presence topics".
import { Buffer } from "node:buffer";
import { createHash, createHmac, timingSafeEqual } from "node:crypto";

export const TICKET_AUDIENCE = "sltr:presence";
/** Default lifetime; clients renew at two thirds of it. */
export const TICKET_TTL_SECONDS = 15 * 60;

/** The presence topic of a project with one (and of tickets issued before topics had names). */
export const PRESENCE_TOPIC = "online-users";
/** Most presence topics a project may shard over (a bridge holds up to 100 channels). */
export const MAX_PRESENCE_TOPICS = 1000;
/** A presence topic's name: online-users, online-users:<0..999> (as the Realtime policies). */
const TOPIC = /^online-users(?::(0|[1-9][0-9]{0,2}))?$/;

/**
 * The topic `userId` tracks presence on when presence is sharded over `topics` topics:
 * online-users alone for one, else online-users:<k>, k = the first 32 bits of
 * sha256(lower-case id) mod topics. By user, not by place: a user's devices share a topic, a
 * move never changes it, and the shards are even whatever the map looks like.
 */
export function presenceTopic(userId: string, topics: number): string {
  if (topics <= 1) return PRESENCE_TOPIC;
  const digest = createHash("sha256").update(userId.toLowerCase()).digest();
  return `${PRESENCE_TOPIC}:${digest.readUInt32BE(0) % topics}`;
}

/** Every topic of a project sharded over `topics` (what its bridges hold between them). */
export function presenceTopics(topics: number): string[] {
  if (topics <= 1) return [PRESENCE_TOPIC];
  return Array.from({ length: topics }, (_, k) => `${PRESENCE_TOPIC}:${k}`);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export type TicketRejection = "missing_proof" | "invalid_proof" | "expired_proof";
export type TicketCheck =
  | { ok: true; sub: string; exp: number; topic: string }
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

/** A ticket for `userId` on `topic`, valid for `ttlSeconds` from `nowSeconds`. */
export function issueTicket(
  userId: string,
  secret: string,
  ttlSeconds = TICKET_TTL_SECONDS,
  nowSeconds = Math.floor(Date.now() / 1000),
  topic = PRESENCE_TOPIC,
): { ticket: string; exp: number } {
  const exp = nowSeconds + ttlSeconds;
  const sub = userId.toLowerCase();
  const claims = b64url(
    JSON.stringify({ sub, aud: TICKET_AUDIENCE, top: topic, iat: nowSeconds, exp }),
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
  let claims: { sub?: unknown; aud?: unknown; top?: unknown; exp?: unknown };
  try {
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    return { ok: false, reason: "invalid_proof" };
  }
  if (
    claims.aud !== TICKET_AUDIENCE || typeof claims.sub !== "string" || !UUID.test(claims.sub) ||
    typeof claims.exp !== "number" ||
    (claims.top !== undefined && (typeof claims.top !== "string" || !TOPIC.test(claims.top)))
  ) {
    return { ok: false, reason: "invalid_proof" };
  }
  if (claims.exp <= nowSeconds) return { ok: false, reason: "expired_proof" };
  // Tickets issued before topics had names were all for the one topic.
  return { ok: true, sub: claims.sub, exp: claims.exp, topic: claims.top ?? PRESENCE_TOPIC };
}
