// Status pushed to the people who care, end to end: supabase-js clients through the client
// module on the local Realtime endpoint, the stack's bridge and webhook, Postgres. A watches B;
// B comes online and A's callback fires within a second; C, not watching, gets nothing.
import assert from "node:assert/strict";
import { createSltrClient, type SltrClient, type StatusChange } from "../../client/mod.ts";
import { ANON_KEY, API_URL } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { startBridge, startFunctionsServer } from "../_lib/servers.ts";
import { eventually, sleep, test } from "../_lib/harness.ts";
import {
  client,
  createUsers,
  database,
  deleteUsers,
  onlineMap,
  subscribed,
  userClient,
} from "./_helpers.ts";

const HERE = { lat: 52.5205, lng: 13.4049 };

/** A user's app: the client module (RPCs through the gateway's PostgREST stand-in). */
async function app(userId: string, url = API_URL): Promise<SltrClient> {
  const token = await userJwt(userId);
  return createSltrClient(url, ANON_KEY, {
    accessToken: () => Promise.resolve(token),
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    reconnect: { spreadMs: 200 },
  });
}

/** Collects the changes a user's inbox delivers. */
function inbox(a: SltrClient) {
  const got: { at: number; change: StatusChange }[] = [];
  const statuses: string[] = [];
  const sub = a.realtime.watchStatus(
    (changes) => {
      for (const change of changes) got.push({ at: performance.now(), change });
    },
    { onStatus: (s) => statuses.push(s) },
  );
  return {
    got,
    sub,
    joined: () => eventually(() => statuses.includes("SUBSCRIBED"), "inbox joined"),
    about: (id: string) => got.filter((g) => g.change.user_id === id),
  };
}

test("a_watcher_hears_a_status_change_within_a_second_and_a_bystander_nothing", async () => {
  const sql = database();
  const [ann, bob, cat] = await createUsers(sql, "push-e2e", 3, HERE);
  const [a, b, c] = await Promise.all([ann, bob, cat].map((id) => app(id)));
  try {
    // ann and cat are online and listening; ann watches bob from her nearby screen.
    await a.realtime.trackPresence(ann, HERE);
    await c.realtime.trackPresence(cat, HERE);
    const annInbox = inbox(a);
    const catInbox = inbox(c);
    await annInbox.joined();
    await catInbox.joined();
    assert.equal(await a.realtime.watch([bob]).ready, 1);
    // Pushes go to online watchers: ann's and cat's presence reach the database first.
    await eventually(async () => {
      const online = await onlineMap(sql, [ann, cat]);
      return online[ann] && online[cat];
    }, "ann and cat online");
    const before = annInbox.got.length;

    const started = performance.now();
    await b.realtime.trackPresence(bob, HERE);
    await eventually(() => annInbox.about(bob).some((g) => g.change.is_online), "ann hears", 1000);
    const heard = annInbox.got.slice(before).find((g) => g.change.is_online)!;
    console.log(`bob tracks -> ann's callback: ${(heard.at - started).toFixed(0)} ms`);
    assert.deepEqual(Object.keys(heard.change).sort(), ["is_online", "last_seen_at", "user_id"]);

    const left = performance.now();
    const closing = b.realtime.close();
    await eventually(
      () => annInbox.about(bob).some((g) => !g.change.is_online && g.at > left),
      "ann hears bob leave",
      1000,
    );
    await closing;
    await sleep(300);
    assert.deepEqual(catInbox.about(bob), [], "cat watches nobody and hears nothing");
  } finally {
    for (const x of [a, b, c]) await x.realtime.close().catch(() => {});
    await deleteUsers(sql, [ann, bob, cat]);
    await sql.end();
  }
});

test("two_bridges_on_one_topic_push_each_change_once_and_one_killed_loses_nothing", async () => {
  // A second bridge beside the stack's, both active on online-users (a standby that is not
  // idle): every presence change reaches the webhook twice, stamped by two clocks. A watcher
  // hears each change once, a user present throughout never reads as offline, and when one
  // bridge is killed the other carries on with nothing lost.
  const sql = database();
  const [ann, bob, eve] = await createUsers(sql, "push-two-bridges", 3, HERE);
  const second = await startBridge(API_URL);
  const [a, b, e] = await Promise.all([ann, bob, eve].map((id) => app(id)));
  let annWentOffline = false;
  let sampling = true;
  try {
    await a.realtime.trackPresence(ann, HERE);
    const annInbox = inbox(a);
    await annInbox.joined();
    assert.equal(await a.realtime.watch([bob, eve]).ready, 2);
    await eventually(async () => (await onlineMap(sql, [ann]))[ann], "ann online");
    const sampler = (async () => {
      while (sampling) {
        if (!(await onlineMap(sql, [ann]))[ann]) annWentOffline = true;
        await sleep(100);
      }
    })();
    const changes = (id: string) => annInbox.about(id).map((g) => g.change.is_online);

    await b.realtime.trackPresence(bob, HERE);
    await eventually(() => changes(bob).includes(true), "ann hears bob arrive", 1000);
    await b.realtime.close();
    await eventually(() => changes(bob).includes(false), "ann hears bob leave", 1000);
    await sleep(1500); // both bridges' copies delivered and flushed
    assert.deepEqual(changes(bob), [true, false], "each change pushed once, not per bridge");

    await second.kill();
    await e.realtime.trackPresence(eve, HERE);
    await eventually(() => changes(eve).includes(true), "eve arrives through the other", 1000);
    await e.realtime.close();
    await eventually(() => changes(eve).includes(false), "and leaves", 1000);
    sampling = false;
    await sampler;
    assert.equal(annWentOffline, false, "ann, present throughout, never read as offline");
  } finally {
    sampling = false;
    await second.kill().catch(() => {});
    for (const x of [a, b, e]) await x.realtime.close().catch(() => {});
    await deleteUsers(sql, [ann, bob, eve]);
    await sql.end();
  }
});

test("favorites_are_watched_without_asking", async () => {
  const sql = database();
  const [ann, dan] = await createUsers(sql, "push-favorite", 2, HERE);
  const a = await app(ann);
  const d = await app(dan);
  try {
    await sql`insert into public.favorites (user_id, favorite_id) values (${ann}, ${dan})`;
    await a.realtime.trackPresence(ann, HERE);
    const annInbox = inbox(a);
    await annInbox.joined();
    // Pushes go to online watchers: ann's presence reaches the database through the bridge.
    await eventually(async () => (await onlineMap(sql, [ann]))[ann], "ann online");
    const receipt = await d.api.reportPresence("online", HERE); // a self-report, no Realtime
    assert.equal(receipt.accepted, 1);
    await eventually(() => annInbox.about(dan).some((g) => g.change.is_online), "ann hears");
  } finally {
    await a.realtime.close();
    await d.realtime.close();
    await deleteUsers(sql, [ann, dan]);
    await sql.end();
  }
});

test("an_inbox_is_its_owners_alone_and_nobody_may_write_to_it", async () => {
  const [ann, mal] = [crypto.randomUUID(), crypto.randomUUID()];
  const m = await userClient(mal);
  const a = await userClient(ann, { timeoutMs: 1500 });
  try {
    const spy = await subscribed(
      m.channel(`presence:user:${ann}`, { config: { private: true } }),
    );
    assert.equal(spy.status, "CHANNEL_ERROR");
    assert.match(spy.error!.message, /^Unauthorized: You do not have permissions to read/);
    const own = a.channel(`presence:user:${ann}`, {
      config: { private: true, broadcast: { ack: true } },
    });
    assert.equal((await subscribed(own)).status, "SUBSCRIBED");
    assert.equal(
      await own.send({ type: "broadcast", event: "status_changes", payload: { changes: [] } }),
      "timed out",
      "a client's broadcast into an inbox is dropped (no insert policy)",
    );
  } finally {
    for (const x of [a, m]) {
      await x.removeAllChannels();
      await x.realtime.disconnect();
    }
  }
});

test("after_the_endpoint_restarts_the_inbox_rejoins_and_nothing_is_missed", async () => {
  const sql = database();
  const [ann, bob] = await createUsers(sql, "push-restart", 2, HERE);
  // ann's Realtime endpoint is a private one (same database) that we restart; bob reports
  // himself online through the stack while ann's endpoint is down.
  let server = await startFunctionsServer({});
  const port = Number(new URL(server.url).port);
  const a = await app(ann, `http://127.0.0.1:${port}`);
  try {
    const annInbox = inbox(a);
    await annInbox.joined();
    await a.realtime.watch([bob]).ready;
    server.child.kill();
    await server.child.status;
    const b = client(ANON_KEY, { token: await userJwt(bob) });
    await new (await import("../../client/mod.ts")).SltrApi(b).reportPresence("online", HERE);
    server = await startFunctionsServer({}, "presence-webhook", port);
    await eventually(
      () => annInbox.about(bob).some((g) => g.change.is_online),
      "the re-read after the rejoin delivers bob online",
      8000,
    );
  } finally {
    await a.realtime.close();
    server.child.kill();
    await server.child.status;
    await deleteUsers(sql, [ann, bob]);
    await sql.end();
  }
});
