// What the presence webhook accepts: who may send (a signed service batch, or a user's JWT for
// their own presence) and what (the event schema, strict), with the one error shape.
import { z } from "zod";
import { requireUser, verifySignature } from "../_shared/auth.ts";
import { env } from "../_shared/env.ts";
import { HttpError } from "../_shared/http.ts";
import type { PresenceEvent } from "../_shared/presence.ts";

export const MAX_BODY_BYTES = 256 * 1024;
export const MAX_SERVICE_EVENTS = 1000;
/** A client reports its own presence; only its newest event matters, so a few suffice. */
export const MAX_SELF_EVENTS = 10;
/** How far ahead of the server's clock an event may be (clock skew), as for signatures. */
export const MAX_FUTURE_MS = 5 * 60 * 1000;

export type Caller = { kind: "service" } | { kind: "user"; userId: string };

export async function authenticate(req: Request, rawBody: string): Promise<Caller> {
  const signature = req.headers.get("x-sltr-signature");
  if (signature !== null) {
    const secrets = env().presenceWebhookSecrets;
    if (secrets.length === 0) {
      console.error(JSON.stringify({
        level: "error",
        function: "presence-webhook",
        error: "PRESENCE_WEBHOOK_SECRETS is not set",
      }));
      throw new HttpError(500, "webhook_not_configured", "Signed batches are not configured.");
    }
    await verifySignature(signature, rawBody, secrets);
    return { kind: "service" };
  }
  if (!req.headers.get("authorization")) {
    throw new HttpError(
      401,
      "missing_credentials",
      "Sign the batch (x-sltr-signature) or send a user's JWT (Authorization: Bearer).",
    );
  }
  const claims = await requireUser(req);
  return { kind: "user", userId: claims.sub.toLowerCase() };
}

// RFC 3339 with an explicit offset; up to nanoseconds are accepted, microseconds are kept
// (what Postgres stores), so the database and Redis compare exactly the same instants.
const TIMESTAMP =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/** The canonical form `YYYY-MM-DDTHH:MM:SS.ffffffZ` (sorts as text), or undefined. */
export function canonicalTimestamp(text: string, nowMs = Date.now()): string | undefined {
  const m = TIMESTAMP.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac = "", , sign, oh, om] = m;
  const local = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s);
  const back = new Date(local);
  if (
    +y < 2000 || back.getUTCMonth() !== +mo - 1 || back.getUTCDate() !== +d ||
    back.getUTCHours() !== +h || back.getUTCMinutes() !== +mi || back.getUTCSeconds() !== +s ||
    (sign !== undefined && (+oh > 23 || +om > 59))
  ) return undefined;
  const offsetMs = sign === undefined ? 0 : (sign === "-" ? -1 : 1) * (+oh * 60 + +om) * 60_000;
  const utc = local - offsetMs;
  if (utc > nowMs + MAX_FUTURE_MS) return undefined;
  return `${new Date(utc).toISOString().slice(0, 19)}.${frac.padEnd(6, "0").slice(0, 6)}Z`;
}

// Strict: an unknown field is refused, not dropped, so a typo ("latitude") is an error the
// sender sees instead of a location silently lost.
const eventSchema = z.strictObject({
  user_id: z.guid({ error: "user_id must be a uuid" }).transform((id) => id.toLowerCase())
    .optional(),
  status: z.enum(["online", "offline"], { error: 'status must be "online" or "offline"' }),
  at: z.string({ error: "at must be an ISO-8601 timestamp" }).transform((text, ctx) => {
    const at = canonicalTimestamp(text);
    if (at === undefined) {
      ctx.issues.push({
        code: "custom",
        input: text,
        message:
          "at must be an ISO-8601 date-time with a time zone, after 2000 and at most 5 minutes in the future",
      });
      return z.NEVER;
    }
    return at;
  }),
  lat: z.number({ error: "lat must be a number" })
    .min(-90, { error: "lat must be between -90 and 90" })
    .max(90, { error: "lat must be between -90 and 90" })
    .nullish(),
  lng: z.number({ error: "lng must be a number" })
    .min(-180, { error: "lng must be between -180 and 180" })
    .max(180, { error: "lng must be between -180 and 180" })
    .nullish(),
}).refine((e) => (e.lat == null) === (e.lng == null), {
  path: ["lat"],
  error: "lat and lng go together: send both or neither",
});

const bodySchema = z.strictObject({
  events: z.array(eventSchema, { error: "events must be an array" })
    .min(1, { error: "events must hold at least one event" }),
});

function errorCodeFor(path: PropertyKey[]): string {
  const field = path[path.length - 1];
  if (field === "lat" || field === "lng") return "invalid_location";
  if (field === "at") return "invalid_timestamp";
  return "invalid_body";
}

/** Validates the body for this caller: 400 malformed, 413 too many events, 403 not yours. */
export function parseEvents(body: unknown, caller: Caller): PresenceEvent[] {
  const max = caller.kind === "service" ? MAX_SERVICE_EVENTS : MAX_SELF_EVENTS;
  const count = (body as { events?: unknown })?.events;
  if (Array.isArray(count) && count.length > max) {
    throw new HttpError(
      413,
      "too_many_events",
      `At most ${max} events per request (got ${count.length}).`,
    );
  }
  const parsed = bodySchema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`)
      .join("").replace(/^\./, "");
    throw new HttpError(
      400,
      errorCodeFor(issue.path),
      where ? `${where}: ${issue.message}` : issue.message,
    );
  }
  return parsed.data.events.map((e, i) => {
    let userId = e.user_id;
    if (caller.kind === "user") {
      if (userId !== undefined && userId !== caller.userId) {
        throw new HttpError(
          403,
          "not_your_presence",
          `events[${i}]: a user may only report their own presence.`,
        );
      }
      userId = caller.userId;
    } else if (userId === undefined) {
      throw new HttpError(400, "invalid_body", `events[${i}].user_id: required in signed batches`);
    }
    const event: PresenceEvent = { user_id: userId, status: e.status, at: e.at };
    if (e.lat != null && e.lng != null) Object.assign(event, { lat: e.lat, lng: e.lng });
    return event;
  });
}
