// What the webhook accepted, flushed to profiles and expired: no event lost to a concurrent
// flush, flapping and heartbeats costing (almost) no profile updates, a missed leave expiring.
import assert from "node:assert/strict";
import { test } from "../_lib/harness.ts";
import {
  Answer,
  createUsers,
  db,
  ev,
  flush,
  held,
  heldOne,
  postSigned,
  removeLeftovers,
  teardown,
} from "./_presence_webhook.ts";

test("setup_removes_users_left_by_an_interrupted_earlier_run", removeLeftovers);

test("an_ingest_during_a_flush_loses_nothing", async () => {
  const now = Date.now();
  const claimed = await createUsers(50);
  const fresh = await createUsers(50);
  await postSigned({ events: claimed.map((id) => ev(id, "online", now - 30_000)) });
  let posts: Promise<Answer[]> | undefined;
  let committedAt = 0;
  let flushedInside = 0;
  await db.begin(async (tx) => {
    // The flush claims and deletes the buffered rows and holds them until it commits.
    flushedInside = (await tx`select private.flush_presence() as n`)[0].n;
    posts = Promise.all([
      postSigned({ events: claimed.map((id) => ev(id, "offline", now - 10_000)) }),
      postSigned({ events: fresh.map((id) => ev(id, "online", now - 10_000)) }),
    ]);
    await new Promise((r) => setTimeout(r, 300));
    committedAt = Date.now();
  });
  const answers = await posts!;
  const answeredAt = Date.now();
  for (const a of answers) assert.deepEqual(a.body, { accepted: 50, ignored: 0 });
  if (flushedInside >= 50) {
    assert.ok(answeredAt >= committedAt, "the claimed users' batch waited for the flush");
  }
  const check = async (what: string) => {
    const state = await held([...claimed, ...fresh]);
    for (const id of claimed) {
      assert.deepEqual(
        [state.get(id)!.is_online, state.get(id)!.last_seen_at],
        [false, now - 10_000],
        `${what}: ${id}`,
      );
    }
    for (const id of fresh) {
      assert.deepEqual(
        [state.get(id)!.is_online, state.get(id)!.last_seen_at],
        [true, now - 10_000],
        `${what}: ${id}`,
      );
    }
  };
  await check("before the next flush");
  await flush();
  await check("after the next flush");
  const [{ n }] = await db`
    select count(*)::int as n from public.presence_buffer where user_id = any(${[
    ...claimed,
    ...fresh,
  ]}::uuid[])`;
  assert.equal(n, 0, "every change was applied and removed from the buffer");
});

test("flapping_between_flushes_costs_one_profile_update_and_a_heartbeat_costs_none", async () => {
  const now = Date.now();
  const [flapper] = await createUsers(1, { lastSeenAt: new Date(now - 120_000) });
  const [steady] = await createUsers(1, { isOnline: true, lastSeenAt: new Date(now - 120_000) });
  const xmin = async (id: string) =>
    (await db`select xmin::text as x from public.profiles where id = ${id}`)[0].x as string;
  const before = { flapper: await xmin(flapper), steady: await xmin(steady) };
  // Ten flaps in ten requests, ending online; a heartbeat for the steady user.
  for (let i = 0; i < 10; i++) {
    await postSigned({
      events: [ev(flapper, i % 2 ? "online" : "offline", now - 10_000 + i * 100)],
    });
  }
  await postSigned({ events: [ev(steady, "online", now - 1000)] });
  await flush();
  const [row] = await db`select is_online, last_seen_at from public.profiles where id = ${flapper}`;
  assert.deepEqual([row.is_online, row.last_seen_at.getTime()], [true, now - 10_000 + 900]);
  assert.notEqual(await xmin(flapper), before.flapper, "the flapper's profile was written");
  assert.equal(await xmin(steady), before.steady, "the heartbeat did not write the profile");
  // The heartbeat stays buffered: it is the steady user's last-seen time...
  assert.equal((await heldOne(steady)).last_seen_at, now - 1000);
  // ...so expiry (5 minutes) does not take them offline, though the profile says 2 minutes ago.
  await db`select private.expire_stale_presence(interval '90 seconds')`;
  assert.equal((await heldOne(steady)).is_online, true);
});

test("a_missed_leave_expires_after_max_age", async () => {
  const now = Date.now();
  const [silent] = await createUsers(1, {
    isOnline: true,
    lastSeenAt: new Date(now - 10 * 60_000),
  });
  const [heartbeat] = await createUsers(1, {
    isOnline: true,
    lastSeenAt: new Date(now - 20 * 60_000),
  });
  await postSigned({ events: [ev(heartbeat, "online", now - 30_000)] });
  await db`select private.expire_stale_presence()`;
  assert.deepEqual(
    [(await heldOne(silent)).is_online, (await heldOne(silent)).last_seen_at],
    [false, now - 10 * 60_000],
  );
  assert.equal((await heldOne(heartbeat)).is_online, true);
});

test("teardown_removes_the_users_and_keys_it_created", teardown);
