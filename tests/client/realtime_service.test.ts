// The client module's RealtimeService over supabase-js on the real local Realtime endpoint:
// shared channels, presence with a ticket and within the hosted presence limit (the endpoint
// enforces the same limit, so going over it would close the channel), renewal, rejoins after a
// closed channel and after the endpoint restarts.
import assert from "node:assert/strict";
import {
  createSltrClient,
  RealtimeService,
  STATUS_EVENT,
  STATUS_TOPIC,
  type StatusChange,
} from "../../client/mod.ts";
import { ANON_KEY, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { sample, scrape } from "../_lib/metrics.ts";
import { userJwt } from "../_lib/jwt.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { eventually, sleep, test } from "../_lib/harness.ts";
import {
  client,
  closeClient,
  createUsers,
  database,
  deleteUsers,
  subscribed,
  ticketFor,
} from "../realtime/_helpers.ts";

type Meta = { user_id: string; proof: string; lat?: number; lng?: number; presence_ref: string };

/** What the presence bridge sees: the channel's presence, as service_role. */
async function watchPresence(url?: string) {
  const service = client(SERVICE_ROLE_KEY, url ? { url } : {});
  const channel = service.channel("online-users", { config: { private: true } })
    .on("presence", { event: "sync" }, () => {});
  assert.equal((await subscribed(channel)).status, "SUBSCRIBED");
  return {
    metas: (key: string) => (channel.presenceState()[key] ?? []) as unknown as Meta[],
    close: () => closeClient(service),
  };
}

/** A signed-in user's RealtimeService with tickets minted as the function mints them. */
function service(
  userId: string,
  o: { url?: string; ttlSeconds?: number; windowMs?: number; tickets?: string[] } = {},
) {
  const supabase = client(undefined, { url: o.url, token: () => userJwt(userId) });
  const realtime = new RealtimeService(supabase, {
    resubscribeAfterMs: () => 100,
    presenceLimit: o.windowMs ? { maxCalls: 5, windowMs: o.windowMs } : undefined,
    ticket: () => {
      const ttl = o.ttlSeconds ?? 900;
      const ticket = ticketFor(userId, { ttlSeconds: ttl });
      o.tickets?.push(ticket);
      return Promise.resolve({
        ticket,
        expires_in: ttl,
        expires_at: new Date(Date.now() + ttl * 1000).toISOString(),
      });
    },
  });
  return { supabase, realtime };
}

test("subscriptions_share_one_socket_and_one_channel_per_topic", async () => {
  const { supabase, realtime } = service(crypto.randomUUID());
  try {
    const a = realtime.onStatusChanges(() => {});
    const b = realtime.onStatusChanges(() => {});
    const c = realtime.subscribe("presence:changes", "other", () => {});
    await eventually(() => realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "subscribed");
    assert.equal(supabase.getChannels().length, 1, "three subscriptions, one channel");
    await a.unsubscribe();
    await b.unsubscribe();
    assert.equal(realtime.status(STATUS_TOPIC), "SUBSCRIBED", "one subscriber left");
    await c.unsubscribe();
    assert.equal(realtime.status(STATUS_TOPIC), undefined);
    await eventually(() => supabase.getChannels().length === 0, "the channel was left");
  } finally {
    await realtime.close();
  }
});

test("status_broadcasts_reach_every_subscriber_of_their_event", async () => {
  const sql = database();
  const { realtime } = service(crypto.randomUUID());
  try {
    const got: StatusChange[][] = [];
    const other: unknown[] = [];
    realtime.onStatusChanges((changes) => got.push(changes));
    realtime.onStatusChanges((changes) => got.push(changes));
    realtime.subscribe(STATUS_TOPIC, "something_else", (p) => other.push(p));
    await eventually(() => realtime.status(STATUS_TOPIC) === "SUBSCRIBED", "subscribed");
    const change = { user_id: crypto.randomUUID(), is_online: true, last_seen_at: null };
    await sql`select realtime.send(${sql.json({ changes: [change] })}, ${STATUS_EVENT},
                                   ${STATUS_TOPIC}, true)`;
    await eventually(() => got.length === 2, "both subscribers");
    assert.deepEqual(got[0], [change]);
    assert.deepEqual(other, []);
  } finally {
    await sql`delete from realtime.messages where topic = ${STATUS_TOPIC} and event = ${STATUS_EVENT}
              and payload -> 'changes' -> 0 ->> 'last_seen_at' is null`;
    await realtime.close();
    await sql.end();
  }
});

test("track_presence_sends_only_the_user_a_ticket_and_the_location", async () => {
  const user = crypto.randomUUID();
  const watcher = await watchPresence();
  const tickets: string[] = [];
  const { realtime } = service(user, { tickets });
  try {
    const me = await realtime.trackPresence(user, { lat: 52.5, lng: 13.4 });
    await eventually(() => watcher.metas(user).length === 1, "tracked under the user's key");
    const { presence_ref: _, ...payload } = watcher.metas(user)[0];
    assert.deepEqual(payload, { user_id: user, proof: tickets[0], lat: 52.5, lng: 13.4 });
    await me.update(null);
    await eventually(() => watcher.metas(user)[0]?.lat === undefined, "no location");
    await me.unsubscribe();
    await eventually(() => watcher.metas(user).length === 0, "gone");
  } finally {
    await realtime.close();
    await watcher.close();
  }
});

test("presence_calls_stay_under_the_limit_and_the_newest_location_wins", async () => {
  // The endpoint enforces the hosted 5 calls per window; a short window keeps the test short.
  const server = await startFunctionsServer({ REALTIME_CLIENT_PRESENCE_WINDOW_MS: "3000" });
  const url = server.url.replace(/\/functions\/v1$/, "");
  const user = crypto.randomUUID();
  const watcher = await watchPresence(url);
  const { realtime } = service(user, { url, windowMs: 3000 });
  const statuses: string[] = [];
  realtime.subscribe("online-users", "*", () => {}, { onStatus: (s) => statuses.push(s) });
  try {
    const me = await realtime.trackPresence(user, { lat: 1, lng: 1 });
    const seen = new Set<number>();
    const done = [];
    for (let i = 2; i <= 20; i++) done.push(me.update({ lat: i, lng: 1 })); // a burst of moves
    const started = Date.now();
    while (Date.now() - started < 2500) {
      const lat = watcher.metas(user)[0]?.lat;
      if (lat !== undefined) seen.add(lat);
      await sleep(10);
    }
    assert.ok(seen.size <= 5, `at most 5 calls in the window, saw ${[...seen]}`);
    await Promise.all(done);
    await eventually(() => watcher.metas(user)[0]?.lat === 20, "the newest location arrives");
    assert.ok(!statuses.includes("CLOSED"), "the server never had to close the channel");
  } finally {
    await realtime.close();
    await watcher.close();
    server.child.kill();
    await server.child.status;
  }
});

test("a_ticket_is_renewed_before_it_expires", async () => {
  const user = crypto.randomUUID();
  const watcher = await watchPresence();
  const tickets: string[] = [];
  const { realtime } = service(user, { ttlSeconds: 3, tickets });
  try {
    await realtime.trackPresence(user, { lat: 52.5, lng: 13.4 });
    await eventually(() => tickets.length >= 3, "renewed at two thirds of 3 s, twice", 6000);
    await eventually(() => watcher.metas(user)[0]?.proof === tickets.at(-1), "re-tracked");
    assert.equal(watcher.metas(user).length, 1, "still one presence");
  } finally {
    await realtime.close();
    await watcher.close();
  }
});

test("a_channel_the_server_closes_is_joined_again_and_presence_tracked_again", async () => {
  const user = crypto.randomUUID();
  const watcher = await watchPresence();
  // Until the server has closed the channel once, every token expires within 2 s (supabase-js
  // asks for one at construction and again before each join, in an order of its own): the
  // server closes the channel at expiry (hosted's expiry watchdog). The join after that gets a
  // token valid for an hour.
  const statuses: string[] = [];
  const supabase = client(undefined, {
    token: async () =>
      await userJwt(user, {
        expiresIn: statuses.includes("CLOSED") ? "1h" : Math.floor(Date.now() / 1000) + 2,
      }),
  });
  const realtime = new RealtimeService(supabase, {
    resubscribeAfterMs: () => 100,
    ticket: () => Promise.resolve({ ticket: ticketFor(user), expires_in: 900, expires_at: "" }),
  });
  try {
    realtime.subscribe("online-users", "*", () => {}, { onStatus: (s) => statuses.push(s) });
    await realtime.trackPresence(user);
    await eventually(() => statuses.includes("CLOSED"), "closed at token expiry", 5000);
    await eventually(() => statuses.at(-1) === "SUBSCRIBED", "joined again");
    await eventually(() => watcher.metas(user).length === 1, "tracked again");
  } finally {
    await realtime.close();
    await watcher.close();
  }
});

test("a_refused_join_is_reported_as_channel_error_with_the_reason", async () => {
  const { realtime } = service(crypto.randomUUID());
  try {
    const errors: string[] = [];
    realtime.subscribe("not-for-you", "*", () => {}, {
      onStatus: (s, e) => s === "CHANNEL_ERROR" && errors.push(e?.message ?? ""),
    });
    await eventually(() => errors.length > 0, "refused", 8000);
    assert.match(errors[0], /You do not have permissions to read from this Channel topic/);
  } finally {
    await realtime.close();
  }
});

test("after_the_endpoint_restarts_channels_rejoin_and_presence_is_tracked_again", async () => {
  let server = await startFunctionsServer({});
  const port = Number(new URL(server.url).port);
  const url = `http://127.0.0.1:${port}`;
  const user = crypto.randomUUID();
  const { realtime } = service(user, { url });
  try {
    await realtime.trackPresence(user, { lat: 52.5, lng: 13.4 });
    server.child.kill();
    await server.child.status;
    server = await startFunctionsServer({}, "presence-webhook", port);
    const watcher = await watchPresence(url);
    try {
      await eventually(() => watcher.metas(user).length === 1, "tracked on the new server", 8000);
      assert.equal(watcher.metas(user)[0].lat, 52.5);
    } finally {
      await watcher.close();
    }
  } finally {
    await realtime.close();
    server.child.kill();
    await server.child.status;
  }
});

test("a_first_ticket_that_fails_is_asked_again_before_tracking_gives_up", async () => {
  // The ticket names the topic, so trackPresence asks for it before joining: a function that
  // answers 503 twice must not fail the track (renewals were always retried; the first too).
  const user = crypto.randomUUID();
  let asked = 0;
  const supabase = client(undefined, { token: () => userJwt(user) });
  const realtime = new RealtimeService(supabase, {
    ticket: () => {
      if (++asked <= 2) return Promise.reject(new Error("503 from presence-ticket"));
      return Promise.resolve({ ticket: ticketFor(user), expires_in: 900, expires_at: "" });
    },
  });
  const watcher = await watchPresence();
  try {
    const me = await realtime.trackPresence(user);
    assert.equal(asked, 3);
    assert.equal(me.topic, "online-users");
    await eventually(() => watcher.metas(user).length === 1, "tracked after two failures");
  } finally {
    await watcher.close();
    await realtime.close();
  }
});

test("a_token_that_expired_while_the_socket_was_down_is_never_the_one_a_rejoin_carries", async () => {
  // Tokens of 16 s, renewed by the token source when under 12 s are left (as a session
  // refreshes its access token), and the endpoint down for 10 s: the token realtime-js held when
  // the socket dropped has expired by the time it is back, and no heartbeat refreshed it.
  let server = await startFunctionsServer({});
  const port = Number(new URL(server.url).port);
  const url = `http://127.0.0.1:${port}`;
  const user = crypto.randomUUID();
  // The promise is kept: supabase-js asks for the first token itself, concurrently with
  // realtime-js, and a source that answered "" meanwhile would make the first join anonymous.
  let token: Promise<string> | undefined;
  let exp = 0;
  const accessToken = () => {
    const now = Date.now() / 1000;
    if (!token || exp - now < 12) {
      exp = Math.floor(now) + 16;
      token = userJwt(user, { expiresIn: exp });
    }
    return token;
  };
  const sltr = createSltrClient(url, ANON_KEY, {
    accessToken,
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    // Reconnect waits shorter than the token's renewal margin, as a session's are (1 h
    // tokens, waits of at most 60 s).
    reconnect: { spreadMs: 2000, capMs: 3000 },
    realtimeService: {
      ticket: () => Promise.resolve({ ticket: ticketFor(user), expires_in: 900, expires_at: "" }),
      favorites: () => Promise.resolve([]),
    },
  });
  try {
    const me = await sltr.realtime.trackPresence(user);
    const inbox = sltr.realtime.watchStatus(() => {});
    await eventually(
      () => Promise.resolve(sltr.realtime.status(inbox.topic) === "SUBSCRIBED"),
      "inbox",
    );
    server.child.kill();
    await server.child.status;
    await sleep(Math.max(0, (exp + 0.5) * 1000 - Date.now())); // the held token has expired
    server = await startFunctionsServer({}, "presence-webhook", port);
    const refused = async () =>
      sample(await scrape(server.url), "sltr_realtime_joins_refused_expired_token_total") ?? 0;
    await eventually(
      () =>
        Promise.resolve(
          sltr.realtime.status(me.topic) === "SUBSCRIBED" &&
            sltr.realtime.status(inbox.topic) === "SUBSCRIBED",
        ),
      "both channels joined on the new endpoint",
      15_000,
    );
    const joins = sample(await scrape(server.url), "sltr_realtime_joins_total") ?? 0;
    assert.ok(joins >= 2, `${joins} joins`);
    assert.equal(await refused(), 0, "no join carried an expired token");
  } finally {
    await sltr.realtime.close();
    server.child.kill();
    await server.child.status;
  }
});

test("a_screens_watch_list_is_renewed_while_open_and_cleared_when_it_closes", async () => {
  const sql = database();
  const [ann, bob, cat] = await createUsers(sql, "watch-renew", 3);
  const supabase = client(undefined, { token: () => userJwt(ann) });
  const realtime = new RealtimeService(supabase, { watchRenewMs: 300 });
  const expiry = async () =>
    (await sql`select max(expires_at) as at from private.presence_watches where watcher_id = ${ann}`)[
      0
    ]
      .at as Date | null;
  try {
    const grid = realtime.watch([bob]);
    const chat = realtime.watch([cat, bob]);
    assert.equal(await chat.ready, 2, "both screens, each user once");
    const first = (await expiry())!;
    await eventually(async () => ((await expiry())?.getTime() ?? 0) > first.getTime(), "renewed");
    await grid.stop();
    await chat.stop();
    assert.equal(await expiry(), null, "no screen open: nothing watched");
  } finally {
    await realtime.close();
    await deleteUsers(sql, [ann, bob, cat]);
    await sql.end();
  }
});
