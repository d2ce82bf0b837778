// The local Realtime endpoint behaves like hosted Realtime in what the project and its clients
// use: supabase-js over a real WebSocket on 54321, the running database behind it. (Frames
// supabase-js cannot send, such as garbage, go over a bare WebSocket.)
import assert from "node:assert/strict";
import type { RealtimeChannel } from "@supabase/supabase-js";
import { ANON_KEY, API_URL, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { eventually, sleep, test } from "../_lib/harness.ts";
import { client, closeClient, database, subscribed, userClient } from "./_helpers.ts";
import { sample, scrape } from "../_lib/metrics.ts";

const WS_URL = `${API_URL.replace(/^http/, "ws")}/realtime/v1/websocket`;

/** A bare socket speaking V2 frames, for what supabase-js would never send. */
async function bareSocket(key = ANON_KEY) {
  const ws = new WebSocket(`${WS_URL}?apikey=${key}&vsn=2.0.0`);
  ws.binaryType = "arraybuffer";
  const frames: unknown[][] = [];
  const closed = new Promise<CloseEvent>((r) => ws.onclose = r);
  ws.onmessage = (e) => {
    if (typeof e.data === "string") frames.push(JSON.parse(e.data));
  };
  await new Promise((r, j) => {
    ws.onopen = r;
    ws.onerror = j;
  });
  return {
    ws,
    frames,
    closed,
    send: (frame: unknown) => ws.send(typeof frame === "string" ? frame : JSON.stringify(frame)),
    /** Frames with this ref (a reply), or of this event on this topic. */
    find: (ref: string) => frames.filter((f) => f[1] === ref),
  };
}

test("broadcasts_reach_other_members_and_the_sender_only_when_it_asks", async () => {
  const topic = `room-${crypto.randomUUID()}`;
  const [a, b, v1] = [client(), client(), client(ANON_KEY, { vsn: "1.0.0" })];
  const got: Record<string, unknown[]> = { a: [], b: [], v1: [] };
  try {
    const ca = a.channel(topic, { config: { broadcast: { self: true, ack: true } } })
      .on("broadcast", { event: "*" }, (m) => got.a.push(m));
    const cb = b.channel(topic).on("broadcast", { event: "hello" }, (m) => got.b.push(m));
    const c1 = v1.channel(topic).on("broadcast", { event: "*" }, (m) => got.v1.push(m));
    for (const ch of [ca, cb, c1]) assert.equal((await subscribed(ch)).status, "SUBSCRIBED");

    // realtime-js 2.119 sends this as a binary kind-3 frame; receivers on 2.0.0 get kind 4,
    // the one on 1.0.0 a JSON text frame.
    assert.equal(await ca.send({ type: "broadcast", event: "hello", payload: { n: 1 } }), "ok");
    const expected = { type: "broadcast", event: "hello", payload: { n: 1 } };
    await eventually(() => got.b.length === 1 && got.a.length === 1 && got.v1.length === 1, "all");
    assert.deepEqual(got.b[0], expected);
    assert.deepEqual(got.a[0], expected, "self: true");
    assert.deepEqual(got.v1[0], expected, "a 1.0.0 socket gets it as JSON");

    // b did not ask for its own messages (self defaults to false), and listens to one event.
    await cb.send({ type: "broadcast", event: "hello", payload: { n: 2 } });
    await cb.send({ type: "broadcast", event: "other", payload: { n: 3 } });
    await eventually(() => got.a.length === 3 && got.v1.length === 3, "a and v1 get both");
    await sleep(100);
    assert.equal(got.b.length, 1, "no echo to b, and no 'other' event");

    // A 1.0.0 client sends JSON text; 2.0.0 receivers get it as text too.
    await c1.send({ type: "broadcast", event: "hello", payload: { n: 4 } });
    await eventually(() => got.b.length === 2, "b hears v1");
    assert.deepEqual(got.b[1], { type: "broadcast", event: "hello", payload: { n: 4 } });
  } finally {
    for (const c of [a, b, v1]) await closeClient(c);
  }
});

test("an_oversized_broadcast_is_refused_to_an_ack_sender_and_reaches_nobody", async () => {
  const topic = `room-${crypto.randomUUID()}`;
  const [a, b] = [client(), client()];
  const heard: unknown[] = [];
  try {
    const ca = a.channel(topic, { config: { broadcast: { ack: true } } });
    const cb = b.channel(topic).on("broadcast", { event: "*" }, (m) => heard.push(m));
    await subscribed(ca);
    await subscribed(cb);
    // The stack runs the Team plan (supabase/local.env): payloads up to 3,000 KB (+500 B slack).
    const big = { blob: "x".repeat(3001 * 1000) };
    assert.equal(await ca.send({ type: "broadcast", event: "big", payload: big }), "error");
    assert.equal(await ca.send({ type: "broadcast", event: "small", payload: { ok: 1 } }), "ok");
    await eventually(() => heard.length === 1, "the small one");
    assert.equal((heard[0] as { event: string }).event, "small");
  } finally {
    await closeClient(a);
    await closeClient(b);
  }
});

test("presence_keeps_one_meta_per_device_under_a_key_and_sends_diffs", async () => {
  const topic = `room-${crypto.randomUUID()}`;
  const [phone, laptop, watcher] = [client(), client(), client()];
  const events: string[] = [];
  try {
    const cw = watcher.channel(topic)
      .on("presence", { event: "join" }, ({ key }) => events.push(`join ${key}`))
      .on("presence", { event: "leave" }, ({ key }) => events.push(`leave ${key}`));
    await subscribed(cw);
    const cp = phone.channel(topic, { config: { presence: { key: "ann" } } });
    const cl = laptop.channel(topic, { config: { presence: { key: "ann" } } });
    await subscribed(cp);
    await subscribed(cl);
    assert.equal(await cp.track({ device: "phone" }), "ok");
    assert.equal(await cl.track({ device: "laptop" }), "ok");
    await eventually(() => (cw.presenceState().ann ?? []).length === 2, "two metas for ann");
    const devices = cw.presenceState<{ device: string }>().ann.map((m) => m.device).sort();
    assert.deepEqual(devices, ["laptop", "phone"]);

    // An update is a new meta replacing the old one, not a third.
    assert.equal(await cp.track({ device: "phone", lat: 1 }), "ok");
    await eventually(
      () => cw.presenceState<{ lat?: number }>().ann?.some((m) => m.lat === 1),
      "the update",
    );
    assert.equal(cw.presenceState().ann.length, 2);

    // A late joiner gets the whole state at once (presence_state).
    const late = client();
    try {
      const cx = late.channel(topic).on("presence", { event: "sync" }, () => {});
      await subscribed(cx);
      await eventually(() => (cx.presenceState().ann ?? []).length === 2, "state on join");
    } finally {
      await closeClient(late);
    }

    await closeClient(laptop); // the socket goes: its meta leaves at once
    await eventually(() => cw.presenceState().ann?.length === 1, "one device left");
    assert.equal(await cp.untrack(), "ok");
    await eventually(() => cw.presenceState().ann === undefined, "ann gone");
    assert.ok(events.includes("join ann") && events.includes("leave ann"));
  } finally {
    for (const c of [phone, laptop, watcher]) await closeClient(c);
  }
});

test("private_channels_are_authorized_by_rls_with_the_hosted_refusals", async () => {
  const [userA, userB] = [crypto.randomUUID(), crypto.randomUUID()];
  const a = await userClient(userA);
  const b = await userClient(userB);
  const bridge = client(SERVICE_ROLE_KEY);
  try {
    // No policy lets users read this topic: refused, with hosted's words.
    const denied = await subscribed(a.channel("not-for-you", { config: { private: true } }));
    assert.equal(denied.status, "CHANNEL_ERROR");
    assert.equal(
      denied.error?.message,
      "Unauthorized: You do not have permissions to read from this Channel topic: not-for-you",
    );
    await a.removeAllChannels();

    // online-users: users may join and track, but never read anyone's presence.
    const ca = a.channel("online-users", { config: { private: true, presence: { key: userA } } });
    const cb = b.channel("online-users", {
      config: { private: true, presence: { key: userB, enabled: true } },
    }).on("presence", { event: "sync" }, () => {});
    const cs = bridge.channel("online-users", { config: { private: true } })
      .on("presence", { event: "sync" }, () => {});
    for (const ch of [ca, cb, cs]) assert.equal((await subscribed(ch)).status, "SUBSCRIBED");
    assert.equal(await ca.track({ user_id: userA }), "ok");
    await eventually(() => cs.presenceState()[userA]?.length === 1, "service_role sees A");
    await sleep(200);
    assert.deepEqual(cb.presenceState(), {}, "B, a user, sees no presence at all");
  } finally {
    for (const c of [a, b, bridge]) await closeClient(c);
  }
});

test("a_broadcast_denied_by_the_write_policy_is_dropped_even_with_ack", async () => {
  const user = crypto.randomUUID();
  const a = await userClient(user, { timeoutMs: 1500 });
  const bridge = client(SERVICE_ROLE_KEY);
  const heard: unknown[] = [];
  try {
    const ca = a.channel("online-users", { config: { private: true, broadcast: { ack: true } } });
    const cs = bridge.channel("online-users", { config: { private: true } })
      .on("broadcast", { event: "*" }, (m) => heard.push(m));
    await subscribed(ca);
    await subscribed(cs);
    assert.equal(await ca.send({ type: "broadcast", event: "spam", payload: {} }), "timed out");
    await sleep(100);
    assert.deepEqual(heard, []);
  } finally {
    await closeClient(a);
    await closeClient(bridge);
  }
});

test("database_broadcasts_reach_members_within_100_ms", async () => {
  const sql = database();
  const topic = `db-${crypto.randomUUID()}`;
  const bridge = client(SERVICE_ROLE_KEY);
  const anon = client();
  try {
    let arrived:
      | ((m: { payload: { i: number; id: string }; meta?: { id: string } }) => void)
      | undefined;
    const cs = bridge.channel(topic, { config: { private: true } })
      .on("broadcast", { event: "ping" }, (m) => arrived?.(m as never));
    const publicHeard: unknown[] = [];
    const cp = anon.channel(topic).on("broadcast", { event: "*" }, (m) => publicHeard.push(m));
    await subscribed(cs);
    await subscribed(cp);
    const latencies: number[] = [];
    for (let i = 0; i < 50; i++) {
      const got = new Promise<{ payload: { i: number; id: string }; meta?: { id: string } }>(
        (r) => arrived = r,
      );
      const started = performance.now();
      await sql`select realtime.send(${sql.json({ i })}, 'ping', ${topic}, true)`;
      const m = await got;
      latencies.push(performance.now() - started);
      assert.equal(m.payload.i, i);
      assert.equal(m.meta?.id, m.payload.id, "the row's id, as hosted sends it");
    }
    latencies.sort((x, y) => x - y);
    const p99 = latencies[Math.ceil(latencies.length * 0.99) - 1];
    console.log(`database broadcast: p50 ${latencies[25].toFixed(2)} ms, p99 ${p99.toFixed(2)} ms`);
    assert.ok(p99 < 100, `p99 ${p99} ms`);
    // A private message never reaches the public channel of the same name.
    assert.deepEqual(publicHeard, []);
    await sql`select realtime.send('{"x":1}'::jsonb, 'open', ${topic}, false)`;
    await eventually(() => publicHeard.length === 1, "the public one");
  } finally {
    await sql`delete from realtime.messages where topic = ${topic}`;
    await closeClient(bridge);
    await closeClient(anon);
    await sql.end();
  }
});

test("tokens_are_checked_on_join_and_an_expiring_token_closes_the_channel", async () => {
  const user = crypto.randomUUID();
  const expired = await userJwt(user, { expiresIn: Math.floor(Date.now() / 1000) - 30 });
  const forged = await userJwt(user, { secret: "another-secret-another-secret-another" });
  const clients = [expired, forged].map((token) => client(ANON_KEY, { token }));
  const refusedExpired = async () =>
    sample(await scrape(), "sltr_realtime_joins_refused_expired_token_total") ?? 0;
  const before = await refusedExpired();
  try {
    await Promise.all(clients.map((c) => c.realtime.setAuth()));
    const [e, f] = await Promise.all(
      clients.map((c) => subscribed(c.channel(`room-${crypto.randomUUID()}`))),
    );
    assert.equal(e.status, "CHANNEL_ERROR");
    assert.match(e.error!.message, /^InvalidJWTToken: Token has expired \d+ seconds ago$/);
    assert.equal(f.error?.message, "JwtSignatureError: Failed to validate JWT signature");
    // Counted by its reason (the reconnect storm reports it: no rejoin with an expired token).
    assert.ok(await refusedExpired() - before >= 1, "the expired token's join is counted");

    const short = await userJwt(user, { expiresIn: Math.floor(Date.now() / 1000) + 2 });
    clients.push(client(ANON_KEY, { token: short }));
    await clients[2].realtime.setAuth();
    const system: { message: string }[] = [];
    const statuses: string[] = [];
    const ch = clients[2].channel(`room-${crypto.randomUUID()}`)
      .on("system", {}, (m: { message: string }) => system.push(m));
    ch.subscribe((s) => statuses.push(s));
    await eventually(() => statuses.includes("SUBSCRIBED"), "joined while valid");
    await eventually(() => statuses.includes("CLOSED"), "closed at expiry", 6000);
    assert.equal(system[0]?.message, "Token has expired 0 seconds ago");
  } finally {
    for (const c of clients) await closeClient(c);
  }
});

test("a_refreshed_token_that_loses_read_permission_closes_the_private_channel", async () => {
  const user = crypto.randomUUID();
  const a = await userClient(user);
  try {
    const system: { message: string }[] = [];
    const statuses: string[] = [];
    const ch = a.channel("online-users", { config: { private: true } })
      .on("system", {}, (m: { message: string }) => system.push(m));
    ch.subscribe((s) => statuses.push(s));
    await eventually(() => statuses.includes("SUBSCRIBED"), "joined");
    // A token whose role (anon) may not read online-users: pushed as access_token.
    await a.realtime.setAuth(await userJwt(user, { role: "anon" }));
    await eventually(() => statuses.includes("CLOSED"), "closed");
    assert.equal(
      system[0]?.message,
      "You do not have permissions to read from this Channel topic: online-users",
    );
  } finally {
    await closeClient(a);
  }
});

test("the_sixth_presence_call_within_30_s_closes_the_channel_as_hosted", async () => {
  const c = client(ANON_KEY, { timeoutMs: 1500 });
  try {
    const system: { message: string }[] = [];
    const statuses: string[] = [];
    const ch: RealtimeChannel = c.channel(`room-${crypto.randomUUID()}`)
      .on("system", {}, (m: { message: string }) => system.push(m));
    ch.subscribe((s) => statuses.push(s));
    await eventually(() => statuses.includes("SUBSCRIBED"), "joined");
    for (let i = 0; i < 5; i++) assert.equal(await ch.track({ i }), "ok", `call ${i + 1}`);
    assert.equal(await ch.track({ i: 6 }), "timed out", "no reply to the sixth");
    await eventually(() => statuses.includes("CLOSED"), "closed");
    assert.equal(system[0]?.message, "Client presence rate limit exceeded");
  } finally {
    await closeClient(c);
  }
});

test("malformed_frames_unknown_events_and_huge_frames_harm_nobody_else", async () => {
  const topic = `room-${crypto.randomUUID()}`;
  const bystander = client();
  const heard: unknown[] = [];
  const raw = await bareSocket();
  try {
    const cb = bystander.channel(topic).on("broadcast", { event: "*" }, (m) => heard.push(m));
    await subscribed(cb);
    raw.send(["1", "1", `realtime:${topic}`, "phx_join", { config: {} }]);
    await eventually(() => raw.find("1").length === 1, "joined");
    assert.equal((raw.find("1")[0][4] as { status: string }).status, "ok");

    // Garbage, a V1 object on a V2 socket, a binary kind realtime-js never sends: logged and
    // ignored, the socket stays open.
    raw.send("{not json");
    raw.send({ topic: "x", event: "y", payload: {}, ref: "2" });
    raw.ws.send(new Uint8Array([9, 1, 2, 3]));
    // An unknown event on a joined channel gets no reply (hosted: counted and dropped).
    raw.send(["1", "3", `realtime:${topic}`, "nonsense", {}]);
    raw.send([null, "4", "phoenix", "heartbeat", {}]);
    await eventually(() => raw.find("4").length === 1, "the heartbeat is still answered");
    assert.equal(raw.find("3").length, 0, "no reply to an unknown event");
    // Pushes to a topic not joined, and leaving one: Phoenix's answers.
    raw.send(["9", "5", "realtime:elsewhere", "broadcast", { event: "x", payload: {} }]);
    raw.send(["9", "6", "realtime:elsewhere", "phx_leave", {}]);
    await eventually(() => raw.find("5").length === 1 && raw.find("6").length === 1, "replies");
    assert.deepEqual(raw.find("5")[0][4], {
      status: "error",
      response: { reason: "unmatched topic" },
    });
    assert.deepEqual(raw.find("6")[0][4], { status: "ok", response: {} });
    assert.deepEqual(heard, [], "nothing leaked to the bystander");

    // A frame over 5 MB closes that socket only.
    raw.send(["1", "7", `realtime:${topic}`, "broadcast", { blob: "x".repeat(5_100_000) }]);
    const closed = await raw.closed;
    assert.equal(closed.code, 1009);
    const other = client();
    try {
      const co = other.channel(topic, { config: { broadcast: { ack: true } } });
      await subscribed(co);
      assert.equal(await co.send({ type: "broadcast", event: "fine", payload: {} }), "ok");
      await eventually(() => heard.length === 1, "the bystander still hears the room");
    } finally {
      await closeClient(other);
    }
  } finally {
    raw.ws.close();
    await closeClient(bystander);
  }
});

test("a_second_join_on_a_topic_closes_the_first_as_phoenix_does", async () => {
  const raw = await bareSocket();
  try {
    const topic = `realtime:room-${crypto.randomUUID()}`;
    raw.send(["1", "1", topic, "phx_join", {}]);
    await eventually(() => raw.find("1").length === 1, "first join");
    raw.send(["2", "2", topic, "phx_join", {}]);
    await eventually(() => raw.find("2").length === 1, "second join");
    const close = raw.frames.find((f) => f[3] === "phx_close");
    assert.deepEqual(close, ["1", "1", topic, "phx_close", {}], "the old channel is closed");
    assert.equal((raw.find("2")[0][4] as { status: string }).status, "ok");
  } finally {
    raw.ws.close();
  }
});

test("a_connection_with_a_bad_api_key_is_refused_with_hosted_status_and_text", async () => {
  const forged = await userJwt(crypto.randomUUID(), { secret: "x".repeat(40) });
  for (
    const [key, status, message] of [
      [forged, 401, "Failed to validate JWT signature"],
      ["not-a-jwt", 401, "The token provided is not a valid JWT"],
    ] as const
  ) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(API_URL).port) });
    try {
      const request = `GET /realtime/v1/websocket?apikey=${key}&vsn=2.0.0 HTTP/1.1\r\n` +
        `Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
      await conn.write(new TextEncoder().encode(request));
      const buf = new Uint8Array(4096);
      let text = "";
      while (!text.includes("}")) {
        const n = await conn.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      assert.match(text, new RegExp(`^HTTP/1.1 ${status}`));
      assert.ok(text.includes(JSON.stringify({ error: message })), text);
    } finally {
      conn.close();
    }
  }
});
