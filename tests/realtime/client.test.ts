// The client module: RealtimeService over supabase-js against the fake Realtime server (the
// socket is the only fake), then end to end with the presence bridge, the running webhook and
// Postgres; and SltrApi against the running functions and (for RPCs) PostgREST's behaviour
// emulated on the real database.
import assert from "node:assert/strict";
import {
  PRESENCE_TOPIC,
  RealtimeService,
  SltrApi,
  SltrApiError,
  STATUS_EVENT,
  STATUS_TOPIC,
  type StatusChange,
} from "../../client/mod.ts";
import {
  PresenceBridge,
  RealtimePresenceSource,
  WebhookSender,
} from "../../workers/presence-bridge/bridge.ts";
import { userJwt } from "../functions/_helpers.ts";
import { eventually, FakeRealtime } from "./fake_realtime.ts";
import { postgrestFetch } from "./fake_postgrest.ts";
import {
  ANON_KEY,
  clientWith,
  closeClient,
  createUsers,
  database,
  deleteUsers,
  FUNCTIONS_URL,
  SERVICE_ROLE_KEY,
  WEBHOOK_SECRET,
} from "./_helpers.ts";

function test(name: string, fn: () => Promise<void>): void {
  // realtime-js leaves a 10 s timer behind on disconnect; everything is closed in finally.
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}

const USER = "5e1f0c2a-0000-4000-a000-000000000001";

/** A signed-in user's client on the fake server, and its RealtimeService. */
async function signedIn(fake: FakeRealtime, userId = USER) {
  const token = await userJwt(userId);
  const supabase = clientWith(fake, ANON_KEY, { accessToken: () => Promise.resolve(token) });
  const realtime = new RealtimeService(supabase, { resubscribeAfterMs: () => 20 });
  return { supabase, realtime, token };
}

test("subscriptions_share_one_socket_and_one_channel_per_topic", async () => {
  const fake = new FakeRealtime();
  const { supabase, realtime } = await signedIn(fake);
  try {
    const a = realtime.onStatusChanges(() => {});
    const b = realtime.onStatusChanges(() => {});
    const c = realtime.subscribe("room:1", "*", () => {});
    await eventually(() => realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "subscribed");
    await eventually(() => realtime.status("room:1") === "SUBSCRIBED", "room subscribed");
    assert.equal(fake.urls.length, 1, "one socket");
    assert.equal(fake.frames("phx_join", STATUS_TOPIC).length, 1, "one join for two subscribers");
    assert.equal(supabase.getChannels().length, 2);

    await a.unsubscribe();
    assert.equal(fake.frames("phx_leave", STATUS_TOPIC).length, 0, "still one subscriber");
    assert.equal(realtime.status(STATUS_TOPIC), "SUBSCRIBED");
    await b.unsubscribe();
    await eventually(() => fake.frames("phx_leave", STATUS_TOPIC).length === 1, "left");
    assert.equal(realtime.status(STATUS_TOPIC), undefined);
    assert.deepEqual(supabase.getChannels().map((ch) => ch.subTopic), ["room:1"]);

    // Subscribing again joins a fresh channel.
    const again = realtime.onStatusChanges(() => {});
    await eventually(() => fake.frames("phx_join", STATUS_TOPIC).length === 2, "joined again");
    await again.unsubscribe();
    await c.unsubscribe();
    assert.deepEqual(realtime.activeTopics, []);
  } finally {
    await realtime.close();
  }
});

test("status_broadcasts_reach_every_subscriber_of_their_event", async () => {
  const fake = new FakeRealtime();
  const { realtime } = await signedIn(fake);
  try {
    const first: StatusChange[][] = [];
    const second: StatusChange[][] = [];
    const everything: string[] = [];
    realtime.onStatusChanges((c) => first.push(c));
    realtime.onStatusChanges((c) => second.push(c));
    realtime.subscribe(STATUS_TOPIC, "*", (_p, event) => everything.push(event));
    await eventually(() => realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "subscribed");
    const changes = [{ user_id: USER, is_online: true, last_seen_at: "2026-11-01T12:00:00Z" }];
    fake.broadcast(STATUS_TOPIC, STATUS_EVENT, { changes, id: "m1" });
    fake.broadcast(STATUS_TOPIC, "something_else", { x: 1 });
    await eventually(() => everything.length === 2, "both broadcasts");
    assert.deepEqual(first, [changes]);
    assert.deepEqual(second, [changes]);
    assert.deepEqual(everything, [STATUS_EVENT, "something_else"]);
    // Joined privately, with the user's JWT (Realtime Authorization checks it).
    const join = fake.frames("phx_join", STATUS_TOPIC)[0][4];
    assert.equal((join.config as { private: boolean }).private, true);
    assert.match(String(join.access_token), /^ey/);
  } finally {
    await realtime.close();
  }
});

test("track_presence_joins_privately_with_the_user_as_key_and_the_location", async () => {
  const fake = new FakeRealtime();
  const { realtime, token } = await signedIn(fake);
  try {
    const me = await realtime.trackPresence(USER, { lat: 52.52, lng: 13.405 });
    const join = fake.frames("phx_join", PRESENCE_TOPIC)[0][4];
    assert.deepEqual(join.config, {
      broadcast: { self: false, ack: false },
      presence: { key: USER, enabled: false }, // users never receive others' presence
      private: true,
      postgres_changes: [],
    });
    assert.equal(join.access_token, token);
    const tracks = () =>
      fake.frames("presence", PRESENCE_TOPIC).map((f) => (f[4] as { payload: unknown }).payload);
    assert.deepEqual(tracks(), [{ user_id: USER, lat: 52.52, lng: 13.405 }]);
    await me.update({ lat: 48.137, lng: 11.575 });
    assert.deepEqual(tracks().at(-1), { user_id: USER, lat: 48.137, lng: 11.575 });
    await me.unsubscribe();
    await eventually(() => fake.frames("phx_leave", PRESENCE_TOPIC).length === 1, "left");
    const untrack = fake.frames("presence", PRESENCE_TOPIC).at(-1)![4] as { event: string };
    assert.equal(untrack.event, "untrack");
  } finally {
    await realtime.close();
  }
});

test("after_the_connection_drops_channels_rejoin_and_presence_is_tracked_again", async () => {
  const fake = new FakeRealtime();
  const { realtime } = await signedIn(fake);
  try {
    const got: StatusChange[][] = [];
    const statuses: string[] = [];
    realtime.onStatusChanges((c) => got.push(c), { onStatus: (s) => statuses.push(s) });
    await realtime.trackPresence(USER, { lat: 52.52, lng: 13.405 });
    await eventually(() => realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "subscribed");

    fake.dropAll();
    await eventually(() => fake.urls.length === 2, "a new socket");
    await eventually(() => fake.frames("phx_join", STATUS_TOPIC).length === 2, "rejoined status");
    await eventually(() => fake.frames("presence", PRESENCE_TOPIC).length === 2, "tracked again");
    await eventually(() => fake.joined(STATUS_TOPIC).length === 1, "joined on the server");
    assert.equal(fake.openSockets.length, 1, "still one socket");
    assert.ok(statuses.includes("CHANNEL_ERROR"), "the drop was reported");
    assert.equal(statuses.at(-1), "SUBSCRIBED");

    fake.broadcast(STATUS_TOPIC, STATUS_EVENT, {
      changes: [{ user_id: USER, is_online: false, last_seen_at: null }],
    });
    await eventually(() => got.length === 1, "a broadcast after the reconnect");
  } finally {
    await realtime.close();
  }
});

test("a_channel_the_server_closes_is_joined_again", async () => {
  const fake = new FakeRealtime();
  const { realtime } = await signedIn(fake);
  try {
    const got: StatusChange[][] = [];
    realtime.onStatusChanges((c) => got.push(c));
    await eventually(() => realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "subscribed");
    fake.closeChannel(STATUS_TOPIC);
    await eventually(() => fake.frames("phx_join", STATUS_TOPIC).length === 2, "joined again");
    await eventually(() => realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "subscribed again");
    fake.broadcast(STATUS_TOPIC, STATUS_EVENT, { changes: [] });
    await eventually(() => got.length === 1, "delivered to the new channel");
  } finally {
    await realtime.close();
  }
});

test("a_refused_join_is_reported_as_channel_error", async () => {
  const fake = new FakeRealtime();
  fake.authorize = (topic) =>
    `Unauthorized: You do not have permissions to read from this Channel topic: ${topic}`;
  const { realtime } = await signedIn(fake);
  try {
    const errors: string[] = [];
    realtime.onStatusChanges(() => {}, {
      onStatus: (s, e) => s === "CHANNEL_ERROR" && errors.push(e?.message ?? ""),
    });
    await eventually(() => errors.length > 0, "the refusal");
    assert.match(errors[0], /Unauthorized/);
    const strict = new RealtimeService(realtime.supabase, { trackTimeoutMs: 100 });
    await assert.rejects(strict.trackPresence(USER), /presence not tracked on online-users/);
    assert.deepEqual(strict.activeTopics, [], "a failed track leaves no channel behind");
  } finally {
    await realtime.close();
  }
});

test("a_user_tracked_in_realtime_ends_up_online_and_everyone_hears_about_it", async () => {
  // The user's app and the bridge on one fake Realtime server; behind the bridge everything is
  // real. Realtime's delivery of realtime.send() rows is the one step played by the test.
  const sql = database();
  const fake = new FakeRealtime();
  const [alice, bob] = await createUsers(sql, "client-e2e", 2, { lat: 52.5, lng: 13.4 });
  const app = await signedIn(fake, alice);
  const watcher = await signedIn(fake, bob);
  const service = clientWith(fake, SERVICE_ROLE_KEY);
  const bridge = new PresenceBridge({
    sender: new WebhookSender({ url: `${FUNCTIONS_URL}/presence-webhook`, secret: WEBHOOK_SECRET }),
    log: () => {},
  });
  const source = new RealtimePresenceSource(service, PRESENCE_TOPIC, bridge.tracker, () => {});
  try {
    bridge.start();
    await source.start();
    const heard: StatusChange[] = [];
    watcher.realtime.onStatusChanges((changes) => heard.push(...changes));
    await eventually(() => watcher.realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "watching");

    const me = await app.realtime.trackPresence(alice, { lat: 52.5201, lng: 13.4051 });
    const online = async () =>
      (await sql<{ is_online: boolean }[]>`
        select is_online from public.get_online_users_batch(${[alice]}::uuid[])`)[0]?.is_online;
    await eventually(async () => await online() === true, "alice online in Postgres");

    // The flush applies it and broadcasts; Realtime would deliver that message to subscribers.
    await sql`select public.flush_presence()`;
    const [message] = await sql<{ event: string; payload: Record<string, unknown> }[]>`
      select m.event, m.payload from realtime.messages as m
      where m.topic = ${STATUS_TOPIC} and m.payload -> 'changes' @> ${
      sql.json([{ user_id: alice, is_online: true }])
    }
      order by m.inserted_at desc limit 1`;
    assert.ok(message, "the flush broadcast alice's change");
    fake.broadcast(STATUS_TOPIC, message.event, message.payload);
    await eventually(() => heard.some((c) => c.user_id === alice && c.is_online), "bob heard");
    assert.ok(
      heard.every((c) => Object.keys(c).sort().join() === "is_online,last_seen_at,user_id"),
    );

    await me.unsubscribe(); // the app closes: the last device leaves
    await eventually(async () => await online() === false, "alice offline in Postgres");
  } finally {
    await app.realtime.close();
    await watcher.realtime.close();
    await source.stop();
    await bridge.stop();
    await closeClient(service);
    await deleteUsers(sql, [alice, bob]);
    await sql.end();
  }
});

test("the_api_calls_the_functions_with_the_users_jwt", async () => {
  const sql = database();
  const fake = new FakeRealtime();
  // A place of its own (a fresh cache cell), somewhere in Europe.
  const lat = 40 + Math.random() * 15;
  const lng = Math.random() * 20;
  const [carol, dave] = await createUsers(sql, "client-api", 2, { lat, lng });
  const client = clientWith(fake, ANON_KEY, {
    accessToken: async () => await userJwt(carol),
  });
  const api = new SltrApi(client);
  try {
    const receipt = await api.reportPresence("online", { lat, lng });
    assert.equal(receipt.accepted, 1);

    const status = await api.onlineStatus([carol, dave]);
    const byId = Object.fromEntries(status.users.map((u) => [u.user_id, u.is_online]));
    assert.deepEqual(byId, { [carol]: true, [dave]: false });

    // Dave reports himself online nearby; carol finds him (never herself), without coordinates.
    const daveApi = new SltrApi(
      clientWith(fake, ANON_KEY, { accessToken: async () => await userJwt(dave) }),
    );
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
  const fake = new FakeRealtime();
  const [erin, frank] = await createUsers(sql, "client-rpc", 2, { lat: 52.5, lng: 13.4 });
  const calls: string[] = [];
  const client = clientWith(fake, ANON_KEY, {
    accessToken: async () => await userJwt(erin),
    fetch: postgrestFetch(sql, calls),
  });
  const api = new SltrApi(client);
  try {
    await new SltrApi(clientWith(fake, ANON_KEY, { accessToken: async () => await userJwt(frank) }))
      .reportPresence("online", { lat: 52.501, lng: 13.401 });

    const statuses = await api.getOnlineUsersBatch([erin, frank]);
    assert.deepEqual(
      Object.fromEntries(statuses.map((s) => [s.user_id, s.is_online])),
      { [erin]: false, [frank]: true },
    );
    const nearby = await api.nearbyOnlineUsers({ lat: 52.5, lng: 13.4, radiusM: 3000 });
    assert.ok(nearby.some((u) => u.user_id === frank), "frank is nearby (real time)");
    assert.ok(nearby.every((u) => u.distance_m % 100 === 0), "distances are rounded");
    assert.deepEqual(calls, ["get_online_users_batch", "nearby_online_users"]);

    await assert.rejects(
      api.nearbyOnlineUsers({ lat: 52.5, lng: 13.4, radiusM: 0 }),
      (e) => e instanceof SltrApiError && e.code === "22023" && e.status === 400,
    );
  } finally {
    await deleteUsers(sql, [erin, frank]);
    await sql.end();
  }
});
