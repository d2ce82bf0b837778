// The presence bridge. Its parts on their own (tracker, buffer, signing, retries), then the
// whole process path for real: presence in a Realtime channel (the fake server, the only fake)
// → supabase-js → the bridge → the running presence-webhook → Postgres.
import assert from "node:assert/strict";
import { verifySignature } from "../../functions/_shared/auth.ts";
import {
  backoffMs,
  EventBuffer,
  type Outcome,
  PresenceBridge,
  type PresenceEvent,
  PresenceTracker,
  RealtimePresenceSource,
  retryAfterMs,
  signature,
  WebhookSender,
} from "../../workers/presence-bridge/bridge.ts";
import { eventually, FakeRealtime } from "./fake_realtime.ts";
import {
  clientWith,
  closeClient,
  createUsers,
  database,
  deleteUsers,
  FUNCTIONS_URL,
  SERVICE_ROLE_KEY,
  WEBHOOK_SECRET,
} from "./_helpers.ts";

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
  const t = new PresenceTracker((e) => events.push(e), () => new Date(at(1)));
  t.join(A, [{ presence_ref: "1", user_id: A, lat: 52.52, lng: 13.4 }]);
  t.join(A, [{ presence_ref: "2", user_id: A }]); // a second device, no location
  t.leave(A, [{ presence_ref: "2", user_id: A }]); // one device left, one remains
  t.leave(A, []); // the last one left
  assert.deepEqual(events, [
    { user_id: A, status: "online", at: at(1), lat: 52.52, lng: 13.4 },
    { user_id: A, status: "online", at: at(1), lat: 52.52, lng: 13.4 }, // keeps the last place
    { user_id: A, status: "offline", at: at(1) },
  ]);
  assert.equal(t.online.size, 0);
});

Deno.test("tracker_ignores_keys_that_are_not_user_ids_and_payloads_naming_someone_else", () => {
  const events: PresenceEvent[] = [];
  const t = new PresenceTracker((e) => events.push(e));
  t.join("not-a-uuid", [{}]);
  t.join(A, [{ user_id: B }]);
  t.join(B, [{ lat: 91, lng: 0 }]); // an impossible location is dropped, the join is not
  assert.equal(t.ignored, 2);
  assert.deepEqual(events.map((e) => [e.user_id, e.status, "lat" in e]), [[B, "online", false]]);
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
  const header = await signature("s3cret", body, now);
  assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);
  await verifySignature(header, body, "s3cret", 300, now); // the webhook's own check
  await assert.rejects(verifySignature(header, body + " ", "s3cret", 300, now));
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

Deno.test("a_refused_event_is_isolated_and_only_it_is_dropped", async () => {
  const bad = on("0b6f3c1e-0000-4000-a000-0000000000ff", 1);
  const refuses = (events: PresenceEvent[]): Outcome | undefined =>
    events.includes(bad) ? { kind: "split", reason: "400" } : undefined;
  const sender = new ScriptedSender(Array.from({ length: 20 }, () => refuses));
  const bridge = new PresenceBridge({ sender, log: quiet });
  const good = Array.from({ length: 9 }, (_, i) => on(crypto.randomUUID(), i));
  bridge.enqueue([...good.slice(0, 4), bad, ...good.slice(4)]);
  await bridge.flush();
  const delivered = sender.batches.filter((b) => !b.includes(bad)).flat();
  assert.deepEqual(delivered, good);
  assert.equal(bridge.stats().dropped, 1);
});

Deno.test("flushes_at_500_events_without_waiting_for_the_interval", async () => {
  const sender = new ScriptedSender();
  const bridge = new PresenceBridge({ sender, log: quiet, flushIntervalMs: 60_000 });
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
  const bridge = new PresenceBridge({ sender, log: quiet });
  bridge.start();
  bridge.enqueue([on(A, 1)]);
  const started = Date.now();
  await eventually(() => sender.delivered.length === 1, "the interval flush");
  assert.ok(Date.now() - started < 1000);
  const slow = new ScriptedSender([() => ({ kind: "retry", reason: "503" })]);
  const stopping = new PresenceBridge({
    sender: slow,
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
    log: quiet,
    maxBufferedEvents: 3,
    backoff: { baseMs: 1, maxMs: 1 },
    sleep: () => new Promise((r) => setTimeout(r, 1)),
  });
  const users = [A, B, C, "0b6f3c1e-0000-4000-a000-00000000000d"];
  for (const u of users) bridge.tracker.join(u, [{ user_id: u }]);
  bridge.tracker.leave(A, []);
  for (const u of users.slice(1)) bridge.tracker.join(u, [{ user_id: u }]); // flapping joins
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

// ---- the whole path, for real behind the socket ---------------------------------------------

function integration(name: string, fn: () => Promise<void>): void {
  // realtime-js leaves a 10 s timer behind on disconnect (its disconnect timeout) and Deno's
  // op sanitizer would fail on it; everything opened here is closed in finally.
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}

integration("presence_in_the_channel_reaches_the_database_through_the_real_webhook", async () => {
  const sql = database();
  const fake = new FakeRealtime();
  const client = clientWith(fake, SERVICE_ROLE_KEY);
  const bridge = new PresenceBridge({
    sender: new WebhookSender({ url: `${FUNCTIONS_URL}/presence-webhook`, secret: WEBHOOK_SECRET }),
    log: quiet,
  });
  const source = new RealtimePresenceSource(client, "online-users", bridge.tracker, quiet);
  const ids = await createUsers(sql, "bridge", 3);
  try {
    const [alice, bob, carol] = ids;
    bridge.start();
    await source.start();
    // The bridge joined as service_role, privately, asking for presence.
    const [join] = fake.frames("phx_join", "online-users");
    const config = join[4].config as { private: boolean; presence: { enabled: boolean } };
    assert.equal(config.private, true);
    assert.equal(config.presence.enabled, true);
    assert.equal(join[4].access_token, SERVICE_ROLE_KEY);
    assert.match(fake.urls[0], /\/realtime\/v1\/websocket\?apikey=.+&vsn=2\.0\.0$/);

    fake.presenceJoin("online-users", alice, { user_id: alice, lat: 52.52, lng: 13.405 });
    fake.presenceJoin("online-users", bob, { user_id: bob });
    const carolPhone = fake.presenceJoin("online-users", carol, { user_id: carol });
    fake.presenceJoin("online-users", carol, { user_id: carol, lat: 48.1, lng: 11.5 });
    fake.presenceLeave("online-users", carol, carolPhone); // one device left: still online
    fake.presenceLeave("online-users", bob); // gone

    const status = async () =>
      Object.fromEntries(
        (await sql<{ user_id: string; is_online: boolean }[]>`
          select user_id, is_online from public.get_online_users_batch(${ids}::uuid[])`)
          .map((r) => [r.user_id, r.is_online]),
      );
    await eventually(async () => {
      const s = await status();
      return s[alice] === true && s[bob] === false && s[carol] === true;
    }, "alice and carol online, bob offline, in real time");

    const [where] = await sql<{ lat: number; lng: number }[]>`
      select coalesce(b.latitude, p.latitude) as lat, coalesce(b.longitude, p.longitude) as lng
      from public.profiles as p left join public.presence_buffer as b on b.user_id = p.id
      where p.id = ${alice}`;
    assert.deepEqual(where, { lat: 52.52, lng: 13.405 }, "the location arrived (privately)");

    // pg_cron's flush (or ours) applies them to profiles, and broadcasts the batch.
    await sql`select public.flush_presence()`;
    const profiles = await sql<{ id: string; is_online: boolean }[]>`
      select id, is_online from public.profiles where id = any (${ids}::uuid[]) order by id`;
    assert.deepEqual(
      Object.fromEntries(profiles.map((p) => [p.id, p.is_online])),
      { [alice]: true, [bob]: false, [carol]: true },
    );
    const [broadcast] = await sql<{ n: number }[]>`
      select count(*)::int as n from realtime.messages as m
      where m.topic = 'presence:changes'
        and exists (select from jsonb_array_elements(m.payload -> 'changes') as c
                    where (c ->> 'user_id')::uuid = ${alice})`;
    assert.ok(broadcast.n >= 1, "the flush broadcast alice's change");
    assert.equal(bridge.stats().dropped, 0);
  } finally {
    await source.stop();
    await bridge.stop();
    await closeClient(client);
    await deleteUsers(sql, ids);
    await sql.end();
  }
});

integration(
  "after_a_lost_connection_the_bridge_rejoins_and_reports_who_left_meanwhile",
  async () => {
    const sql = database();
    const fake = new FakeRealtime();
    const client = clientWith(fake, SERVICE_ROLE_KEY);
    let failures = 2; // the webhook is unreachable twice, too
    const bridge = new PresenceBridge({
      sender: new WebhookSender({
        url: `${FUNCTIONS_URL}/presence-webhook`,
        secret: WEBHOOK_SECRET,
        fetch: (input, init) =>
          failures-- > 0 ? Promise.reject(new TypeError("network down")) : fetch(input, init),
      }),
      log: quiet,
      backoff: { baseMs: 10, maxMs: 50 },
    });
    const source = new RealtimePresenceSource(client, "online-users", bridge.tracker, quiet);
    const ids = await createUsers(sql, "bridge-reconnect", 2);
    try {
      const [dave, erin] = ids;
      bridge.start();
      await source.start();
      fake.presenceJoin("online-users", dave, { user_id: dave });
      fake.presenceJoin("online-users", erin, { user_id: erin });
      await eventually(() => bridge.tracker.online.size === 2, "both seen");

      fake.refusing = true;
      fake.dropAll();
      fake.presenceLeave("online-users", erin); // while the bridge is away
      await new Promise((r) => setTimeout(r, 100));
      fake.refusing = false;

      await eventually(() => fake.frames("phx_join", "online-users").length >= 2, "rejoined");
      await eventually(async () => {
        const rows = await sql<{ user_id: string; is_online: boolean }[]>`
        select user_id, is_online from public.get_online_users_batch(${ids}::uuid[])`;
        const s = Object.fromEntries(rows.map((r) => [r.user_id, r.is_online]));
        return s[dave] === true && s[erin] === false;
      }, "dave still online, erin offline after the resync");
      assert.ok(bridge.stats().retries >= 2, "the network errors were retried");
      assert.equal(bridge.stats().dropped, 0);
    } finally {
      await source.stop();
      await bridge.stop();
      await closeClient(client);
      await deleteUsers(sql, ids);
      await sql.end();
    }
  },
);
