// Presence end to end, every part real: a supabase-js client (through the client module) tracks
// on the local Realtime endpoint; the stack's presence bridge turns it into signed batches; the
// presence webhook writes Postgres and Redis; other users read get_online_users_batch and
// nearby-online. And what an attacker with a valid account can do to someone else's status:
// nothing.
import assert from "node:assert/strict";
import { createSltrClient, type SltrClient } from "../../client/mod.ts";
import { ANON_KEY, API_URL, FUNCTIONS_URL, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { startBridge, startFunctionsServer } from "../_lib/servers.ts";
import { eventually, sleep, test } from "../_lib/harness.ts";
import {
  bridgeStats,
  client,
  closeClient,
  createUsers,
  database,
  deleteUsers,
  onlineMap,
  type Sql,
  subscribed,
  ticketFor,
  userClient,
} from "./_helpers.ts";
import { FreezableProxy } from "../_lib/proxy.ts";
import { presenceTopic } from "../../functions/_shared/presence_ticket.ts";

const HERE = { lat: 52.5205, lng: 13.4049 };

async function app(userId: string, url = API_URL, heartbeatIntervalMs?: number) {
  const token = await userJwt(userId);
  return createSltrClient(url, ANON_KEY, {
    accessToken: () => Promise.resolve(token),
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    reconnect: { spreadMs: 200 },
    ...(heartbeatIntervalMs ? { realtime: { heartbeatIntervalMs } } : {}),
  }) as SltrClient;
}

/** Whether `viewer` sees `userId` in nearby-online around HERE. */
async function seenNearby(viewer: string, userId: string, base = FUNCTIONS_URL): Promise<boolean> {
  const res = await fetch(
    `${base}/nearby-online?lat=${HERE.lat}&lng=${HERE.lng}&radius_m=2000&limit=500`,
    { headers: { authorization: `Bearer ${await userJwt(viewer)}` } },
  );
  const body = await res.json() as { users: { user_id: string }[] };
  return body.users.some((u) => u.user_id === userId);
}

async function online(sql: Sql, id: string): Promise<boolean> {
  return (await onlineMap(sql, [id]))[id] === true;
}

test("a_tracked_user_is_online_and_nearby_within_a_second_and_gone_within_a_second", async () => {
  const sql = database();
  const [alice, viewer] = await createUsers(sql, "presence-e2e", 2, HERE);
  const a = await app(alice);
  try {
    const started = performance.now();
    const me = await a.realtime.trackPresence(alice, HERE);
    await eventually(
      async () => await online(sql, alice) && await seenNearby(viewer, alice),
      "alice online in the batch RPC and in viewer's nearby-online",
      1000,
    );
    console.log(`track -> visible: ${(performance.now() - started).toFixed(0)} ms`);

    // Moving is re-tracking; the location reaches only the bridge and the database.
    await me.update({ lat: HERE.lat + 0.001, lng: HERE.lng });
    const left = performance.now();
    await a.realtime.close(); // the app closes its socket: a leave
    await eventually(
      async () => !(await online(sql, alice)) && !(await seenNearby(viewer, alice)),
      "alice offline everywhere",
      1000,
    );
    console.log(`close -> offline: ${(performance.now() - left).toFixed(0)} ms`);
  } finally {
    await a.realtime.close().catch(() => {});
    await deleteUsers(sql, [alice, viewer]);
    await sql.end();
  }
});

test("a_forged_presence_changes_nothing_for_the_victim", async () => {
  const sql = database();
  const [victim, mallory, viewer] = await createUsers(sql, "presence-forged", 3, HERE);
  const attacker = await userClient(mallory);
  const before = (await bridgeStats()).rejected;
  try {
    const expired = ticketFor(victim, { ttlSeconds: 60, nowSeconds: Date.now() / 1000 - 3600 });
    const attempts: [string, Record<string, unknown>][] = [
      // The victim's key with the attacker's own (valid) ticket.
      [victim, { user_id: victim, proof: ticketFor(mallory), ...HERE }],
      // A stolen ticket of the victim's that has expired.
      [victim, { user_id: victim, proof: expired, ...HERE }],
      // The attacker's key, naming the victim.
      [mallory, { user_id: victim, proof: ticketFor(mallory), ...HERE }],
      // No proof at all; a ticket signed with another secret.
      [victim, { user_id: victim, ...HERE }],
      [victim, { user_id: victim, proof: ticketFor(victim, { secret: "guessed".repeat(6) }) }],
    ];
    const channels = [];
    for (const [key, payload] of attempts) {
      // One channel per socket and topic: a fresh client for each forged presence.
      const c = await userClient(mallory);
      const ch = c.channel("online-users", { config: { private: true, presence: { key } } });
      assert.equal((await subscribed(ch)).status, "SUBSCRIBED");
      assert.equal(await ch.track(payload), "ok", "Realtime itself accepts any key");
      channels.push(c);
    }
    await eventually(async () => {
      const now = (await bridgeStats()).rejected;
      const delta = (r: string) => (now[r] ?? 0) - (before[r] ?? 0);
      return delta("wrong_user") >= 2 && delta("expired_proof") >= 1 &&
        delta("missing_proof") >= 1 && delta("invalid_proof") >= 1;
    }, "the bridge counted every forgery by its reason");
    await sleep(500);
    assert.equal(await online(sql, victim), false, "the victim is not online");
    assert.equal(await seenNearby(viewer, victim), false, "nor nearby");
    const [buffered] = await sql`select count(*)::int as n from public.presence_buffer
                                 where user_id = ${victim}`;
    assert.equal(buffered.n, 0, "nothing was even buffered for the victim");

    // The victim comes online for real, and leaves: the forged presences still under their
    // key do not keep them online.
    const v = await app(victim);
    await v.realtime.trackPresence(victim, HERE);
    await eventually(() => online(sql, victim), "the victim's own presence counts");
    await v.realtime.close();
    await eventually(async () => !(await online(sql, victim)), "offline at their real leave", 1000);
    for (const c of channels) await c.realtime.disconnect();
  } finally {
    await attacker.realtime.disconnect();
    await deleteUsers(sql, [victim, mallory, viewer]);
    await sql.end();
  }
});

test("a_lost_socket_goes_offline_as_soon_as_the_server_times_it_out", async () => {
  const sql = database();
  const [bob, viewer] = await createUsers(sql, "presence-lost", 2, HERE);
  // A private Realtime endpoint with a 2 s idle timeout (hosted: 60 s), its own bridge, and a
  // proxy between the client and it that can go silent like a phone out of coverage.
  const idleMs = 2000;
  const server = await startFunctionsServer({ REALTIME_IDLE_TIMEOUT_MS: String(idleMs) });
  const base = server.url.replace(/\/functions\/v1$/, "");
  const bridge = await startBridge(base, { BRIDGE_HEARTBEAT_INTERVAL_MS: "500" });
  const proxy = new FreezableProxy(Number(new URL(base).port));
  // Heartbeats well inside the idle timeout, as realtime-js's 25 s are inside hosted's 60 s.
  const b = await app(bob, `http://127.0.0.1:${proxy.port}`, 500);
  try {
    await b.realtime.trackPresence(bob, HERE);
    await eventually(() => online(sql, bob), "bob online");
    proxy.freeze();
    const lost = performance.now();

    await eventually(async () => !(await online(sql, bob)), "bob offline", idleMs + 3000);
    const took = performance.now() - lost;
    console.log(`socket lost -> offline: ${took.toFixed(0)} ms (idle timeout ${idleMs} ms)`);
    assert.ok(took >= idleMs - 600, `not before the server timeout (${took} ms)`);
    assert.ok(took <= idleMs + 1000, `within a second of it (${took} ms)`);
    assert.equal(await seenNearby(viewer, bob), false);
  } finally {
    proxy.close();
    await b.realtime.close().catch(() => {});
    await bridge.stop();
    server.child.kill();
    await server.child.status;
    await deleteUsers(sql, [bob, viewer]);
    await sql.end();
  }
});

test("the_bridge_joins_again_when_the_server_closes_its_channel_and_resyncs", async () => {
  // Hosted closes every channel that receives a broadcast while the tenant is over its messages
  // per second ("Too many messages per second", then phx_close), and realtime-js does not rejoin
  // a closed channel. A private endpoint with a limit of 1 message/s, its own bridge; bob leaves
  // while the bridge is away, carol arrives after, alice stays (her app's channel is closed too
  // and joins again by itself, client/realtime.ts). That nobody still present flaps in the
  // resync is bridge.test.ts's.
  const sql = database();
  const [alice, bob, carol] = await createUsers(sql, "bridge-rejoin", 3, HERE);
  const server = await startFunctionsServer({ REALTIME_MAX_EVENTS_PER_SECOND: "1" });
  const base = server.url.replace(/\/functions\/v1$/, "");
  // Leaves after a rejoin wait the grace (clients reconnecting): 3 s here, not 60.
  const bridge = await startBridge(base, { BRIDGE_REJOIN_GRACE_MS: "3000" });
  const apps = await Promise.all([alice, bob, carol].map((id) => app(id, base)));
  const health = async () =>
    await (await fetch(bridge.health)).json() as { joined: boolean; rejoins: number };
  try {
    await apps[0].realtime.trackPresence(alice, HERE);
    await apps[1].realtime.trackPresence(bob, HERE);
    await eventually(async () => await online(sql, alice) && await online(sql, bob), "both online");

    // Over the limit: a burst of broadcasts from a service client on the topic, judged at the
    // next tick (5 s), then one more, which closes every channel that receives it, the
    // bridge's among them. (The REST API refuses a batch over the limit with 429 instead.)
    const service = client(SERVICE_ROLE_KEY, { url: base });
    await service.realtime.setAuth();
    const noise = service.channel("online-users", { config: { private: true } });
    assert.equal((await subscribed(noise)).status, "SUBSCRIBED");
    const broadcast = (n: number) =>
      Promise.all(
        Array.from({ length: n }, () =>
          noise.send({ type: "broadcast", event: "noise", payload: {} })),
      );
    await broadcast(50);
    await sleep(5200);
    // Bob closes his app as the bridge's channel is closed: his leave reaches nobody.
    await Promise.all([broadcast(1), apps[1].realtime.close()]);
    await closeClient(service);
    await eventually(async () => (await health()).rejoins >= 1, "the bridge joined again", 40_000);
    await eventually(async () => (await health()).joined, "joined", 10_000);
    await eventually(async () => !(await online(sql, bob)), "bob offline after the grace", 15_000);

    // Presence flows again through the new channel.
    await apps[2].realtime.trackPresence(carol, HERE);
    await eventually(() => online(sql, carol), "carol online through the new channel", 5000);
    await eventually(() => online(sql, alice), "alice online, her app joined again", 10_000);
    assert.equal(await online(sql, bob), false, "bob stays offline");
  } finally {
    await Promise.all(apps.map((a) => a.realtime.close().catch(() => {})));
    await bridge.stop();
    server.child.kill();
    await server.child.status;
    await deleteUsers(sql, [alice, bob, carol]);
    await sql.end();
  }
});

test("presence_sharded_over_topics_each_user_counts_on_its_own_shard_only", async () => {
  // Four topics, two bridges holding two each, as docs/scaling.md deploys them at 50k online.
  const sql = database();
  const ids = await createUsers(sql, "presence-shards", 13, HERE);
  const [mallory, ...users] = ids;
  const shards = { SLTR_PRESENCE_TOPICS: "4" };
  const server = await startFunctionsServer(shards);
  const base = server.url.replace(/\/functions\/v1$/, "");
  const bridges = await Promise.all(
    ["0-1", "2-3"].map((b) => startBridge(base, { ...shards, BRIDGE_TOPICS: b })),
  );
  const health = () =>
    Promise.all(bridges.map(async (b) =>
      await (await fetch(b.health)).json() as {
        online: number;
        topics: Record<string, boolean>;
        rejected: Record<string, number>;
      }
    ));
  const apps = await Promise.all(users.map((id) => app(id, base)));
  const attacker = await userClient(mallory, { url: base });
  try {
    assert.deepEqual((await health()).map((h) => Object.keys(h.topics)), [
      ["online-users:0", "online-users:1"],
      ["online-users:2", "online-users:3"],
    ]);
    // The ticket function names each user's shard; the client module tracks there.
    const tracked = await Promise.all(
      users.map((id, i) => apps[i].realtime.trackPresence(id, HERE)),
    );
    tracked.forEach((me, i) => assert.equal(me.topic, presenceTopic(users[i], 4)));
    assert.ok(new Set(tracked.map((me) => me.topic)).size >= 3, "the users are spread");
    await eventually(
      async () => Object.values(await onlineMap(sql, users)).every(Boolean),
      "all online",
    );
    // Each user is held by exactly one bridge: the one holding their topic.
    await eventually(async () => {
      const [a, b] = await health();
      return a.online + b.online === users.length;
    }, "12 users between the two bridges");
    const [a] = await health();
    const onA = users.filter((id) =>
      ["online-users:0", "online-users:1"].includes(presenceTopic(id, 4))
    );
    assert.equal(a.online, onA.length);

    // Mallory's own valid ticket, tracked on a shard it does not name: neither bridge believes it.
    const own = presenceTopic(mallory, 4);
    const elsewhere = own === "online-users:0" ? "online-users:3" : "online-users:0";
    const ch = attacker.channel(elsewhere, {
      config: { private: true, presence: { key: mallory } },
    });
    assert.equal((await subscribed(ch)).status, "SUBSCRIBED");
    const proof = ticketFor(mallory, { topic: own });
    assert.equal(await ch.track({ user_id: mallory, proof, ...HERE }), "ok");
    await eventually(async () => {
      const all = await health();
      return all.reduce((n, h) => n + (h.rejected.wrong_topic ?? 0), 0) === 1;
    }, "the wrong shard counted");
    await sleep(500);
    assert.equal(await online(sql, mallory), false, "mallory is not online from the wrong shard");

    // A user who leaves goes offline through their shard's bridge.
    await tracked[0].unsubscribe();
    await eventually(async () => !(await online(sql, users[0])), "offline after leaving");
  } finally {
    await Promise.all(apps.map((a) => a.realtime.close()));
    await attacker.realtime.disconnect();
    for (const b of bridges) await b.stop();
    server.child.kill();
    await server.child.status;
    await deleteUsers(sql, ids);
    await sql.end();
  }
});

test("a_resharded_presence_moves_to_the_topic_its_renewed_ticket_names_and_stays_online", async () => {
  const sql = database();
  const [alice] = await createUsers(sql, "presence-reshard", 1, HERE);
  const shards = { SLTR_PRESENCE_TOPICS: "4" };
  const server = await startFunctionsServer(shards);
  const base = server.url.replace(/\/functions\/v1$/, "");
  const bridges = await Promise.all(
    ["0-1", "2-3"].map((b) => startBridge(base, { ...shards, BRIDGE_TOPICS: b })),
  );
  // Tickets of 3 s (renewed after 2): the first for shard 1, later ones for shard 2, as if the
  // operator had changed SLTR_PRESENCE_TOPICS in between.
  let issued = 0;
  const ticket = () => {
    const topic = issued++ === 0 ? "online-users:1" : "online-users:2";
    const t = ticketFor(alice, { topic, ttlSeconds: 3 });
    return Promise.resolve({ ticket: t, topic, expires_at: "", expires_in: 3 });
  };
  const token = await userJwt(alice);
  const a = createSltrClient(base, ANON_KEY, {
    accessToken: () => Promise.resolve(token),
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtimeService: { ticket },
  });
  try {
    const me = await a.realtime.trackPresence(alice, HERE);
    assert.equal(me.topic, "online-users:1");
    await eventually(() => online(sql, alice), "online on shard 1");
    await eventually(() => Promise.resolve(me.topic === "online-users:2"), "moved", 5000);
    assert.deepEqual(a.realtime.activeTopics, ["online-users:2"], "the old topic was left");
    await eventually(async () => {
      const [h1, h2] = await Promise.all(bridges.map(async (b) => (await fetch(b.health)).json()));
      return h1.online === 0 && h2.online === 1;
    }, "held by the second shard's bridge alone");
    await eventually(() => online(sql, alice), "online after the move");
    // And it keeps being renewed there: still online two renewals later.
    await sleep(4500);
    assert.equal(await online(sql, alice), true);
    await me.update({ lat: HERE.lat + 0.01, lng: HERE.lng });
  } finally {
    await a.realtime.close();
    for (const b of bridges) await b.stop();
    server.child.kill();
    await server.child.status;
    await deleteUsers(sql, [alice]);
    await sql.end();
  }
});

test("the_realtime_endpoint_restarts_under_clients_and_nobody_reads_offline", async () => {
  // A Realtime restart drops every socket. The clients come back spread over 6 s (the client
  // module's ReconnectPolicy; 45 s in production), the bridge after ~1-3 s: its first state then
  // holds a few of them, and without the rejoin grace the others would go offline until they
  // are back. A watcher samples Postgres throughout: nobody may read offline.
  const sql = database();
  const users = await createUsers(sql, "realtime-restart", 24, HERE);
  let server = await startFunctionsServer({});
  const port = Number(new URL(server.url).port);
  const base = `http://127.0.0.1:${port}`;
  const bridge = await startBridge(base, { BRIDGE_REJOIN_GRACE_MS: "20000" });
  const apps = await Promise.all(users.map(async (id) => {
    const token = await userJwt(id);
    return createSltrClient(base, ANON_KEY, {
      accessToken: () => Promise.resolve(token),
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      reconnect: { spreadMs: 6000 },
    }) as SltrClient;
  }));
  const health = async () =>
    await (await fetch(bridge.health)).json() as {
      joined: boolean;
      online: number;
      heldLeaves: number;
    };
  let watching = true;
  const offlineSeen = new Set<string>();
  let samples = 0;
  try {
    const tracked = await Promise.all(apps.map((a, i) => a.realtime.trackPresence(users[i], HERE)));
    const watches = apps.map((a) => a.realtime.watchStatus(() => {}));
    const inbox = (i: number) => `presence:user:${users[i]}`;
    await eventually(
      () => Promise.resolve(apps.every((a, i) => a.realtime.status(inbox(i)) === "SUBSCRIBED")),
      "every inbox joined",
    );
    await eventually(
      async () => Object.values(await onlineMap(sql, users)).every(Boolean),
      "online",
    );
    const watcher = (async () => {
      while (watching) {
        const map = await onlineMap(sql, users);
        for (const id of users) if (map[id] !== true) offlineSeen.add(id);
        samples++;
        await sleep(100);
      }
    })();

    server.child.kill();
    await server.child.status;
    await sleep(1000);
    server = await startFunctionsServer({}, "presence-webhook", port);
    const restarted = performance.now();

    await eventually(
      () =>
        Promise.resolve(apps.every((a, i) =>
          a.realtime.status(tracked[i].topic) === "SUBSCRIBED" &&
          a.realtime.status(inbox(i)) === "SUBSCRIBED"
        )),
      "every client joined again",
      20_000,
    );
    await eventually(
      async () => {
        const text = await (await fetch(`${server.url}/metrics`, {
          headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
        })).text();
        return Number(/^sltr_realtime_presences (\d+)/m.exec(text)?.[1]) === users.length;
      },
      "every presence tracked again on the new endpoint",
      20_000,
    );
    const back = performance.now() - restarted;
    const h = await health();
    assert.equal(h.joined, true);
    assert.equal(h.online, users.length, "the bridge holds everyone");
    await sleep(1000); // a last batch's worth
    watching = false;
    await watcher;
    console.log(
      `restart: all ${users.length} back ${back.toFixed(0)} ms after the endpoint; ` +
        `${samples} samples, bridge held leaves ${h.heldLeaves}`,
    );
    assert.ok(samples > 20, "the watcher sampled throughout");
    assert.deepEqual([...offlineSeen], [], "nobody read offline during the restart");
    await Promise.all(watches.map((w) => w.unsubscribe()));
  } finally {
    watching = false;
    await Promise.all(apps.map((a) => a.realtime.close().catch(() => {})));
    await bridge.stop();
    server.child.kill();
    await server.child.status;
    await deleteUsers(sql, users);
    await sql.end();
  }
});
