// Keeping the live index true to Postgres: a cold or emptied Redis is rebuilt from one snapshot
// of every user; every minute an online-only snapshot reconciles it (repairing writes lost
// while Redis or the webhook's write-through failed). Both run in the background of whichever
// request finds them due (a lock in Redis makes it one at a time, across processes), outside
// that request's statement count: their database load is their own (sltr_live_index_*).
import type { Redis } from "ioredis";
import { query } from "./db.ts";
import { BUILT, forget, load, prune, type SnapshotRow } from "./live_index.ts";
import { recordIndexSync } from "./metrics.ts";
import { writer } from "./redis.ts";
import { outsideRequest } from "./request.ts";

const REBUILD_LOCK = "{live}:rebuilding";
const RECONCILE_LOCK = "{live}:reconciled";
/** How often the index is reconciled with Postgres. */
export const RECONCILE_SECONDS = 60;

/** One snapshot. Three statements, not one with arguments, so pg_stat_statements tells the
 * rebuild, the reconciliation and the webhook's fill apart. */
async function snapshot(kind: "rebuild" | "reconcile" | "fill", userIds?: string[]) {
  return await query(
    (sql) =>
      kind === "rebuild"
        ? sql<
          SnapshotRow[]
        >`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                            from private.live_index_snapshot(false)`
        : kind === "reconcile"
        ? sql<
          SnapshotRow[]
        >`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                            from private.live_index_snapshot()`
        : sql<
          SnapshotRow[]
        >`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                            from private.live_index_snapshot(false, ${userIds!}::uuid[])`,
    `live_index_${kind}`,
  );
}

/** Whether the index has been built; if not, starts (or waits for another process's) rebuild.
 * When built, starts the minute's reconciliation if it is due. */
export async function indexReady(r: Redis): Promise<boolean> {
  const built = await r.get(BUILT);
  // The work itself goes through the writer connection (longer timeouts), in short scripts
  // that keep Redis free for the reads in between.
  const w = writer() ?? r;
  if (built === null) {
    if (await r.set(REBUILD_LOCK, "1", "EX", 120, "NX")) background(() => rebuild(w));
    return false;
  }
  if (await r.set(RECONCILE_LOCK, "1", "EX", RECONCILE_SECONDS, "NX")) {
    background(() => reconcile(w));
  }
  return true;
}

function background(work: () => Promise<void>): void {
  outsideRequest(() => {
    const done = work().catch(async (e) => {
      await writer()?.del(REBUILD_LOCK).catch(() => 0); // let the next request try again
      console.error(
        JSON.stringify({ level: "error", msg: "live index sync failed", error: String(e) }),
      );
    });
    // The hosted Edge Runtime keeps the worker alive for it.
    (globalThis as { EdgeRuntime?: { waitUntil(p: Promise<unknown>): void } }).EdgeRuntime
      ?.waitUntil(done);
  });
}

/** Every user from one snapshot, then who is no longer online. */
export async function rebuild(r: Redis): Promise<void> {
  const started = performance.now();
  const takenAt = (Date.now() - 1000) * 1000;
  const rows = await snapshot("rebuild");
  await load(r, rows);
  await prune(r, takenAt, rows.filter((row) => row.is_online).map((row) => row.user_id));
  await r.multi().set(BUILT, String(takenAt)).set(RECONCILE_LOCK, "1", "EX", RECONCILE_SECONDS)
    .del(REBUILD_LOCK).exec();
  recordIndexSync("rebuild", rows.length, (performance.now() - started) / 1000);
}

/** The users online in Postgres into the index, and out of it who is not. */
export async function reconcile(r: Redis): Promise<void> {
  const started = performance.now();
  const takenAt = (Date.now() - 1000) * 1000;
  const rows = await snapshot("reconcile");
  await load(r, rows);
  await prune(r, takenAt, rows.map((row) => row.user_id));
  recordIndexSync("reconcile", rows.length, (performance.now() - started) / 1000);
}

/** Names and cells the index lacks for some users (the webhook asks after its writes); ids
 * Postgres does not know (events for unknown users, which ingest_presence ignored) go. */
export async function fill(r: Redis, userIds: string[]): Promise<void> {
  if (!userIds.length) return;
  const rows = await snapshot("fill", userIds);
  await load(r, rows);
  const known = new Set(rows.map((row) => row.user_id));
  await forget(r, userIds.filter((id) => !known.has(id)));
}
