// online-status over HTTP against the running stack: answered from the Redis live index, bad
// input refused with 400.
import assert from "node:assert/strict";
import { ANON_KEY, FUNCTIONS_URL } from "../_lib/env.ts";
import { test } from "../_lib/harness.ts";
import {
  call,
  createNeighbourhood,
  far,
  near,
  onlineStatus,
  removeNeighbourhood,
  report,
  sleeper,
  viewer,
} from "./_neighbourhood.ts";

test("setup_creates_a_neighbourhood", createNeighbourhood);

test("online_status_answers_from_the_index", async () => {
  const unknown = crypto.randomUUID();
  const ids = [far.id, unknown, sleeper.id, near.id, far.id];
  const first = await onlineStatus(viewer, { user_ids: ids });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual(first.body.users.map((u: { user_id: string }) => u.user_id), [
    far.id,
    sleeper.id,
    near.id,
  ], "known users once each, in the request's order");
  assert.deepEqual(first.body.users.map((u: { is_online: boolean }) => u.is_online), [
    true,
    false,
    true,
  ]);
  // The unknown id is one the index does not hold: Postgres was asked (one query).
  assert.equal(first.body.cached, false);
  const known = await onlineStatus(viewer, { user_ids: [far.id, sleeper.id, near.id] });
  assert.equal(known.body.cached, true, "known users: no database statement");
  assert.deepEqual(known.body.users, first.body.users);
  for (const u of known.body.users) assert.equal(Date.parse(u.last_seen_at) % 60_000, 0);
  await report(near, "offline");
  const third = await onlineStatus(viewer, { user_ids: [near.id] });
  assert.deepEqual([third.body.cached, third.body.users[0].is_online], [true, false]);
  await report(near, "online", near);
  assert.equal((await onlineStatus(viewer, { user_ids: [near.id] })).body.users[0].is_online, true);
});

test("online_status_rejects_bad_input_with_400", async () => {
  const cases: [unknown, string][] = [
    ["not json", "invalid_json"],
    [{}, "invalid_body"],
    [{ user_ids: "x" }, "invalid_body"],
    [{ user_ids: [] }, "invalid_body"],
    [{ user_ids: ["not-a-uuid"] }, "invalid_body"],
    [{ user_ids: [42] }, "invalid_body"],
    [{ user_ids: Array.from({ length: 10_001 }, () => crypto.randomUUID()) }, "too_many_ids"],
  ];
  for (const [body, code] of cases) {
    const res = await onlineStatus(viewer, body);
    assert.equal(
      res.status,
      400,
      `${JSON.stringify(body).slice(0, 40)}: ${JSON.stringify(res.body)}`,
    );
    assert.equal(res.body.error.code, code);
  }
  const many = await onlineStatus(viewer, {
    user_ids: Array.from({ length: 10_000 }, () => crypto.randomUUID()),
  });
  assert.equal(many.status, 200);
  assert.deepEqual(many.body.users, []);
  const anon = await call(`${FUNCTIONS_URL}/online-status`, {
    method: "POST",
    headers: { authorization: `Bearer ${ANON_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ user_ids: [near.id] }),
  });
  assert.equal(anon.status, 401);
  const get = await call(`${FUNCTIONS_URL}/online-status`, {
    headers: { authorization: `Bearer ${viewer.jwt}` },
  });
  assert.equal(get.status, 405);
});

test("teardown_removes_the_neighbourhood", removeNeighbourhood);
