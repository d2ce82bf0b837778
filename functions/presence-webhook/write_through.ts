// After the commit: the batch into the Redis live index, in one script
// (functions/_shared/live_index.ts), and what the index lacks (names, cells of users who came
// online without a location) from Postgres. A failure here is reported, never raised: the
// events are committed either way, and the minute's reconciliation repairs the index.
import type { PresenceEvent } from "../_shared/presence.ts";
import { fill } from "../_shared/live_index_sync.ts";
import { micros, writeEvents } from "../_shared/live_index.ts";
import { tryWrite } from "../_shared/redis.ts";

/** Returns false when Redis could not be written. */
export async function writeThrough(events: PresenceEvent[]): Promise<boolean> {
  return await tryWrite(async (r) => {
    const needs = await writeEvents(
      r,
      events.map((e) => ({
        user_id: e.user_id,
        online: e.status === "online",
        at: micros(e.at),
        lat: e.lat,
        lng: e.lng,
      })),
    );
    await fill(r, needs);
  });
}
