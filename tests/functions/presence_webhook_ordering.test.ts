// The presence webhook keeps each user's newest event: unknown users and older events ignored,
// out-of-order and concurrent batches, microsecond times, a batch racing a user's deletion.
import assert from "node:assert/strict";
import { forget, writeEvents } from "../../functions/_shared/live_index.ts";
import { test } from "../_lib/harness.ts";
import {
  Answer,
  cached,
  createUsers,
  db,
  ev,
  Event,
  expectError,
  held,
  heldOne,
  postSigned,
  redis,
  removeLeftovers,
  teardown,
} from "./_presence_webhook.ts";

test("setup_removes_users_left_by_an_interrupted_earlier_run", removeLeftovers);

test("ignores_unknown_users_and_events_older_than_the_state_held", async () => {
  const now = Date.now();
  const [flushed] = await createUsers(1, { isOnline: false, lastSeenAt: new Date(now - 60_000) });
  const [buffered] = await createUsers(1);
  assert.deepEqual((await postSigned({ events: [ev(buffered, "online", now - 10_000)] })).body, {
    accepted: 1,
    ignored: 0,
  });
  const res = await postSigned({
    events: [
      ev(flushed, "online", now - 120_000), // older than profiles.last_seen_at
      ev(buffered, "offline", now - 20_000), // older than the buffered event
      ev(buffered, "offline", now - 10_000), // same time: a replay, not newer
      ev(crypto.randomUUID(), "online", now),
    ],
  });
  assert.deepEqual(res.body, { accepted: 0, ignored: 4 });
  assert.deepEqual(await heldOne(flushed), {
    is_online: false,
    last_seen_at: now - 60_000,
    latitude: null,
    longitude: null,
  });
  assert.equal((await heldOne(buffered)).is_online, true);
  assert.equal((await cached(buffered))?.is_online, true, "Redis keeps the newer event");
});

test("out_of_order_events_end_in_the_newest_state", async () => {
  const ids = await createUsers(5);
  const now = Date.now();
  // Within one batch, shuffled: per user the newest event wins wherever it sits.
  const events = ids.flatMap((id, i) => [
    ev(id, i % 2 ? "online" : "offline", now - 1000),
    ev(id, "online", now - 30_000),
    ev(id, "offline", now - 20_000),
  ]).sort(() => Math.random() - 0.5);
  assert.deepEqual((await postSigned({ events })).body, { accepted: 15, ignored: 0 });
  // A late batch of older events changes nothing, in Postgres or in Redis.
  const late = await postSigned({ events: ids.map((id) => ev(id, "online", now - 5000)) });
  assert.deepEqual(late.body, { accepted: 0, ignored: 5 });
  const state = await held(ids);
  for (const [i, id] of ids.entries()) {
    assert.equal(state.get(id)!.is_online, i % 2 === 1, id);
    assert.equal(state.get(id)!.last_seen_at, now - 1000, id);
    assert.equal((await cached(id))?.is_online, i % 2 === 1, `redis ${id}`);
  }
  // Partly new, partly stale: the new part lands, the stale part cannot overwrite Redis.
  const mixed = await postSigned({
    events: [ev(ids[0], "online", now - 500), ev(ids[1], "offline", now - 60_000)],
  });
  assert.deepEqual(mixed.body, { accepted: 1, ignored: 1 });
  assert.equal((await cached(ids[0]))?.is_online, true);
  assert.equal((await cached(ids[1]))?.is_online, true, "the ignored event left Redis alone");
});

test("twenty_concurrent_batches_for_overlapping_users_keep_each_users_newest_event", async () => {
  const ids = await createUsers(20);
  const now = Date.now();
  // 400 distinct times over the last 200 s, dealt at random to (batch, user) pairs.
  const times = Array.from({ length: 400 }, (_, i) => now - i * 500).sort(() =>
    Math.random() - 0.5
  );
  const batches = Array.from({ length: 20 }, (_, b) => ({
    events: ids.map((id, u) =>
      ev(id, Math.random() < 0.5 ? "online" : "offline", times[b * 20 + u])
    )
      .sort(() => Math.random() - 0.5),
  }));
  const expected = new Map<string, Event>();
  for (const e of batches.flatMap((b) => b.events)) {
    const seen = expected.get(e.user_id!);
    if (!seen || e.at > seen.at) expected.set(e.user_id!, e);
  }
  const answers = await Promise.all(batches.map((b) => postSigned(b)));
  for (const a of answers) assert.equal(a.status, 202, JSON.stringify(a.body));
  const total = answers.reduce((n, a) => n + a.body.accepted + a.body.ignored, 0);
  assert.equal(total, 400);
  const state = await held(ids);
  for (const id of ids) {
    const e = expected.get(id)!;
    assert.equal(state.get(id)!.last_seen_at, Date.parse(e.at), id);
    assert.equal(state.get(id)!.is_online, e.status === "online", id);
    const key = await cached(id);
    assert.equal(key && Date.parse(key.last_seen_at), Date.parse(e.at), `redis ${id}`);
    assert.equal(key?.is_online, e.status === "online", `redis ${id}`);
  }
});

test("the_index_keeps_each_users_newest_event_to_the_microsecond", async () => {
  const id = crypto.randomUUID();
  const t = Date.parse("2026-11-25T12:00:00.500Z") * 1000;
  const write = (online: boolean, us: number) =>
    writeEvents(redis, [{ user_id: id, online, at: us, lat: 52.52, lng: 13.405 }]);
  try {
    await write(false, t);
    await write(true, t - 100); // older: ignored
    await write(true, t); // not newer: ignored
    assert.deepEqual(await cached(id), {
      is_online: false,
      last_seen_at: "2026-11-25T12:00:00.500000Z",
    });
    await write(true, t + 1); // one microsecond later wins
    assert.deepEqual(await cached(id), {
      is_online: true,
      last_seen_at: "2026-11-25T12:00:00.500001Z",
    });
    await write(false, t + 1000); // offline: out of its cell
    assert.equal((await cached(id))?.is_online, false);
    assert.equal(await redis.sismember("{live}:online", id), 0);
  } finally {
    await forget(redis, [id]);
  }
});

test("a_batch_racing_a_user_deletion_gets_a_retryable_503_and_then_succeeds", async () => {
  const [doomed, other] = await createUsers(2);
  const body = { events: [ev(doomed, "online", Date.now()), ev(other, "online", Date.now())] };
  let answer: Promise<Answer> | undefined;
  await db.begin(async (tx) => {
    // The deletion is not committed yet: the batch still sees the user, then its foreign key
    // check waits for the deletion and finds the user gone.
    await tx`delete from auth.users where id = ${doomed}`;
    answer = postSigned(body);
    await new Promise((r) => setTimeout(r, 300));
  });
  const res = await answer!;
  expectError(res, 503, "conflict_retry");
  assert.equal(res.headers.get("retry-after"), "1");
  assert.equal((await heldOne(other)).last_seen_at, null, "nothing of the batch was stored");
  assert.deepEqual((await postSigned(body)).body, { accepted: 1, ignored: 1 });
});

test("teardown_removes_the_users_and_keys_it_created", teardown);
