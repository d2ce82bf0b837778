// Keeping the live index true to Postgres: a cold or emptied Redis is rebuilt from Postgres a
// page of users at a time; every minute an online-only snapshot reconciles it (repairing writes
// lost while Redis or the webhook's write-through failed). Both run in the background of
// whichever read finds them due (the read's own script takes a lock in Redis, so it is one at a
// time across processes: live_index.ts, Readiness), outside that request's statement count:
// their database load is their own (sltr_live_index_*).
//
// Why pages: on hosted, this work runs inside the request isolate that found it due, which gets
// 2 s of CPU (150 s / 400 s of wall clock, 256 MB). One rebuild of a million users cost 3.6 s
// of CPU, 27 s and 187 MB (bench/rebuild.ts, 2026-12-07): it would be killed every time and the
// index would stay cold. A page of REBUILD_PAGE_ROWS users costs a tenth of that; the next
// read that finds the index cold takes the next page, from where the last one stopped
// ({live}:rebuild), until the last page builds the index.
import type { Redis } from "ioredis";
import { query } from "./db.ts";
import { env } from "./env.ts";
import { freshReadQuery } from "./replica.ts";
import {
  BUILT,
  forget,
  load,
  PRIVACY_SYNC,
  type PrivacyDue,
  prune,
  type Readiness,
  REBUILD_ONLINE,
  REBUILD_STATE,
  REBUILDING,
  RECONCILE_SECONDS,
  RECONCILED,
  redisMicros,
  type SnapshotRow,
} from "./live_index.ts";
import { syncPrivacy } from "./live_index_privacy.ts";
import { recordIndexSync, recordPrivacyWait } from "./metrics.ts";
import { connected, tryRedis, tryWrite, writer } from "./redis.ts";
import { countStatement, outsideRequest } from "./request.ts";

/** Rows a query streams at a time: a page never sits in memory at once, and Redis takes them
 * in scripts of 500 between reads. */
const CHUNK_ROWS = 5000;
/** How long one step may take, streaming included (the rebuild lock lasts 120 s). A request's
 * 5 s deadline is for a request's own statements. */
const SYNC_DEADLINE_MS = 110_000;
/** A rebuild left half-done this long (nobody read since) starts again from the beginning. */
const REBUILD_STATE_SECONDS = 600;
const BEFORE_EVERY_ID = "00000000-0000-0000-0000-000000000000";

type Loaded = { rows: number; online: string[]; last?: string };

/** Rows of a query into the index, chunk by chunk: how many, who was online, the last id. */
async function loadAll(q: AsyncIterable<SnapshotRow[]>, r: Redis): Promise<Loaded> {
  const out: Loaded = { rows: 0, online: [] };
  for await (const chunk of q) {
    await load(r, chunk);
    out.rows += chunk.length;
    for (const row of chunk) if (row.is_online) out.online.push(row.user_id);
    if (chunk.length) out.last = chunk[chunk.length - 1].user_id;
  }
  return out;
}

/** Starts the upkeep a read was given (see Readiness): the rebuild or the reconciliation. */
export function keepIndexTrue(state: Readiness): void {
  // The work itself goes through the writer connection (longer timeouts), in short scripts
  // that keep Redis free for the reads in between.
  const w = writer();
  if (!w || (state !== "rebuild" && state !== "reconcile")) return;
  background(REBUILDING, async () => {
    // A fresh process's writer connection may still be opening; after an outage the reads'
    // connection can be back before it (each retries on its own backoff, at most 1 s).
    if (!(await connected(w, 3000, { reconnecting: true }))) {
      throw new Error("the Redis writer connection is not ready");
    }
    await (state === "rebuild" ? rebuild(w) : reconcile(w));
  });
}

/** The longest a read waits for the safety controls' sync. */
const PRIVACY_WAIT_MS = 300;

/** The safety controls' sync a read was given (PrivacyDue, live_index_privacy.ts): started in
 * the background, or run now, when none ran for a second (the caller then reads again: its
 * answer may predate a change). Returns whether it ran now. */
export async function keepPrivacyTrue(due: PrivacyDue | undefined): Promise<boolean> {
  const w = writer();
  if (!due || !w) return false;
  if (due === "bg") {
    background(PRIVACY_SYNC, () => syncPrivacy(w), { keepLockOnFailure: true });
    return false;
  }
  // The sync runs as upkeep (its own deadline, a failure keeps the lock for its 2 s, so that
  // with Postgres down the next reads do not wait too); this read waits for it a moment, and
  // counts the wait as a statement of its own: it is not a hit.
  countStatement();
  const done = background(PRIVACY_SYNC, () => syncPrivacy(w), { keepLockOnFailure: true });
  const synced = await Promise.race([
    done,
    new Promise<false>((resolve) => setTimeout(() => resolve(false), PRIVACY_WAIT_MS)),
  ]);
  recordPrivacyWait(synced ? "synced" : "answered_before");
  return synced;
}

/** Lets the next request take `lock`, through whichever connection is up. */
async function release(lock: string): Promise<void> {
  const released = await tryWrite((r) => r.del(lock));
  if (!released) await tryRedis((r) => r.del(lock));
}

/** Runs `work` outside the request that started it; resolves whether it succeeded. */
function background(
  lock: string,
  work: () => Promise<void>,
  { keepLockOnFailure = false } = {},
): Promise<boolean> {
  return outsideRequest(() => {
    const done = work().then(() => true, async (e) => {
      // Let the next request try again: a rebuild lock left behind keeps the index cold for
      // its 120 s.
      if (!keepLockOnFailure) await release(lock);
      console.error(
        JSON.stringify({ level: "error", msg: "live index sync failed", lock, error: String(e) }),
      );
      return false;
    });
    // The hosted Edge Runtime keeps the worker alive for it.
    (globalThis as { EdgeRuntime?: { waitUntil(p: Promise<unknown>): void } }).EdgeRuntime
      ?.waitUntil(done);
    return done;
  });
}

/** One step of the rebuild: the next page of users into the index. The step that reads the
 * last page then takes out whom the index has online and no page had (unless the webhook wrote
 * them since the first page began: PRUNE) and marks the index built; the others let the lock
 * go, so the next read that finds the index cold takes the next page. Returns whether the
 * index is built. Primary reads: every read waits for it (the index is cold until it ends),
 * never queued behind the replica's reads or its fence. */
export async function rebuild(r: Redis): Promise<boolean> {
  const started = performance.now();
  const pageRows = env().liveIndexRebuildPageRows;
  const [taken, after, done] = await r.hmget(REBUILD_STATE, "taken_at", "after", "rows");
  const takenAt = taken ? Number(taken) : await redisMicros(r);
  if (!taken) await r.del(REBUILD_ONLINE);
  const page = await query(
    (sql) =>
      loadAll(
        sql<SnapshotRow[]>`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                           from private.live_index_snapshot_page(
                             ${after ?? BEFORE_EVERY_ID}::uuid, ${pageRows}::int)`
          .cursor(CHUNK_ROWS),
        r,
      ),
    "live_index_rebuild",
    SYNC_DEADLINE_MS,
  );
  const rows = Number(done ?? 0) + page.rows;
  const progress = r.multi();
  for (let i = 0; i < page.online.length; i += CHUNK_ROWS) {
    progress.sadd(REBUILD_ONLINE, ...page.online.slice(i, i + CHUNK_ROWS));
  }
  const last = page.rows < pageRows;
  if (!last) {
    await progress
      .hset(REBUILD_STATE, "taken_at", takenAt, "after", page.last!, "rows", rows)
      .expire(REBUILD_STATE, REBUILD_STATE_SECONDS).expire(REBUILD_ONLINE, REBUILD_STATE_SECONDS)
      .del(REBUILDING).exec();
    recordIndexSync("rebuild", page.rows, (performance.now() - started) / 1000, false);
    return false;
  }
  await progress.exec();
  await prune(r, takenAt, await r.smembers(REBUILD_ONLINE));
  // The safety controls before the index answers anyone.
  await syncPrivacy(r, { full: true });
  await r.multi().set(BUILT, String(takenAt)).set(RECONCILED, "1", "EX", RECONCILE_SECONDS)
    .del(REBUILD_STATE, REBUILD_ONLINE, REBUILDING).exec();
  recordIndexSync("rebuild", page.rows, (performance.now() - started) / 1000, true);
  return true;
}

/** The users online in Postgres into the index, and out of it who is not. A reconciliation
 * reads the replica once it has caught up with this moment (freshReadQuery), so that the
 * snapshot holds every write that happened before `takenAt`, as PRUNE assumes; a replica
 * failing half-way leaves the rest to the primary, from the start (LOAD never undoes a newer
 * write). */
export async function reconcile(r: Redis): Promise<void> {
  const started = performance.now();
  const takenAt = await redisMicros(r);
  const { rows, online } = await freshReadQuery(
    (sql) =>
      loadAll(
        sql<SnapshotRow[]>`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                           from private.live_index_snapshot()`.cursor(CHUNK_ROWS),
        r,
      ),
    "live_index_reconcile",
    SYNC_DEADLINE_MS,
  );
  await prune(r, takenAt, online);
  recordIndexSync("reconcile", rows, (performance.now() - started) / 1000, true);
}

/** Names and cells the index lacks for some users (the webhook asks after its writes); ids
 * Postgres does not know (events for unknown users, which ingest_presence ignored) go. On the
 * primary: it reads the webhook's own write, which the replica may not have yet. */
export async function fill(r: Redis, userIds: string[]): Promise<void> {
  if (!userIds.length) return;
  const rows = await query(
    (sql) =>
      sql<SnapshotRow[]>`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                         from private.live_index_snapshot(false, ${userIds}::uuid[])`,
    "live_index_fill",
  );
  await load(r, rows);
  const known = new Set(rows.map((row) => row.user_id));
  await forget(r, userIds.filter((id) => !known.has(id)));
}
