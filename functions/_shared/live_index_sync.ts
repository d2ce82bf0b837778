// Keeping the live index true to Postgres: a cold or emptied Redis is rebuilt from one snapshot
// of every user; every minute an online-only snapshot reconciles it (repairing writes lost
// while Redis or the webhook's write-through failed). Both run in the background of whichever
// read finds them due (the read's own script takes a lock in Redis, so it is one at a time
// across processes: live_index.ts, Readiness), outside that request's statement count: their
// database load is their own (sltr_live_index_*).
import type { Redis } from "ioredis";
import { query } from "./db.ts";
import { freshReadQuery } from "./replica.ts";
import {
  BUILT,
  forget,
  load,
  prune,
  type Readiness,
  REBUILDING,
  RECONCILE_SECONDS,
  RECONCILED,
  redisMicros,
  type SnapshotRow,
} from "./live_index.ts";
import { recordIndexSync } from "./metrics.ts";
import { connected, writer } from "./redis.ts";
import { outsideRequest } from "./request.ts";

/** Rows a snapshot streams at a time: a million users never sit in memory at once (an Edge
 * Function has 256 MB), and Redis takes them in scripts of 500 between reads. */
const CHUNK_ROWS = 5000;
/** How long a rebuild or reconciliation may take, streaming included (the rebuild lock lasts
 * 120 s). A request's 5 s deadline would fail every rebuild of a million users. */
const SYNC_DEADLINE_MS = 110_000;

/** A whole snapshot into the index, chunk by chunk; returns how many rows and who was online.
 * Two statements, not one with an argument, so pg_stat_statements tells them apart. A
 * reconciliation reads the replica once it has caught up with this moment (freshReadQuery), so
 * that the snapshot holds every write that happened before `takenAt`, as PRUNE assumes; a
 * replica failing half-way leaves the rest to the primary, from the start (LOAD never undoes a
 * newer write). */
async function stream(kind: "rebuild" | "reconcile", r: Redis) {
  // A rebuild is what every read waits for (the index is cold until it ends): the primary's,
  // never queued behind the replica's reads or its fence. The minute's reconciliation, in the
  // background, is the replica's.
  const read = kind === "rebuild" ? query : freshReadQuery;
  return await read(
    async (sql) => {
      let rows = 0;
      const online: string[] = [];
      const q = kind === "rebuild"
        ? sql<
          SnapshotRow[]
        >`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                           from private.live_index_snapshot(false)`
        : sql<
          SnapshotRow[]
        >`select user_id, display_name, is_online, last_seen_at, cell_lat, cell_lng
                           from private.live_index_snapshot()`;
      for await (const chunk of q.cursor(CHUNK_ROWS)) {
        await load(r, chunk);
        rows += chunk.length;
        for (const row of chunk) if (row.is_online) online.push(row.user_id);
      }
      return { rows, online };
    },
    `live_index_${kind}`,
    SYNC_DEADLINE_MS,
  );
}

/** Starts the upkeep a read was given (see Readiness): the rebuild or the reconciliation. */
export function keepIndexTrue(state: Readiness): void {
  // The work itself goes through the writer connection (longer timeouts), in short scripts
  // that keep Redis free for the reads in between.
  const w = writer();
  if (!w || (state !== "rebuild" && state !== "reconcile")) return;
  background(async () => {
    // A fresh process's writer connection may still be opening.
    if (!(await connected(w, 2000))) throw new Error("the Redis writer connection is not ready");
    await (state === "rebuild" ? rebuild(w) : reconcile(w));
  });
}

function background(work: () => Promise<void>): void {
  outsideRequest(() => {
    const done = work().catch(async (e) => {
      await writer()?.del(REBUILDING).catch(() => 0); // let the next request try again
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
  const takenAt = await redisMicros(r);
  const { rows, online } = await stream("rebuild", r);
  await prune(r, takenAt, online);
  await r.multi().set(BUILT, String(takenAt)).set(RECONCILED, "1", "EX", RECONCILE_SECONDS)
    .del(REBUILDING).exec();
  recordIndexSync("rebuild", rows, (performance.now() - started) / 1000);
}

/** The users online in Postgres into the index, and out of it who is not. */
export async function reconcile(r: Redis): Promise<void> {
  const started = performance.now();
  const takenAt = await redisMicros(r);
  const { rows, online } = await stream("reconcile", r);
  await prune(r, takenAt, online);
  recordIndexSync("reconcile", rows, (performance.now() - started) / 1000);
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
