// POST /functions/v1/presence-webhook: presence events in, one batch RPC, the live index
// written through.
//   service batches: x-sltr-signature (HMAC of the raw body), any users, <= 1,000 events
//   self-reports:    Authorization: Bearer <user JWT>, the caller's own events, <= 10 events
// Order: 405, 413 (body size), 401 (who), 400 (what), 413 (event count), 403 (whose), then
// private.ingest_presence. 202 {"accepted", "ignored"} only once the batch is committed in
// Postgres (the record); Redis is written after that, and a failure there is only reported
// ("degraded": true). validation.ts says what is accepted, write_through.ts what Redis gets.
// The write path, end to end: docs/write-path.md.
import type postgres from "postgres";
import { query } from "../_shared/db.ts";
import { HttpError, json, parseJson, readBody, requireMethod, serveJson } from "../_shared/http.ts";
import { recordPresenceEvents } from "../_shared/metrics.ts";
import type { PresenceEvent } from "../_shared/presence.ts";
import { tryRedis, writer } from "../_shared/redis.ts";
import { env } from "../_shared/env.ts";
import { rateLimited, take } from "../_shared/quota.ts";
import { authenticate, MAX_BODY_BYTES, parseEvents } from "./validation.ts";
import { writeThrough } from "./write_through.ts";

export type { PresenceEvent };
export {
  canonicalTimestamp,
  MAX_BODY_BYTES,
  MAX_SELF_EVENTS,
  MAX_SERVICE_EVENTS,
} from "./validation.ts";

interface IngestResult {
  accepted: number;
  ignored: number;
}

async function ingest(events: PresenceEvent[]): Promise<IngestResult> {
  try {
    const [row] = await query(
      (sql) =>
        sql<{ result: IngestResult }[]>`select private.ingest_presence(${
          sql.json(events as unknown as postgres.JSONValue)
        }) as result`,
      "ingest_presence",
    );
    return row.result;
  } catch (e) {
    const code = (e as { code?: unknown })?.code;
    // The edge validates first; this is the database's own check agreeing (22xxx: bad data).
    if (typeof code === "string" && code.startsWith("22")) {
      throw new HttpError(400, "invalid_body", (e as Error).message);
    }
    // A user deleted between the batch's lookup and its insert (23503), or a lock conflict:
    // the statement rolled back whole, and the same batch succeeds when sent again.
    if (code === "23503" || code === "40001" || code === "40P01") {
      throw new HttpError(
        503,
        "conflict_retry",
        "The batch met a concurrent change and nothing was stored; send it again.",
        { "retry-after": "1" },
      );
    }
    throw e;
  }
}

/** A user's own reports are rate limited (a service's batches are not): 429 beyond it. */
async function selfReportQuota(userId: string): Promise<void> {
  const quota = env().quotas.selfReport;
  const wait = await tryRedis((r) => take(r, quota, userId));
  if (wait.ok && wait.value > 0) throw rateLimited(quota, wait.value);
}

export const handler = serveJson("presence-webhook", async (req) => {
  requireMethod(req, "POST");
  writer(); // on a cold start, connects while the request is checked and stored
  let result: IngestResult;
  let events: PresenceEvent[] | undefined;
  try {
    const raw = await readBody(req, MAX_BODY_BYTES);
    const caller = await authenticate(req, raw);
    events = parseEvents(parseJson(raw), caller);
    if (caller.kind === "user") await selfReportQuota(caller.userId);
    result = await ingest(events);
  } catch (e) {
    // Refused requests count their events when they could be read, else one.
    if (e instanceof HttpError && e.status < 500) {
      recordPresenceEvents("rejected", events?.length ?? 1);
    }
    throw e;
  }
  recordPresenceEvents("accepted", result.accepted);
  recordPresenceEvents("ignored", result.ignored);
  // Every event goes to the index: the index's own guard keeps each user's newest, as
  // ingest_presence does, so an ignored stale event changes nothing there either.
  const cached = result.accepted > 0 ? await writeThrough(events) : true;
  const body = { accepted: result.accepted, ignored: result.ignored };
  return json(cached ? body : { ...body, degraded: true }, 202);
});
