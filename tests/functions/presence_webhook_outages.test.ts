// The presence webhook when Redis or Postgres is gone or the functions server crashes right
// after a 202 (on private server processes started here, so the shared one is never disturbed).
import assert from "node:assert/strict";
import { freePort } from "../_lib/ports.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { test } from "../_lib/harness.ts";
import {
  assertUntouched,
  cached,
  createUsers,
  ev,
  expectError,
  heldOne,
  postSigned,
  removeLeftovers,
  teardown,
} from "./_presence_webhook.ts";

test("setup_removes_users_left_by_an_interrupted_earlier_run", removeLeftovers);

/** A private functions server whose base URL is the webhook's. */
async function privateServer(overrides: Record<string, string>) {
  const { url, child } = await startFunctionsServer(overrides);
  return { url: `${url}/presence-webhook`, child };
}

test("survives_outages_and_a_crash_after_the_202", async () => {
  const dead = `127.0.0.1:${freePort()}`;
  const [normal, noRedis, noDb] = await Promise.all([
    privateServer({}),
    privateServer({ REDIS_URL: `redis://${dead}` }),
    privateServer({ SUPABASE_DB_URL: `postgresql://postgres:postgres@${dead}/postgres` }),
  ]);
  try {
    const [crashed, degraded, refused] = await createUsers(3);
    const at = Date.now() - 1000;

    // A cold server's first request still writes through (it waits for Redis to connect)...
    const res = await postSigned({ events: [ev(crashed, "online", at)] }, normal.url);
    assert.deepEqual(res.body, { accepted: 1, ignored: 0 });
    assert.equal((await cached(crashed))?.is_online, true);
    // ...and an accepted event is committed before the 202: a crash right after loses nothing.
    normal.child.kill("SIGKILL");
    await normal.child.status;
    assert.deepEqual([(await heldOne(crashed)).is_online, (await heldOne(crashed)).last_seen_at], [
      true,
      at,
    ]);

    // Redis down: Postgres is the record, so the webhook accepts and says it is degraded.
    const soft = await postSigned({ events: [ev(degraded, "online", at)] }, noRedis.url);
    assert.equal(soft.status, 202, JSON.stringify(soft.body));
    assert.deepEqual(soft.body, { accepted: 1, ignored: 0, degraded: true });
    assert.equal((await heldOne(degraded)).is_online, true);

    // Postgres unreachable: 503 with Retry-After, and nothing anywhere.
    const down = await postSigned({ events: [ev(refused, "online", at)] }, noDb.url);
    expectError(down, 503, "database_unavailable");
    assert.ok(Number(down.headers.get("retry-after")) > 0);
    await assertUntouched([refused]);
  } finally {
    for (const s of [normal, noRedis, noDb]) {
      try {
        s.child.kill("SIGTERM");
      } catch {
        // already gone
      }
      await s.child.status;
    }
  }
});

test("teardown_removes_the_users_and_keys_it_created", teardown);
