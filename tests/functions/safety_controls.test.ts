// The safety controls on the functions' read paths (migration 20261207130000, the live index's
// copy in functions/_shared/live_index_privacy.ts): a block, incognito and a hidden distance,
// set through the RPCs with supabase-js as an app sets them, show on nearby-online and
// online-status within a second, from the index as from Postgres (Redis down).
import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { type Database, SltrApi } from "../../client/mod.ts";
import { ANON_KEY, API_URL } from "../_lib/env.ts";
import { test } from "../_lib/harness.ts";
import {
  at,
  createUser,
  deleteUsers,
  nearby,
  onlineStatus,
  type Person,
  report,
  startFunctions,
  stop,
} from "./_neighbourhood.ts";

/** The client module's API as `p`'s app (supabase-js with p's token). */
const app = (p: Person) =>
  new SltrApi(createClient<Database>(API_URL, ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
    accessToken: () => Promise.resolve(p.jwt),
  }));

async function rpc(p: Person, fn: string, args: Record<string, unknown>): Promise<unknown> {
  const api = app(p);
  switch (fn) {
    case "block_user":
      return await api.blockUser(args.target as string);
    case "unblock_user":
      return await api.unblockUser(args.target as string);
    case "list_blocks":
      return await api.blockedIds();
    case "set_privacy":
      return await api.setPrivacy(args);
  }
  throw new Error(`no such call ${fn}`);
}

const ids = (a: { body: { users: { user_id: string }[] } }) => a.body.users.map((u) => u.user_id);

/** Polls `ok` until it holds; returns how long that took (ms). */
async function within(what: string, ok: () => Promise<boolean>, ms: number): Promise<number> {
  const started = performance.now();
  while (!(await ok())) {
    if (performance.now() - started > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return performance.now() - started;
}

let viewer: Person, near: Person, mid: Person, far: Person;

test("setup_online_around_a_viewer", async () => {
  viewer = await createUser("viewer", at(0, 0), false);
  // 500 m apart at least, so that no two share a ~500 m cell (a tie would order them by id).
  near = await createUser("near", at(200, 0), false);
  mid = await createUser("mid", at(700, 0), false);
  far = await createUser("far", at(1600, 0), false);
  for (const p of [viewer, near, mid, far]) await report(p, "online", { lat: p.lat, lng: p.lng });
  const seen = await nearby(viewer, viewer);
  assert.deepEqual([seen.body.cached, ids(seen)], [true, [near.id, mid.id, far.id]]);
});

test("a_block_hides_the_pair_from_each_other_within_a_second_both_ways", async () => {
  await rpc(viewer, "block_user", { target: near.id });
  const tookMs = await within(
    "near gone from the viewer's nearby",
    async () => !ids(await nearby(viewer, viewer)).includes(near.id),
    1500,
  );
  console.log(`block: gone from nearby ${Math.round(tookMs)} ms after the RPC returned`);
  const answer = await nearby(viewer, viewer);
  assert.deepEqual([answer.body.cached, ids(answer)], [true, [mid.id, far.id]]);
  const back = await nearby(near, near);
  assert.ok(!ids(back).includes(viewer.id), "nor does near see the viewer");
  assert.ok(ids(back).includes(mid.id), "near still sees the others");

  const status = await onlineStatus(viewer, { user_ids: [near.id, mid.id] });
  assert.deepEqual(status.body.users, [
    { user_id: near.id, is_online: false, last_seen_at: null },
    { user_id: mid.id, is_online: true, last_seen_at: status.body.users[1].last_seen_at },
  ]);
  const other = await onlineStatus(near, { user_ids: [viewer.id] });
  assert.deepEqual(other.body.users, [{
    user_id: viewer.id,
    is_online: false,
    last_seen_at: null,
  }]);
  assert.deepEqual(await rpc(viewer, "list_blocks", {}), [near.id]);
  assert.deepEqual(await rpc(near, "list_blocks", {}), [], "near does not learn who blocked him");

  await rpc(viewer, "unblock_user", { target: near.id });
  await within(
    "near back",
    async () => ids(await nearby(viewer, viewer)).includes(near.id),
    1500,
  );
});

test("an_incognito_user_is_offline_to_others_and_online_to_themselves", async () => {
  assert.deepEqual(await rpc(mid, "set_privacy", { incognito: true }), {
    incognito: true,
    show_distance: true,
  });
  await within(
    "mid gone from nearby",
    async () => !ids(await nearby(viewer, viewer)).includes(mid.id),
    1500,
  );
  const others = await onlineStatus(viewer, { user_ids: [mid.id] });
  assert.deepEqual(others.body.users, [{ user_id: mid.id, is_online: false, last_seen_at: null }]);
  // A move while incognito places them nowhere either.
  await report(mid, "online", at(100, 0));
  assert.ok(!ids(await nearby(viewer, viewer)).includes(mid.id), "not after a move");
  const own = await onlineStatus(mid, { user_ids: [mid.id] });
  assert.equal(own.body.users[0].is_online, true, "their own read still works");

  await rpc(mid, "set_privacy", { incognito: false });
  await within(
    "mid back",
    async () => ids(await nearby(viewer, viewer)).includes(mid.id),
    1500,
  );
  await report(mid, "online", at(700, 0));
});

test("a_hidden_distance_is_null_and_ordered_by_the_end_of_its_band", async () => {
  await rpc(near, "set_privacy", { show_distance: false });
  await within(
    "near's distance hidden",
    async () =>
      (await nearby(viewer, viewer)).body.users.some((u: { distance_m: unknown }) =>
        u.distance_m === null
      ),
    1500,
  );
  const answer = await nearby(viewer, viewer);
  const shown = answer.body.users.map((u: { user_id: string; distance_m: number | null }) => [
    u.user_id,
    u.distance_m === null ? null : u.distance_m < 1000 ? "under 1 km" : "over 1 km",
  ]);
  // near (200 m) sorts at 1 km, the end of its band: after mid (700 m), before far (1.6 km).
  assert.deepEqual(shown, [[mid.id, "under 1 km"], [near.id, null], [far.id, "over 1 km"]]);
  const midShown = answer.body.users[0].distance_m as number;
  const inside = await nearby(viewer, viewer, { radius: Math.min(990, midShown + 100) });
  assert.deepEqual(ids(inside), [mid.id], "a radius short of its band's end leaves it out");
});

test("redis_down_postgres_answers_the_same", async () => {
  // A functions server whose Redis does not exist: every read from Postgres.
  const server = await startFunctions({ REDIS_URL: "redis://127.0.0.1:1" });
  try {
    await rpc(viewer, "block_user", { target: far.id });
    const answer = await nearby(viewer, viewer, { base: server.url });
    assert.equal(answer.body.degraded, true);
    assert.deepEqual(
      answer.body.users.map((u: { user_id: string; distance_m: number | null }) => [
        u.user_id,
        u.distance_m === null,
      ]),
      [[mid.id, false], [near.id, true]],
      "far blocked, near's distance hidden",
    );
    const status = await onlineStatus(viewer, { user_ids: [far.id] }, server.url);
    assert.deepEqual(status.body.users, [{
      user_id: far.id,
      is_online: false,
      last_seen_at: null,
    }]);
  } finally {
    await stop(server.child);
  }
});

test("teardown_removes_the_users", deleteUsers);
