// The read replica against the running stack (docs/replica.md): the live index's
// reconciliation reads its snapshot from the replica, and that snapshot still holds a write
// made on the primary a moment before; a replica whose replay is paused (lagging) serves
// nothing, and the snapshot comes from the primary instead, just as complete; resumed, the
// replica serves again. (The replica stopped outright is a fault test: tests/faults.)
import assert from "node:assert/strict";
import { sample, scrape } from "../_lib/metrics.ts";
import postgres from "postgres";
import { Redis } from "ioredis";
import { DB_URL, FUNCTIONS_URL, REDIS_URL, REPLICA_DB_URL } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { sleep, test } from "../_lib/harness.ts";
import { forget } from "../../functions/_shared/live_index.ts";

const value = (text: string, series: string) => sample(text, series) ?? 0;
const db = postgres(DB_URL, { max: 2, onnotice: () => {} });
const replica = postgres(REPLICA_DB_URL!, { max: 1, onnotice: () => {} });
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
const EMAIL_DOMAIN = "replica.test";

const reads = (text: string, route: string) => value(text, `sltr_db_reads_total{route="${route}"}`);
const reconciliations = (text: string) =>
  value(text, 'sltr_live_index_syncs_total{kind="reconcile"}');

async function waitFor(what: string, ok: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const until = performance.now() + ms;
  while (!(await ok())) {
    if (performance.now() > until) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}

// One user of our own, with strictly increasing event times.
const userId = crypto.randomUUID();
let lastAt = Date.now();
const nextAt = () => new Date(lastAt = Math.max(Date.now(), lastAt + 1)).toISOString();

/** Online in Postgres only, as if the webhook's write-through to the index had failed. */
async function onlineInPostgresOnly(): Promise<void> {
  await db`select private.ingest_presence(${
    db.json([{ user_id: userId, status: "online", at: nextAt(), lat: 1.5, lng: -30.5 }])
  })`;
}

/** Offline everywhere, through the real webhook (the user's own report). */
async function offline(): Promise<void> {
  const res = await fetch(`${FUNCTIONS_URL}/presence-webhook`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${await userJwt(userId)}`,
      "content-type": "application/json",
    },
    body: JSON.stringify({ events: [{ status: "offline", at: nextAt() }] }),
  });
  assert.equal(res.status, 202, await res.text());
}

const indexedOnline = async () => (await redis.hget(`{live}:user:${userId}`, "o")) === "1";

/** Makes the reconciliation due and lets a read start it; returns once it has run. */
async function reconcile(): Promise<void> {
  const before = reconciliations(await scrape());
  await redis.del("{live}:reconciled");
  const res = await fetch(`${FUNCTIONS_URL}/online-status`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${await userJwt(userId)}`,
      "content-type": "application/json",
    },
    body: JSON.stringify({ user_ids: [userId] }),
  });
  assert.equal(res.status, 200, await res.text());
  await waitFor("the reconciliation", async () => reconciliations(await scrape()) > before);
}

test("setup_a_user_offline_in_postgres_and_in_the_index", async () => {
  await db.begin(async (tx) => {
    await tx`insert into auth.users (id, aud, role, email)
             values (${userId}, 'authenticated', 'authenticated', ${`${userId}@${EMAIL_DOMAIN}`})`;
    await tx`insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
             values (${userId}, 'replica-test', false, 1.5, -30.5, now())`;
  });
  await offline();
  assert.equal(await indexedOnline(), false);
  // A built index (a cold one is rebuilt, not reconciled): reads build it if it is not.
  await waitFor("the live index built", async () => {
    await fetch(`${FUNCTIONS_URL}/online-status`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${await userJwt(userId)}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({ user_ids: [userId] }),
    }).then((r) => r.body?.cancel());
    return (await redis.exists("{live}:built")) === 1;
  }, 120_000);
});

test("the_reconciliation_reads_the_replica_and_its_snapshot_holds_a_write_made_just_before", async () => {
  await waitFor("the replica serving reads", async () => {
    const m = await scrape();
    return value(m, "sltr_db_replica_up") === 1 && value(m, "sltr_db_replica_lag_seconds") < 0.5;
  });
  const before = await scrape();
  await onlineInPostgresOnly();
  assert.equal(await indexedOnline(), false, "the index missed the write");
  await reconcile();
  const after = await scrape();
  assert.ok(await indexedOnline(), "the reconciliation found the write");
  assert.ok(reads(after, "replica") > reads(before, "replica"), "it read the replica");
  assert.ok(
    value(after, 'sltr_db_query_duration_seconds_count{query="replica_fence",outcome="ok"}') >
      value(before, 'sltr_db_query_duration_seconds_count{query="replica_fence",outcome="ok"}'),
    "after waiting until the replica had replayed the primary's position",
  );
  await offline();
});

test("a_lagging_replica_serves_nothing_and_the_snapshot_comes_from_the_primary", async () => {
  await replica`select pg_wal_replay_pause()`;
  try {
    await onlineInPostgresOnly(); // WAL the replica receives and does not replay
    await waitFor(
      "the functions seeing the lag",
      async () => value(await scrape(), "sltr_db_replica_lag_seconds") > 0.5,
    );
    const before = await scrape();
    await reconcile();
    const after = await scrape();
    assert.ok(await indexedOnline(), "the snapshot holds the write the replica has not replayed");
    assert.equal(reads(after, "replica"), reads(before, "replica"), "nothing read the replica");
    assert.ok(
      reads(after, "primary_replica_lagging") > reads(before, "primary_replica_lagging"),
      "the snapshot went to the primary, because the replica lagged",
    );
  } finally {
    await replica`select pg_wal_replay_resume()`;
  }
  await offline();
  await waitFor("the replica caught up", async () => {
    const m = await scrape();
    return value(m, "sltr_db_replica_up") === 1 && value(m, "sltr_db_replica_lag_seconds") < 0.5;
  });
  const before = await scrape();
  await onlineInPostgresOnly();
  await reconcile();
  assert.ok(await indexedOnline());
  assert.ok(reads(await scrape(), "replica") > reads(before, "replica"), "resumed, it serves");
});

test("teardown", async () => {
  await offline();
  await db`delete from auth.users where id = ${userId}`;
  await forget(redis, [userId]);
  await Promise.all([db.end(), replica.end()]);
  redis.disconnect();
});
