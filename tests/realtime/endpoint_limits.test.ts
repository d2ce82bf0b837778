// The local Realtime endpoint's tenant limits and its broadcast REST API, on a private server
// (own process and port, the stack's database) whose limits are set low enough to reach.
import assert from "node:assert/strict";
import postgres from "postgres";
import { ANON_KEY, DB_URL, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { eventually, sleep, test } from "../_lib/harness.ts";
import { client, closeClient, subscribed } from "./_helpers.ts";

async function privateServer(env: Record<string, string>) {
  const { url, child } = await startFunctionsServer({
    REALTIME_JOIN_ERROR_BACKOFF_MS: "50",
    REALTIME_CONNECT_ERROR_BACKOFF_MS: "50",
    ...env,
  });
  const base = url.replace(/\/functions\/v1$/, "");
  return {
    base,
    stop: async () => {
      child.kill();
      await child.status;
    },
  };
}

test("a_flood_of_joins_is_refused_and_drops_the_socket_as_hosted", async () => {
  const server = await privateServer({ REALTIME_MAX_JOINS_PER_SECOND: "2" });
  const flooder = client(ANON_KEY, { url: server.base });
  const calm = client(ANON_KEY, { url: server.base });
  try {
    const heard: unknown[] = [];
    const room = calm.channel("calm").on("broadcast", { event: "*" }, (m) => heard.push(m));
    assert.equal((await subscribed(room)).status, "SUBSCRIBED");
    // 40 joins at once: over 2/s on average for the next buckets, judged at the next tick (5 s).
    const first = await Promise.all(
      Array.from({ length: 40 }, (_, i) => subscribed(flooder.channel(`flood-${i}`))),
    );
    assert.ok(first.every((r) => r.status === "SUBSCRIBED"), "admitted before the tick");
    let refusal: { status: string; error?: Error } | undefined;
    for (let attempt = 0; attempt < 3 && refusal?.status !== "CHANNEL_ERROR"; attempt++) {
      await sleep(5200);
      refusal = await subscribed(flooder.channel(`flood-late-${attempt}`));
    }
    assert.equal(refusal!.error?.message, "ClientJoinRateLimitReached: Too many joins per second");
    await eventually(() => !flooder.realtime.isConnected(), "the socket was dropped");
    // The other member is untouched.
    const res = await fetch(`${server.base}/realtime/v1/api/broadcast`, {
      method: "POST",
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ topic: "calm", event: "still", payload: {} }] }),
    });
    assert.equal(res.status, 202);
    await eventually(() => heard.length === 1, "the calm client still hears its room");
  } finally {
    await closeClient(flooder);
    await closeClient(calm);
    await server.stop();
  }
});

test("channels_per_socket_and_connected_users_are_capped", async () => {
  const server = await privateServer({
    REALTIME_MAX_CHANNELS_PER_CLIENT: "3",
    REALTIME_MAX_CONCURRENT_USERS: "2",
  });
  const clients = [0, 1, 2, 3].map(() => client(ANON_KEY, { url: server.base }));
  try {
    // Connected before the cap is reached, so its join is the one refused.
    clients[2].realtime.connect();
    await eventually(() => clients[2].realtime.isConnected(), "third socket open");
    for (let i = 0; i < 3; i++) {
      assert.equal((await subscribed(clients[0].channel(`c${i}`))).status, "SUBSCRIBED");
    }
    const fourth = await subscribed(clients[0].channel("c3"));
    assert.equal(fourth.error?.message, "ChannelRateLimitReached: Too many channels");
    assert.equal((await subscribed(clients[1].channel("c0"))).status, "SUBSCRIBED");
    const third = await subscribed(clients[2].channel("c0"));
    assert.equal(third.error?.message, "ConnectionRateLimitReached: Too many connected users");
    // A socket opened after it is refused at the upgrade (429), so realtime-js sees a failed
    // transport.
    const fourth2 = await subscribed(clients[3].channel("c0"));
    assert.equal(fourth2.status, "CHANNEL_ERROR");
    assert.match(fourth2.error?.message ?? "", /transport|socket/);
  } finally {
    for (const c of clients) await closeClient(c);
    await server.stop();
  }
});

test("the_broadcast_rest_api_checks_the_token_and_the_write_policy", async () => {
  const server = await privateServer({});
  const listener = client(SERVICE_ROLE_KEY, { url: server.base });
  const heard: { event: string; payload: unknown }[] = [];
  try {
    const ch = listener.channel("online-users", { config: { private: true } })
      .on("broadcast", { event: "*" }, (m) => heard.push(m as never));
    const open = listener.channel("lobby").on(
      "broadcast",
      { event: "*" },
      (m) => heard.push(m as never),
    );
    await subscribed(ch);
    await subscribed(open);
    const post = (
      path: string,
      token: string | undefined,
      body: unknown,
      type = "application/json",
    ) =>
      fetch(`${server.base}/realtime/v1/api/broadcast${path}`, {
        method: "POST",
        headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), "content-type": type },
        body: body instanceof Uint8Array
          ? new Blob([body as Uint8Array<ArrayBuffer>])
          : JSON.stringify(body),
      });
    const noToken = await post("", undefined, { messages: [] });
    assert.equal(noToken.status, 401);
    assert.deepEqual(await noToken.json(), { message: "Unauthorized" });
    const invalid = await post("", SERVICE_ROLE_KEY, { messages: [{ topic: "lobby" }] });
    assert.equal(invalid.status, 422);
    await invalid.body?.cancel();

    // A user may not write to online-users: the batch skips it (still 202), the single
    // endpoint answers 403; service_role may.
    const user = await userJwt(crypto.randomUUID());
    const skipped = await post("", user, {
      messages: [
        { topic: "online-users", event: "nope", payload: {}, private: true },
        { topic: "lobby", event: "public", payload: { n: 1 } },
      ],
    });
    assert.equal(skipped.status, 202);
    const refused = await post("/online-users/events/nope?private=true", user, { a: 1 });
    assert.equal(refused.status, 403);
    await refused.body?.cancel();
    const single = await post("/online-users/events/ok?private=true", SERVICE_ROLE_KEY, { b: 2 });
    assert.equal(single.status, 202);
    const bytes = await post(
      "/lobby/events/raw",
      SERVICE_ROLE_KEY,
      new Uint8Array([1, 2]),
      "application/octet-stream",
    );
    assert.equal(bytes.status, 202);
    await eventually(() => heard.length === 3, "three delivered");
    await sleep(100);
    assert.deepEqual(heard.map((m) => m.event).sort(), ["ok", "public", "raw"]);
    assert.deepEqual(heard.find((m) => m.event === "ok")?.payload, { b: 2 });
  } finally {
    await closeClient(listener);
    await server.stop();
  }
});

test("database_broadcasts_over_the_rate_are_dropped_at_the_source_as_hosted", async () => {
  // replication_connection.ex hands each row of realtime.messages to BatchBroadcast as a batch of
  // one: refused while the tenant's average messages per second (plus this one) is over its
  // limit, else counted once at the source and once per delivery. Hosted drops the refused rows
  // and tells nobody; the receivers stay joined.
  const server = await privateServer({
    REALTIME_MAX_EVENTS_PER_SECOND: "1",
    REALTIME_REPLICATION_DB_URL: DB_URL, // a stream of its own (a temporary slot)
  });
  const sql = postgres(DB_URL, { max: 1, onnotice: () => {} });
  const listener = client(SERVICE_ROLE_KEY, { url: server.base });
  const heard: unknown[] = [];
  const statuses: string[] = [];
  try {
    await listener.realtime.setAuth();
    const ch = listener.channel("online-users", { config: { private: true } })
      .on("broadcast", { event: "db-noise" }, (m) => heard.push(m));
    ch.subscribe((status) => statuses.push(status));
    await eventually(() => statuses.includes("SUBSCRIBED"), "joined", 5000);
    const send = (n: number) =>
      sql`select realtime.send('{}'::jsonb, 'db-noise', 'online-users', true)
          from generate_series(1, ${n}::int)`;
    // The replication stream starts with the first join; rows committed before its slot exists
    // are never delivered (hosted's TEMPORARY slot): one row until one arrives.
    await eventually(
      async () => {
        await send(1);
        await sleep(200);
        return heard.length > 0;
      },
      "the replication stream",
      10_000,
    );
    await sleep(300);
    const probes = heard.length;
    // Admitted until the next tick judges the rate: 20 rows, each counted at the source and on
    // its delivery.
    await send(20);
    await eventually(() => heard.length === probes + 20, "the first rows delivered", 5000);
    await sleep(5200);
    await send(5);
    await sleep(1500);
    assert.equal(heard.length, probes + 20, "rows sent over the rate are dropped at the source");
    assert.equal(ch.state, "joined", "and the receiver stays joined");
    assert.ok(!statuses.includes("CLOSED"), statuses.join(","));
    const metrics = await fetch(`${server.base}/functions/v1/metrics`, {
      headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    }).then((r) => r.text());
    assert.match(metrics, /^sltr_realtime_database_broadcasts_dropped_total 5$/m);
    assert.match(
      metrics,
      new RegExp(`^sltr_realtime_database_broadcasts_total ${probes + 20}$`, "m"),
    );
  } finally {
    await closeClient(listener);
    await sql.end();
    await server.stop();
  }
});

test("private_joins_share_the_database_connection_pool_and_a_long_wait_is_refused_as_hosted", async () => {
  // Realtime Authorization runs on the tenant's "Database connection pool size" (db_pool,
  // default 1). A check waits for a connection; one that waited twice db_queue_target is dropped
  // (DBConnection) and the join refused; and once the drops in 30 s reach db_pool, every private
  // join is refused at once until they fall back under it (tenants.ex
  // authorization_errors_per_second_rate/1).
  const users = ["a1", "a2", "a3"].map(() => crypto.randomUUID());
  const storm = async (env: Record<string, string>) => {
    const server = await privateServer({ REALTIME_DB_POOL: "1", ...env });
    const clients = await Promise.all(
      users.map(async (id) => client(ANON_KEY, { url: server.base, token: await userJwt(id) })),
    );
    try {
      for (const c of clients) await c.realtime.setAuth();
      // 300 private joins at once, 100 a socket (the channel cap): one check each.
      const results = await Promise.all(
        clients.flatMap((c) =>
          Array.from(
            { length: 100 },
            (_, k) => subscribed(c.channel(`online-users:${k}`, { config: { private: true } })),
          )
        ),
      );
      const metrics = await (await fetch(`${server.base}/functions/v1/metrics`, {
        headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
      })).text();
      const after = async () => {
        await sleep(1100); // the errors counter's next tick
        // A socket of its own: the others hold their 100 channels (the cap).
        const late = client(ANON_KEY, { url: server.base, token: await userJwt(users[0]) });
        clients.push(late);
        await late.realtime.setAuth();
        return await subscribed(late.channel("online-users:0", { config: { private: true } }));
      };
      return { results, metrics, late: await after() };
    } finally {
      for (const c of clients) await closeClient(c);
      await server.stop();
    }
  };
  const reason = "IncreaseConnectionPool: Please increase your connection pool size";

  // The default queue target (5 s): all 300 wait their turn on the one connection and join.
  const patient = await storm({});
  assert.deepEqual(
    [...new Set(patient.results.map((r) => r.status))],
    ["SUBSCRIBED"],
    "every join waited for the connection",
  );
  assert.match(patient.metrics, /^sltr_realtime_authorization_pool_timeouts_total 0$/m);

  // A 5 ms target: the checks queued behind more than 10 ms of others are dropped.
  const hurried = await storm({ REALTIME_DB_QUEUE_TARGET_MS: "5" });
  const refused = hurried.results.filter((r) => r.error?.message === reason);
  const joined = hurried.results.filter((r) => r.status === "SUBSCRIBED");
  assert.ok(refused.length > 0, "joins that waited too long are refused");
  assert.ok(joined.length > 0, "the ones the connection served in time joined");
  assert.equal(refused.length + joined.length, 300, "nothing else happened");
  console.log(`a 10 ms wait: ${joined.length} joined, ${refused.length} refused`);
  const timeouts = Number(
    /^sltr_realtime_authorization_pool_timeouts_total (\d+)$/m.exec(hurried.metrics)?.[1],
  );
  // Refusals are the drops, and after the next tick every check while the drops are over
  // db_pool (a refused channel also rejoins by itself a second later).
  assert.ok(timeouts > 0 && timeouts <= refused.length + 100, `drops counted: ${timeouts}`);
  // The drops reached db_pool: the next private join is refused without waiting at all.
  assert.equal(
    hurried.late.error?.message,
    reason,
    `refused while the errors are over db_pool: ${JSON.stringify(hurried.late)}`,
  );
});
