// The presence bridge's parts on their own: the tracker (which presences it believes), the
// buffer, signing and the webhook sender, retries and shutdown. The whole path, from a
// supabase-js client's track through the local Realtime endpoint to Postgres, is in
// presence.test.ts.
import assert from "node:assert/strict";
import { signBody, verifySignature } from "../../functions/_shared/auth.ts";
import type { PresenceEvent } from "../../functions/_shared/presence.ts";
import {
  issueTicket,
  presenceTopic,
  presenceTopics,
  verifyTicket,
} from "../../functions/_shared/presence_ticket.ts";
import { bridgeTopics } from "../../workers/presence-bridge/main.ts";
import { backoffMs, PresenceBridge } from "../../workers/presence-bridge/bridge.ts";
import { EventBuffer } from "../../workers/presence-bridge/buffer.ts";
import { type Outcome, retryAfterMs, WebhookSender } from "../../workers/presence-bridge/sender.ts";
import { PresenceTracker } from "../../workers/presence-bridge/tracker.ts";
import { WEBHOOK_SECRET } from "../_lib/env.ts";
import { eventually } from "../_lib/harness.ts";

const SECRET = "test-presence-secret-of-at-least-32-bytes";
const verifyProof = (proof: unknown, now: number) => verifyTicket(proof, [SECRET], now);
const T0 = Date.UTC(2026, 10, 1, 12, 0, 0) / 1000;
const proof = (user: string, ttl = 900, now = T0, topic?: string) =>
  issueTicket(user, SECRET, ttl, now, topic).ticket;
const quiet = () => {};
const A = "0b6f3c1e-0000-4000-a000-00000000000a";
const B = "0b6f3c1e-0000-4000-a000-00000000000b";
const C = "0b6f3c1e-0000-4000-a000-00000000000c";
const at = (s: number) => new Date(Date.UTC(2026, 10, 1, 12, 0, s)).toISOString();
const on = (user_id: string, s: number): PresenceEvent => ({
  user_id,
  status: "online",
  at: at(s),
});
const off = (user_id: string, s: number): PresenceEvent => ({
  user_id,
  status: "offline",
  at: at(s),
});

/** A sender that records batches and answers from a script (then 202). */
class ScriptedSender {
  batches: PresenceEvent[][] = [];
  constructor(private script: ((events: PresenceEvent[]) => Outcome | undefined)[] = []) {}
  send(events: PresenceEvent[]): Promise<Outcome> {
    this.batches.push(events);
    const next = this.script.shift()?.(events);
    return Promise.resolve(next ?? { kind: "sent", accepted: events.length, ignored: 0 });
  }
  get delivered(): PresenceEvent[] {
    return this.batches.flat();
  }
}

Deno.test("tracker_reports_online_on_join_and_offline_only_when_the_last_device_leaves", () => {
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(at(1)));
  t.join(A, [{ presence_ref: "1", user_id: A, proof: proof(A), lat: 52.52, lng: 13.4 }]);
  t.join(A, [{ presence_ref: "2", user_id: A, proof: proof(A) }]); // a second device, no place
  t.leave(A, [{ presence_ref: "2" }]); // one device left, one remains
  t.leave(A, [{ presence_ref: "1" }]); // the last one left
  assert.deepEqual(events, [
    { user_id: A, status: "online", at: at(1), lat: 52.52, lng: 13.4 },
    { user_id: A, status: "offline", at: at(1) },
  ]);
  assert.equal(t.online.size, 0);
});

Deno.test("a_resync_after_a_rejoin_drops_who_left_meanwhile_and_nobody_still_present_flaps", () => {
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(at(1)));
  t.join(A, [{ presence_ref: "a1", user_id: A, proof: proof(A), lat: 52.52, lng: 13.4 }]);
  t.join(B, [{ presence_ref: "b1", user_id: B, proof: proof(B) }]);
  t.join(C, [{ presence_ref: "c1", user_id: C, proof: proof(C) }, {
    presence_ref: "c2",
    user_id: C,
    proof: proof(C),
  }]);
  events.length = 0;
  // The channel was closed by the server; B left and C closed one of two devices meanwhile, D
  // arrived. The new channel's joins come first (realtime-js: presence_state, then sync).
  const D = "0b6f3c1e-0000-4000-a000-00000000000d";
  const state = {
    [A]: [{ presence_ref: "a1", user_id: A, proof: proof(A), lat: 52.52, lng: 13.4 }],
    [C]: [{ presence_ref: "c2", user_id: C, proof: proof(C) }],
    [D]: [{ presence_ref: "d1", user_id: D, proof: proof(D) }],
  };
  for (const [key, metas] of Object.entries(state)) t.join(key, metas);
  t.resync(state);
  assert.deepEqual(events, [
    { user_id: D, status: "online", at: at(1) },
    { user_id: B, status: "offline", at: at(1) },
  ]);
  assert.deepEqual([...t.online.keys()].sort(), [A, C, D].sort());
  // A resync alone (no joins first) brings in what it holds, and is idempotent.
  events.length = 0;
  const fresh = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(at(1)));
  fresh.resync(state);
  fresh.resync(state);
  assert.equal(events.length, 3);
  assert.equal(fresh.online.size, 3);
});

Deno.test("tracker_reports_a_move_and_keeps_the_last_place_when_a_device_has_none", () => {
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(at(1)));
  t.join(A, [{ presence_ref: "1", user_id: A, proof: proof(A), lat: 1, lng: 2 }]);
  // A re-track (the update of a meta): a join of the new one, a leave of the old.
  t.join(A, [{ presence_ref: "3", user_id: A, proof: proof(A), lat: 1.5, lng: 2 }]);
  t.leave(A, [{ presence_ref: "1" }]);
  t.join(A, [{ presence_ref: "4", user_id: A, proof: proof(A) }]);
  assert.deepEqual(events.map((e) => [e.status, e.lat]), [["online", 1], ["online", 1.5]]);
  assert.deepEqual(t.online.get(A), { lat: 1.5, lng: 2 });
});

Deno.test("tracker_believes_only_presences_with_a_valid_ticket_for_their_own_key", () => {
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(at(1)));
  t.join("not-a-uuid", [{ presence_ref: "a", user_id: "not-a-uuid", proof: proof(A) }]);
  t.join(A, [{ presence_ref: "b", user_id: B, proof: proof(B) }]); // payload names another user
  t.join(A, [{ presence_ref: "c", user_id: A, proof: proof(B) }]); // B's ticket under A's key
  t.join(A, [{ presence_ref: "d", user_id: A }]); // no ticket
  t.join(A, [{ presence_ref: "e", user_id: A, proof: proof(A) + "x" }]); // tampered
  t.join(A, [{
    presence_ref: "f",
    user_id: A,
    proof: issueTicket(A, "another-secret", 900, T0).ticket,
  }]);
  t.join(A, [{ presence_ref: "g", user_id: A, proof: proof(A, 60, T0 - 3600) }]); // expired
  assert.equal(events.length, 0, "nobody came online");
  assert.deepEqual(t.rejected, {
    bad_key: 1,
    wrong_user: 2,
    wrong_topic: 0,
    missing_proof: 1,
    invalid_proof: 2,
    expired_proof: 1,
  });
  // The real one: A online. The forged metas around it do not keep A online once A leaves.
  t.join(A, [{ presence_ref: "h", user_id: A, proof: proof(A), lat: 91, lng: 0 }]);
  assert.deepEqual(events.map((e) => [e.user_id, e.status, "lat" in e]), [[A, "online", false]]);
  t.leave(A, [{ presence_ref: "h" }]);
  assert.deepEqual(events.at(-1), { user_id: A, status: "offline", at: at(1) });
});

Deno.test("presence_topics_shard_users_evenly_and_stably_by_id", () => {
  assert.equal(presenceTopic(A, 1), "online-users");
  assert.deepEqual(presenceTopics(1), ["online-users"]);
  assert.deepEqual(presenceTopics(3), ["online-users:0", "online-users:1", "online-users:2"]);
  // The same user, whatever the case of the id, on the same topic every time.
  assert.equal(presenceTopic(A.toUpperCase(), 16), presenceTopic(A, 16));
  const counts = new Map<string, number>();
  for (let i = 0; i < 20_000; i++) {
    const id = `0b6f3c1e-0000-4000-a000-${i.toString(16).padStart(12, "0")}`;
    const topic = presenceTopic(id, 10);
    counts.set(topic, (counts.get(topic) ?? 0) + 1);
  }
  assert.deepEqual([...counts.keys()].sort(), presenceTopics(10));
  for (const n of counts.values()) assert.ok(n > 1800 && n < 2200, `${n} of 20,000 on a topic`);
  // A ticket names any of the 1,000 topics, and nothing that only looks like one.
  const topicOf = (topic: string) => {
    const check = verifyProof(proof(A, 900, T0, topic), T0);
    return check.ok ? check.topic : check.reason;
  };
  for (const topic of presenceTopics(1000)) assert.equal(topicOf(topic), topic);
  for (const topic of ["online-users:1000", "online-users:07", "online-users:", "x:online-users"]) {
    assert.equal(topicOf(topic), "invalid_proof", topic);
  }
});

Deno.test("a_bridge_joins_the_shards_it_is_given_and_refuses_what_does_not_fit", () => {
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  assert.deepEqual(bridgeTopics(env({})), ["online-users"]);
  assert.deepEqual(bridgeTopics(env({ SLTR_PRESENCE_TOPICS: "4" })), presenceTopics(4));
  assert.deepEqual(
    bridgeTopics(env({ SLTR_PRESENCE_TOPICS: "20", BRIDGE_TOPICS: "12, 0-2,2" })),
    ["online-users:0", "online-users:1", "online-users:2", "online-users:12"],
  );
  for (const spec of ["20", "3-1", "x", "-1"]) {
    assert.throws(
      () => bridgeTopics(env({ SLTR_PRESENCE_TOPICS: "20", BRIDGE_TOPICS: spec })),
      /BRIDGE_TOPICS/,
    );
  }
  assert.throws(() => bridgeTopics(env({ SLTR_PRESENCE_TOPICS: "0" })), /SLTR_PRESENCE_TOPICS/);
  // One socket holds 100 channels: 101 topics need two bridges.
  assert.throws(() => bridgeTopics(env({ SLTR_PRESENCE_TOPICS: "101" })), /100 channels/);
  assert.equal(
    bridgeTopics(env({ SLTR_PRESENCE_TOPICS: "101", BRIDGE_TOPICS: "0-99" })).length,
    100,
  );
});

Deno.test("a_presence_counts_only_on_the_topic_its_ticket_names_and_a_resync_keeps_to_its_topic", () => {
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(at(1)));
  // A's ticket is for shard 1: tracked on shard 2 (or on online-users) it is not believed.
  t.join(
    A,
    [{ presence_ref: "a", user_id: A, proof: proof(A, 900, T0, "online-users:1") }],
    "online-users:2",
  );
  t.join(A, [{ presence_ref: "b", user_id: A, proof: proof(A, 900, T0, "online-users:1") }]);
  assert.equal(t.rejected.wrong_topic, 2);
  assert.equal(events.length, 0);
  // A ticket without a topic (issued before topics) is for online-users alone.
  t.join(B, [{ presence_ref: "b1", user_id: B, proof: proof(B) }], "online-users:2");
  assert.equal(t.rejected.wrong_topic, 3);
  t.join(
    A,
    [{ presence_ref: "a1", user_id: A, proof: proof(A, 900, T0, "online-users:1") }],
    "online-users:1",
  );
  t.join(
    C,
    [{ presence_ref: "c1", user_id: C, proof: proof(C, 900, T0, "online-users:2") }],
    "online-users:2",
  );
  assert.deepEqual(events.map((e) => [e.user_id, e.status]), [[A, "online"], [C, "online"]]);
  // Shard 2's channel was closed and joined again, empty: C leaves, A (shard 1) stays.
  t.resync({}, "online-users:2");
  assert.deepEqual(events.at(-1), { user_id: C, status: "offline", at: at(1) });
  assert.deepEqual([...t.online.keys()], [A]);
});

Deno.test("leaves_held_after_a_rejoin_take_offline_only_who_is_not_back_by_the_release", () => {
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(at(1)));
  for (const u of [A, B]) t.join(u, [{ presence_ref: `${u}-1`, user_id: u, proof: proof(u) }]);
  const other = "online-users:1";
  t.join(C, [{ presence_ref: "c1", user_id: C, proof: proof(C, 900, T0, other) }], other);
  events.length = 0;
  // Realtime restarted: the bridge's channel is joined again and its first state has nobody
  // yet; realtime-js reports A and B as left.
  assert.equal(t.holdLeaves("online-users"), true);
  assert.equal(t.holdLeaves("online-users"), false, "already held");
  for (const u of [A, B]) t.leave(u, [{ presence_ref: `${u}-1` }]);
  t.resync({}, "online-users");
  assert.equal(t.heldLeaves, 2);
  assert.deepEqual(events, [], "nobody offline while held");
  // Leaves on another topic are not held.
  t.leave(C, [{ presence_ref: "c1" }], other);
  assert.deepEqual(events, [{ user_id: C, status: "offline", at: at(1) }]);
  // A is back (a new meta); B never comes back.
  t.join(A, [{ presence_ref: `${A}-2`, user_id: A, proof: proof(A) }]);
  assert.equal(t.releaseLeaves("online-users"), 1);
  assert.deepEqual(events.at(-1), { user_id: B, status: "offline", at: at(1) });
  assert.deepEqual([...t.online.keys()], [A]);
  // Released: leaves apply at once again.
  t.leave(A, [{ presence_ref: `${A}-2` }]);
  assert.deepEqual(events.at(-1), { user_id: A, status: "offline", at: at(1) });
});

Deno.test("a_presence_whose_ticket_expires_goes_offline_unless_renewed", () => {
  let now = T0;
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e), verifyProof, () => new Date(now * 1000));
  t.join(A, [{ presence_ref: "1", user_id: A, proof: proof(A, 60, now) }]);
  t.join(B, [{ presence_ref: "2", user_id: B, proof: proof(B, 60, now) }]);
  now += 40;
  // B renews: tracks again with a new ticket (a join of the new meta, a leave of the old).
  t.join(B, [{ presence_ref: "3", user_id: B, proof: proof(B, 60, now) }]);
  t.leave(B, [{ presence_ref: "2" }]);
  now += 30;
  assert.equal(t.expire(), 1);
  assert.deepEqual(events.map((e) => [e.user_id, e.status]), [
    [A, "online"],
    [B, "online"],
    [A, "offline"],
  ]);
  assert.deepEqual(t.snapshot().map((e) => e.user_id), [B]);
});

Deno.test("buffer_coalesces_superseded_joins_under_pressure_but_never_loses_a_leave", () => {
  const buffer = new EventBuffer({ maxEvents: 4 });
  buffer.push([on(A, 1), off(A, 2), on(A, 3), on(B, 4), on(B, 5), off(C, 6)]);
  // A: the newest leave and the newer join survive; B: only the newest; C's leave stays.
  assert.deepEqual(buffer.take(100, 1 << 20), [off(A, 2), on(A, 3), on(B, 5), off(C, 6)]);
  assert.equal(buffer.shedSuperseded, 2);
});

Deno.test("buffer_sheds_the_oldest_online_events_last_and_asks_for_a_resync", () => {
  let lost = 0;
  const buffer = new EventBuffer({ maxEvents: 2, onLostOnline: (n) => lost += n });
  buffer.push([on(A, 1), off(B, 2), on(C, 3), off(A, 4)]);
  // Four users' newest events, room for two: leaves are kept, even over the limit.
  const left = buffer.take(100, 1 << 20);
  assert.deepEqual(left, [off(B, 2), off(A, 4)]);
  assert.equal(lost, 1); // C's join went; A's join was superseded by A's leave
  assert.equal(buffer.shedOnline, 1);
});

Deno.test("a_request_holds_at_most_1000_events_and_256_KiB", () => {
  const buffer = new EventBuffer({ maxEvents: 10_000 });
  buffer.push(Array.from({ length: 2500 }, (_, i) => on(crypto.randomUUID(), i % 60)));
  assert.equal(buffer.take(1000, 256 * 1024).length, 1000);
  const big = { user_id: A, status: "online" as const, at: at(1), lat: 1.0000000001, lng: 2 };
  const many = new EventBuffer({ maxEvents: 10_000 });
  many.push(Array.from({ length: 5000 }, () => big));
  const batch = many.take(5000, 256 * 1024);
  const bytes = new TextEncoder().encode(JSON.stringify({ events: batch })).byteLength;
  assert.ok(bytes <= 256 * 1024, `${bytes} bytes`);
  const next = JSON.stringify({ events: [...batch, big] });
  assert.ok(new TextEncoder().encode(next).byteLength > 256 * 1024, "the batch is full");
});

Deno.test("the_signature_is_the_one_the_webhook_verifies", async () => {
  const body = JSON.stringify({ events: [on(A, 1)] });
  const now = Math.floor(Date.now() / 1000);
  const header = await signBody("s3cret", body, now);
  assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);
  await verifySignature(header, body, ["s3cret"], 300, now); // the webhook's own check
  await assert.rejects(verifySignature(header, body + " ", ["s3cret"], 300, now));
});

Deno.test("backoff_is_exponential_jittered_and_capped", () => {
  const o = { baseMs: 100, maxMs: 5000 };
  assert.deepEqual([0, 1, 2, 3].map((n) => backoffMs(n, o, () => 1)), [100, 200, 400, 800]);
  assert.equal(backoffMs(20, o, () => 1), 5000);
  assert.equal(backoffMs(3, o, () => 0.5), 400);
  assert.equal(backoffMs(3, o, () => 0), 0);
  assert.equal(retryAfterMs("3", 0), 3000);
  assert.equal(retryAfterMs(new Date(10_000).toUTCString(), 4000), 6000);
  assert.equal(retryAfterMs(null, 0), undefined);
});

Deno.test("sender_classifies_answers_and_signs_every_attempt_afresh", async () => {
  const seen: string[] = [];
  const answers = [
    () => new Response('{"accepted":1,"ignored":0}', { status: 202 }),
    () => new Response("{}", { status: 503, headers: { "retry-after": "2" } }),
    () => new Response("{}", { status: 400 }),
    () => new Response("{}", { status: 413 }),
    () => new Response("{}", { status: 401 }),
    () => {
      throw new TypeError("connection refused");
    },
  ];
  let clock = 1_800_000_000_000;
  const sender = new WebhookSender({
    url: "http://webhook.invalid/presence-webhook",
    secret: WEBHOOK_SECRET ?? "s",
    nowMs: () => clock += 1000,
    fetch: (_url, init) => {
      seen.push(new Headers(init?.headers).get("x-sltr-signature")!);
      return Promise.resolve(answers.shift()!());
    },
  });
  const kinds = [];
  for (let i = 0; i < 6; i++) kinds.push(await sender.send([on(A, 1)]));
  assert.deepEqual(kinds.map((k) => k.kind), ["sent", "retry", "split", "split", "retry", "retry"]);
  assert.equal((kinds[1] as { retryAfterMs?: number }).retryAfterMs, 2000);
  assert.equal(new Set(seen.map((h) => h.split(",")[0])).size, 6, "a new timestamp each time");
});

Deno.test("outages_are_retried_in_order_with_backoff_and_retry_after_until_delivered", async () => {
  const retry = (retryAfterMs?: number) => (): Outcome => ({
    kind: "retry",
    reason: "503",
    retryAfterMs,
  });
  const sender = new ScriptedSender([retry(1500), retry(), retry()]);
  const delays: number[] = [];
  const bridge = new PresenceBridge({
    sender,
    verifyProof,
    log: quiet,
    random: () => 1,
    backoff: { baseMs: 100, maxMs: 250 },
    sleep: (ms) => {
      delays.push(ms);
      return Promise.resolve();
    },
  });
  bridge.enqueue([on(A, 1), off(B, 2)]);
  await bridge.flush();
  bridge.enqueue([on(C, 3)]);
  await bridge.flush();
  assert.deepEqual(delays, [1500, 200, 250]); // Retry-After honoured, then 2x, then the cap
  assert.equal(sender.batches.length, 5);
  assert.deepEqual(sender.delivered.slice(-3), [on(A, 1), off(B, 2), on(C, 3)]);
  assert.deepEqual(bridge.stats().retries, 3);
  assert.equal(bridge.stats().dropped, 0);
});

Deno.test("a_refused_event_is_isolated_and_only_it_is_dropped_and_logged_without_its_place", async () => {
  const bad = {
    ...on("0b6f3c1e-0000-4000-a000-0000000000ff", 1),
    lat: 52.5123456,
    lng: 13.4123456,
  };
  const refuses = (events: PresenceEvent[]): Outcome | undefined =>
    events.includes(bad) ? { kind: "split", reason: "400" } : undefined;
  const sender = new ScriptedSender(Array.from({ length: 20 }, () => refuses));
  const lines: string[] = [];
  const log = (level: string, msg: string, fields?: object) =>
    void lines.push(JSON.stringify({ level, msg, ...fields }));
  const bridge = new PresenceBridge({ sender, verifyProof, log });
  const good = Array.from({ length: 9 }, (_, i) => on(crypto.randomUUID(), i));
  bridge.enqueue([...good.slice(0, 4), bad, ...good.slice(4)]);
  await bridge.flush();
  const delivered = sender.batches.filter((b) => !b.includes(bad)).flat();
  assert.deepEqual(delivered, good);
  assert.equal(bridge.stats().dropped, 1);
  const dropped = lines.find((l) => l.includes("dropped"));
  assert.ok(dropped?.includes(bad.user_id), "the drop is logged with who");
  assert.ok(!lines.some((l) => l.includes("52.51") || l.includes("13.41")), "never where");
});

Deno.test("flushes_at_500_events_without_waiting_for_the_interval", async () => {
  const sender = new ScriptedSender();
  const bridge = new PresenceBridge({ sender, verifyProof, log: quiet, flushIntervalMs: 60_000 });
  bridge.start();
  bridge.enqueue(Array.from({ length: 499 }, (_, i) => on(crypto.randomUUID(), i % 60)));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(sender.batches.length, 0);
  bridge.enqueue([on(A, 1)]);
  await eventually(() => sender.delivered.length === 500, "500 events sent");
  await bridge.stop();
});

Deno.test("flushes_every_250_ms_and_graceful_shutdown_delivers_what_is_pending", async () => {
  const sender = new ScriptedSender();
  const bridge = new PresenceBridge({ sender, verifyProof, log: quiet });
  bridge.start();
  bridge.enqueue([on(A, 1)]);
  const started = Date.now();
  await eventually(() => sender.delivered.length === 1, "the interval flush");
  assert.ok(Date.now() - started < 1000);
  const slow = new ScriptedSender([() => ({ kind: "retry", reason: "503" })]);
  const stopping = new PresenceBridge({
    sender: slow,
    verifyProof,
    log: quiet,
    flushIntervalMs: 60_000,
    backoff: { baseMs: 10, maxMs: 10 },
  });
  stopping.start();
  stopping.enqueue([off(B, 2)]);
  await stopping.stop(5000);
  assert.deepEqual(slow.delivered, [off(B, 2), off(B, 2)]); // retried during shutdown
  await bridge.stop();
});

Deno.test("a_long_outage_keeps_every_leave_and_resyncs_who_is_online_after", async () => {
  let down = true;
  const sender = new ScriptedSender();
  const flaky = {
    send: (events: PresenceEvent[]): Promise<Outcome> =>
      down ? Promise.resolve({ kind: "retry", reason: "down" }) : sender.send(events),
  };
  const bridge = new PresenceBridge({
    sender: flaky,
    verifyProof,
    log: quiet,
    maxBufferedEvents: 3,
    backoff: { baseMs: 1, maxMs: 1 },
    sleep: () => new Promise((r) => setTimeout(r, 1)),
  });
  const users = [A, B, C, "0b6f3c1e-0000-4000-a000-00000000000d"];
  const meta = (u: string, ref: string) => ({
    presence_ref: ref,
    user_id: u,
    proof: proof(u, 900, Date.now() / 1000),
  });
  for (const u of users) bridge.tracker.join(u, [meta(u, `${u}-1`)]);
  bridge.tracker.leave(A, [{ presence_ref: `${A}-1` }]);
  // Flapping: every other user moves, twice.
  for (const u of users.slice(1)) {
    bridge.tracker.join(u, [{ ...meta(u, `${u}-2`), lat: 1, lng: 1 }]);
    bridge.tracker.join(u, [{ ...meta(u, `${u}-3`), lat: 2, lng: 2 }]);
  }
  assert.ok(bridge.stats().shedOnline > 0, "the buffer had to drop online events");
  const pump = bridge.flush();
  await new Promise((r) => setTimeout(r, 20));
  down = false;
  await pump;
  await bridge.flush();
  const delivered = sender.delivered;
  assert.ok(delivered.some((e) => e.user_id === A && e.status === "offline"), "A's leave");
  for (const u of users.slice(1)) {
    assert.ok(
      delivered.some((e) => e.user_id === u && e.status === "online"),
      `${u} online (re-sent after recovery)`,
    );
  }
  assert.equal(bridge.stats().dropped, 0);
});

Deno.test("delivered_batches_start_at_least_the_flush_interval_apart_so_pushes_coalesce", async () => {
  const starts: number[] = [];
  const sender = {
    send: (events: PresenceEvent[]): Promise<Outcome> => {
      starts.push(performance.now());
      return Promise.resolve({ kind: "sent", accepted: events.length, ignored: 0 });
    },
  };
  const bridge = new PresenceBridge({ sender, verifyProof, log: quiet, flushIntervalMs: 250 });
  bridge.enqueue([on(A, 1)]);
  await bridge.flush();
  bridge.enqueue([off(A, 2)]); // a burst right after: waits for the interval
  await bridge.flush();
  bridge.enqueue([on(A, 3)]);
  await bridge.flush();
  assert.equal(starts.length, 3);
  assert.ok(starts[1] - starts[0] >= 245 && starts[2] - starts[1] >= 245, `${starts}`);
});
