// The client module's SltrApi: typed calls to the running functions with the user's JWT, and
// to the RPCs through the gateway's PostgREST stand-in (functions/_serve/postgrest.ts does what
// PostgREST does, on the real database; PostgREST itself cannot run here).
import assert from "node:assert/strict";
import { SltrApi, SltrApiError } from "../../client/mod.ts";
import { ANON_KEY } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { test } from "../_lib/harness.ts";
import { client, createUsers, database, deleteUsers } from "../realtime/_helpers.ts";

test("the_api_calls_the_functions_with_the_users_jwt", async () => {
  const sql = database();
  // A place of its own (a fresh cache cell), somewhere in Europe.
  const lat = 40 + Math.random() * 15;
  const lng = Math.random() * 20;
  const [carol, dave] = await createUsers(sql, "client-api", 2, { lat, lng });
  const api = new SltrApi(client(ANON_KEY, { token: () => userJwt(carol) }));
  try {
    const receipt = await api.reportPresence("online", { lat, lng });
    assert.equal(receipt.accepted, 1);

    const status = await api.onlineStatus([carol, dave]);
    const byId = Object.fromEntries(status.users.map((u) => [u.user_id, u.is_online]));
    assert.deepEqual(byId, { [carol]: true, [dave]: false });

    // Dave reports himself online nearby; carol finds him (never herself), without coordinates.
    const daveApi = new SltrApi(client(ANON_KEY, { token: () => userJwt(dave) }));
    await daveApi.reportPresence("online", { lat: lat + 0.001, lng: lng + 0.002 });
    const nearby = await api.nearbyOnline({ lat, lng, radiusM: 2000, limit: 50 });
    const found = nearby.users.find((u) => u.user_id === dave);
    assert.ok(found, "dave is nearby");
    assert.ok(!nearby.users.some((u) => u.user_id === carol), "never the caller");
    assert.deepEqual(Object.keys(found).sort(), [
      "display_name",
      "distance_m",
      "last_seen_at",
      "user_id",
    ]);

    await assert.rejects(
      api.nearbyOnline({ lat: 100, lng: 0 }),
      (e) => e instanceof SltrApiError && e.code === "invalid_query" && e.status === 400,
    );
    await assert.rejects(
      api.onlineStatus(["not-a-uuid"]),
      (e) => e instanceof SltrApiError && e.code === "invalid_body" && e.status === 400,
    );
  } finally {
    await deleteUsers(sql, [carol, dave]);
    await sql.end();
  }
});

test("the_api_calls_the_rpcs_as_postgrest_would", async () => {
  const sql = database();
  const [erin, frank] = await createUsers(sql, "client-rpc", 2, { lat: 52.5, lng: 13.4 });
  const api = new SltrApi(client(ANON_KEY, { token: () => userJwt(erin) }));
  try {
    await new SltrApi(client(ANON_KEY, { token: () => userJwt(frank) }))
      .reportPresence("online", { lat: 52.501, lng: 13.401 });

    const statuses = await api.getOnlineUsersBatch([erin, frank]);
    assert.deepEqual(
      Object.fromEntries(statuses.map((s) => [s.user_id, s.is_online])),
      { [erin]: false, [frank]: true },
    );
    const nearby = await api.nearbyOnlineUsers({ lat: 52.5, lng: 13.4, radiusM: 3000 });
    assert.ok(nearby.some((u) => u.user_id === frank), "frank is nearby (real time)");
    // (A user who hides their distance has none: seed user 21.)
    assert.ok(
      nearby.every((u) => u.distance_m === null || u.distance_m % 100 === 0),
      "distances are rounded",
    );

    await assert.rejects(
      api.nearbyOnlineUsers({ lat: 52.5, lng: 13.4, radiusM: 0 }),
      (e) => e instanceof SltrApiError && e.code === "22023" && e.status === 400,
    );
  } finally {
    await deleteUsers(sql, [erin, frank]);
    await sql.end();
  }
});
