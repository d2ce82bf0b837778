// nearby-online over HTTP against the running stack: signed-in users only, bad input refused
// with 400, the nearest first without the caller, answered from the Redis live index (no
// database statement), GPS noise never moving a still user, no answer telling where others
// asked.
import assert from "node:assert/strict";
import { ANON_KEY, FUNCTIONS_URL } from "../_lib/env.ts";
import { test } from "../_lib/harness.ts";
import {
  at,
  call,
  createNeighbourhood,
  createUser,
  db,
  METRES_PER_DEGREE,
  names,
  near,
  nearby,
  redis,
  removeNeighbourhood,
  report,
  sleeper,
  viewer,
} from "./_neighbourhood.ts";

test("setup_creates_a_neighbourhood", createNeighbourhood);

test("nearby_requires_a_signed_in_user", async () => {
  const noJwt = await call(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`);
  assert.equal(noJwt.status, 401);
  assert.equal(noJwt.body.error.code, "missing_jwt");
  const anon = await call(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`, {
    headers: { authorization: `Bearer ${ANON_KEY}` },
  });
  assert.equal(anon.status, 401);
  assert.equal(anon.body.error.code, "user_jwt_required");
});

test("nearby_rejects_bad_input_with_400", async () => {
  for (
    const q of [
      "lng=0",
      "lat=0",
      "lat=&lng=0",
      "lat=91&lng=0",
      "lat=0&lng=-180.5",
      "lat=abc&lng=0",
      "lat=NaN&lng=0",
      "lat=0x1F&lng=0",
      "lat=1e1&lng=0",
      "lat=Infinity&lng=0",
      "lat=0&lng=0&radius_m=0",
      "lat=0&lng=0&radius_m=50001",
      "lat=0&lng=0&radius_m=-5",
      "lat=0&lng=0&radius_m=1.5",
      "lat=0&lng=0&limit=0",
      "lat=0&lng=0&limit=501",
      "lat=0&lng=0&limit=ten",
    ]
  ) {
    const res = await call(`${FUNCTIONS_URL}/nearby-online?${q}`, {
      headers: { authorization: `Bearer ${viewer.jwt}` },
    });
    assert.equal(res.status, 400, `${q}: ${JSON.stringify(res.body)}`);
    assert.equal(res.body.error.code, "invalid_query", q);
    assert.equal(typeof res.body.error.message, "string", q);
  }
  const post = await call(`${FUNCTIONS_URL}/nearby-online?lat=0&lng=0`, {
    method: "POST",
    headers: { authorization: `Bearer ${viewer.jwt}` },
  });
  assert.equal(post.status, 405);
});

test("nearby_answers_nearest_first_without_the_caller_from_the_index", async () => {
  const first = await nearby(viewer, viewer);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual(Object.keys(first.body).sort(), ["cached", "degraded", "users"]);
  assert.deepEqual(names(first), ["near", "mid", "far"]);
  assert.equal(first.body.cached, true, "from the index: no database statement");
  assert.equal(first.body.degraded, false);
  for (const u of first.body.users) {
    assert.deepEqual(Object.keys(u).sort(), [
      "display_name",
      "distance_m",
      "last_seen_at",
      "user_id",
    ]);
    assert.equal(u.distance_m % 100, 0);
    assert.ok(!Number.isNaN(Date.parse(u.last_seen_at)));
    assert.equal(Date.parse(u.last_seen_at) % 60_000, 0, "last seen to the minute, no finer");
  }
  // Anyone else gets their own answer, never themselves.
  assert.deepEqual(names(await nearby(near, viewer)), ["viewer", "mid", "far"]);
  // The radius and the limit are the question's.
  assert.deepEqual(names(await nearby(viewer, viewer, { radius: 12_000 })), [
    "near",
    "mid",
    "far",
    "away",
  ]);
  assert.deepEqual(names(await nearby(viewer, viewer, { limit: 2 })), ["near", "mid"]);
});

test("gps_noise_across_a_cell_edge_never_moves_a_still_user_to_another_cell", async () => {
  // A row edge of the grid 1 km north of the viewer; fixes alternate 15 m either side of it.
  const edgeLat = -90 + Math.floor((at(0, 1000).lat + 90) / 0.0045) * 0.0045;
  const fix = (north: number) => ({ lat: edgeLat + north / METRES_PER_DEGREE, lng: viewer.lng });
  const still = await createUser("still", fix(10), false);
  const shown = async () => {
    const [pg] = await db<{ cell: string }[]>`
      select cell_lat || ',' || cell_lng as cell
      from private.live_index_snapshot(false, ${[still.id]}::uuid[])`;
    const [x, y] = await redis.hmget(`{live}:user:${still.id}`, "x", "y");
    return { pg: pg.cell, redis: `${y},${x}` };
  };
  const distance = async () =>
    (await nearby(viewer, viewer)).body.users.find((u: { user_id: string }) =>
      u.user_id === still.id
    )
      ?.distance_m;
  await report(still, "online", fix(10));
  const first = await shown();
  const firstDistance = await distance();
  for (const north of [-15, 12, -8, -15, 14]) {
    await report(still, "online", fix(north));
    assert.deepEqual(await shown(), first, `a fix ${north} m from the edge`);
    assert.equal(await distance(), firstDistance);
  }
  await report(still, "online", fix(-150));
  const moved = await shown();
  assert.notDeepEqual(moved, first, "150 m into the next cell moves them");
  assert.equal(moved.pg, moved.redis, "Postgres and the index agree");
  await report(still, "offline"); // out of the neighbourhood's answers again
});

test("no_answer_tells_where_others_asked_before_or_can_be_invalidated_for_everyone", async () => {
  // The old answer cache said `cached` (and answered faster) per ~220 m query cell, finer
  // than the grid, and an arrival without a location invalidated every answer in the world.
  // The live index has neither: any point, asked or not, is answered from the index alike.
  for (let i = 0; i < 8; i++) {
    const where = at(Math.random() * 6000 - 3000, Math.random() * 6000 - 3000);
    const answer = await nearby(viewer, where);
    assert.equal(answer.status, 200);
    assert.deepEqual(
      [answer.body.cached, answer.body.degraded],
      [true, false],
      "a point never asked",
    );
  }
  const before = await redis.keys("nearby:*");
  await report(sleeper, "online"); // an arrival without a location
  assert.deepEqual(await redis.keys("nearby:*"), before, "no answer cache to invalidate");
  assert.deepEqual(before, []);
  await report(sleeper, "offline");
});

test("teardown_removes_the_neighbourhood", removeNeighbourhood);
