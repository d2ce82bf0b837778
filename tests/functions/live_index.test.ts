// The Redis live index behind nearby-online and online-status: right on the next read after
// the webhook accepts an arrival, a leave or a move, repaired by the reconciliation, rebuilt
// when Redis is cold, Redis dying and coming back, Postgres down, and the Postgres answers for
// want of the index bounded (on a private Redis and functions server started here, so the
// shared ones are never disturbed).
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { prune, redisMicros } from "../../functions/_shared/live_index.ts";
import { FUNCTIONS_URL, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { freePort } from "../_lib/ports.ts";
import { FreezableProxy } from "../_lib/proxy.ts";
import { sleep, test } from "../_lib/harness.ts";
import {
  at,
  call,
  createNeighbourhood,
  db,
  far,
  mid,
  names,
  near,
  nearby,
  onlineStatus,
  redis,
  removeNeighbourhood,
  report,
  sleeper,
  startFunctions,
  startRedis,
  stop,
  viewer,
  waitFor,
} from "./_neighbourhood.ts";

test("setup_creates_a_neighbourhood", createNeighbourhood);

test("leaves_arrivals_and_moves_are_right_on_the_next_read", async () => {
  await report(mid, "offline");
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "far"], "mid left");
  await report(sleeper, "online", sleeper);
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "sleeper", "far"], "arrived");
  // Moved 3.15 km east: its cell centre (up to 250 m off in each axis) lies 3.4-3.9 km away,
  // beyond far's (2.65-3.16 km) and inside the 4 km radius wherever the grid falls.
  await report(near, "online", at(3650, 0));
  const moved = await nearby(viewer, viewer);
  assert.deepEqual(names(moved), ["sleeper", "far", "near"], "moved, at its new distance");
  assert.equal(moved.body.cached, true);
  await report(near, "online", near);
  await report(mid, "online", mid);
  await report(sleeper, "offline");
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "mid", "far"]);
});

test("a_write_the_index_missed_is_repaired_by_the_reconciliation", async () => {
  // Online in Postgres only (as if the webhook's write-through had failed): the index does not
  // know yet; the reconciliation (due once a minute; made due here) finds it.
  await db`select private.ingest_presence(${
    db.json([{
      user_id: sleeper.id,
      status: "online",
      at: new Date().toISOString(),
      lat: sleeper.lat,
      lng: sleeper.lng,
    }])
  })`;
  assert.ok(!names(await nearby(viewer, viewer)).includes("sleeper"));
  await redis.del("{live}:reconciled");
  await waitFor(
    "the reconciliation",
    async () => names(await nearby(viewer, viewer)).includes("sleeper"),
    5000,
  );
  await report(sleeper, "offline");
});

test("the_reconciliation_keeps_what_the_webhook_wrote_after_its_snapshot_began", async () => {
  // A snapshot begins; then a batch commits whose event is older than that (a delayed batch,
  // a slow clock): Postgres's snapshot does not have it, and the prune must not drop it. A
  // user written before the snapshot and absent from it is dropped.
  const at = new Date().toISOString(); // newer than sleeper's last event, older than `began`
  await sleep(5);
  const began = await redisMicros(redis);
  const res = await call(`${FUNCTIONS_URL}/presence-webhook`, {
    method: "POST",
    headers: { authorization: `Bearer ${sleeper.jwt}`, "content-type": "application/json" },
    body: JSON.stringify({
      events: [{
        status: "online",
        at,
        lat: sleeper.lat,
        lng: sleeper.lng,
      }],
    }),
  });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  const snapshot = (await redis.smembers("{live}:online")).filter((id) =>
    id !== sleeper.id && id !== far.id
  );
  assert.ok(await prune(redis, began, snapshot) >= 1);
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "sleeper", "mid"]);
  await report(far, "online", far);
  await report(sleeper, "offline");
  assert.deepEqual(names(await nearby(viewer, viewer)), ["near", "mid", "far"]);
});

test("redis_dying_degrades_to_postgres_then_a_cold_redis_is_rebuilt", async () => {
  const port = freePort();
  let cache = startRedis(port);
  const server = await startFunctions({ REDIS_URL: `redis://127.0.0.1:${port}` });
  try {
    const health = async () => (await call(`${server.url}/health`)).body.redis === true;
    await waitFor("the private server's Redis", health);
    const expected = ["near", "mid", "far"];
    // A cold Redis: Postgres answers while one snapshot builds the index, then the index does.
    const one = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([one.body.cached, one.body.degraded, names(one)], [false, false, expected]);
    await waitFor(
      "the rebuild",
      async () => (await nearby(viewer, viewer, { base: server.url })).body.cached,
    );
    const two = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([two.body.cached, two.body.degraded, names(two)], [true, false, expected]);

    await stop(cache, "SIGKILL");
    for (let i = 0; i < 5; i++) {
      const down = await nearby(viewer, viewer, { base: server.url });
      assert.equal(down.status, 200, JSON.stringify(down.body));
      assert.deepEqual([down.body.cached, down.body.degraded, names(down)], [
        false,
        true,
        expected,
      ]);
      const status = await onlineStatus(viewer, { user_ids: [near.id, sleeper.id] }, server.url);
      assert.equal(status.status, 200, JSON.stringify(status.body));
      assert.equal(status.body.degraded, true);
      assert.deepEqual(status.body.users.map((u: { is_online: boolean }) => u.is_online), [
        true,
        false,
      ]);
    }

    cache = startRedis(port);
    await waitFor("the client to reconnect", async () => {
      const res = await nearby(viewer, viewer, { base: server.url });
      return res.status === 200 && !res.body.degraded;
    });
    // Back, empty: rebuilt from one snapshot, and answering from the index again.
    await waitFor(
      "the rebuild",
      async () => (await nearby(viewer, viewer, { base: server.url })).body.cached,
    );
    const again = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([again.body.cached, again.body.degraded, names(again)], [
      true,
      false,
      expected,
    ]);
  } finally {
    await stop(server.child);
    await stop(cache, "SIGKILL");
  }
});

test("a_cold_index_is_rebuilt_a_page_per_request_within_a_functions_cpu", async () => {
  // On hosted, a rebuild runs in the isolate of the request that found the index cold, which
  // gets 2 s of CPU; a million users in one go cost 3.6 s (bench/rebuild.ts). So each read that
  // finds it cold loads one page of users, from where the last one stopped, and the last page
  // builds the index. Pages of a fifth of the users here: at least five requests' worth.
  const [{ users }] = await db<
    { users: number }[]
  >`select count(*)::int as users from public.profiles`;
  const page = Math.ceil(users / 5);
  const port = freePort();
  const cache = startRedis(port);
  const server = await startFunctions({
    REDIS_URL: `redis://127.0.0.1:${port}`,
    SLTR_LIVE_INDEX_REBUILD_PAGE_ROWS: String(page),
  });
  const own = new Redis(`redis://127.0.0.1:${port}`, { maxRetriesPerRequest: 1 });
  try {
    await waitFor(
      "the private server's Redis",
      async () => (await call(`${server.url}/health`)).body.redis === true,
    );
    const expected = ["near", "mid", "far"];
    const first = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual(
      [first.body.cached, names(first)],
      [false, expected],
      "cold: Postgres answers",
    );
    await waitFor(
      "the first page",
      async () => (await own.hget("{live}:rebuild", "rows")) !== null,
    );
    assert.equal(Number(await own.hget("{live}:rebuild", "rows")), page, "one page, not more");
    assert.equal(await own.exists("{live}:built"), 0, "not built after one page");
    assert.equal(await own.exists("{live}:rebuilding"), 0, "the lock let go for the next read");
    // Every further read that finds it cold takes the next page; until then, Postgres answers.
    let reads = 1;
    await waitFor("the rebuild", async () => {
      const res = await nearby(viewer, viewer, { base: server.url });
      reads++;
      assert.deepEqual(names(res), expected);
      return res.body.cached === true;
    }, 60_000);
    assert.ok(reads >= 5, `built after ${reads} reads: a page each`);
    assert.equal(await own.hlen("{live}:names"), users, "every user is in the index");
    assert.equal(await own.exists("{live}:rebuild", "{live}:rebuild:online"), 0, "no state left");
    // Online as the index counts it: the buffer's newer events over the profile's flushed state.
    const [{ online }] = await db<{ online: number }[]>`
      select count(*)::int as online from private.live_index_snapshot()`;
    assert.equal(await own.scard("{live}:online"), online, "the online ones, online");
    const metrics = await call(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    });
    assert.match(metrics.body as string, /^sltr_live_index_syncs_total\{kind="rebuild"\} 1$/m);
    assert.match(
      metrics.body as string,
      new RegExp(`^sltr_live_index_sync_rows_total\\{kind="rebuild"\\} ${users}$`, "m"),
    );
  } finally {
    own.disconnect();
    await stop(server.child);
    await stop(cache, "SIGKILL");
  }
});

test("postgres_down_the_index_still_answers_and_what_needs_postgres_is_503", async () => {
  const dead = `127.0.0.1:${freePort()}`;
  const server = await startFunctions({
    SUPABASE_DB_URL: `postgresql://postgres:postgres@${dead}/postgres`,
  });
  try {
    // The shared Redis's index needs no database. (A read may try the safety controls'
    // sync first, once in two seconds and for 300 ms at most: then it is not a hit.)
    const started = performance.now();
    const found = await nearby(viewer, viewer, { base: server.url });
    assert.equal(found.status, 200, JSON.stringify(found.body));
    assert.deepEqual([found.body.degraded, names(found)], [false, ["near", "mid", "far"]]);
    const known = await onlineStatus(viewer, { user_ids: [near.id] }, server.url);
    assert.equal(known.status, 200, JSON.stringify(known.body));
    assert.equal(known.body.degraded, false);
    assert.ok(performance.now() - started < 1500, "neither waited for the dead database");
    // An id the index does not hold needs Postgres, and it is gone.
    const unknown = await onlineStatus(viewer, { user_ids: [crypto.randomUUID()] }, server.url);
    assert.equal(unknown.status, 503);
    assert.equal(unknown.body.error.code, "database_unavailable");
    assert.ok(Number(unknown.headers.get("retry-after")) > 0);
  } finally {
    await stop(server.child);
  }
});

test("reads_postgres_answers_for_want_of_the_index_are_bounded", async () => {
  // Redis down, and Postgres (behind a proxy this test can freeze) slow: one read may wait on
  // it (SLTR_FALLBACK_CONCURRENCY=1); the next is refused at once with 503 + Retry-After
  // instead of piling onto a database that is already behind.
  const pooler = new URL(Deno.env.get("SUPABASE_DB_URL")!);
  const proxy = new FreezableProxy(Number(pooler.port));
  const viaProxy = new URL(pooler);
  viaProxy.host = `127.0.0.1:${proxy.port}`;
  const server = await startFunctions({
    REDIS_URL: `redis://127.0.0.1:${freePort()}`,
    SUPABASE_DB_URL: viaProxy.toString(),
    SLTR_FALLBACK_CONCURRENCY: "1",
  });
  try {
    const first = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([first.status, first.body.degraded, names(first)], [200, true, [
      "near",
      "mid",
      "far",
    ]]);
    proxy.freeze();
    const waiting = nearby(viewer, viewer, { base: server.url });
    await sleep(300); // it holds the one slot, waiting on the frozen database
    const refused = await nearby(viewer, viewer, { base: server.url });
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, "overloaded");
    assert.equal(refused.headers.get("retry-after"), "1");
    const status = await onlineStatus(viewer, { user_ids: [near.id] }, server.url);
    assert.equal(status.status, 503, JSON.stringify(status.body));
    assert.equal(status.body.error.code, "overloaded");
    proxy.thaw();
    const answered = await waiting;
    assert.deepEqual([answered.status, answered.body.degraded], [200, true]);
    const after = await nearby(viewer, viewer, { base: server.url });
    assert.deepEqual([after.status, after.body.degraded], [200, true], "the slot is free again");
    const metrics = await (await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    })).text();
    assert.match(metrics, /sltr_fallbacks_refused_total\{function="nearby-online"\} 1/);
    assert.match(metrics, /sltr_fallbacks_refused_total\{function="online-status"\} 1/);
  } finally {
    proxy.close();
    await stop(server.child);
  }
});

test("teardown_removes_the_neighbourhood", removeNeighbourhood);
