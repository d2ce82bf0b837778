// The presence webhook over HTTP against the running stack (functions server, Postgres, Redis):
// every error code, signatures, self-reports, ordering and concurrency, and what happens when
// Postgres or Redis is gone or the functions server crashes right after a 202 (on private
// server processes started here, so the shared one is never disturbed).
import assert from "node:assert/strict";
import postgres from "postgres";
import { Redis } from "ioredis";
import { forget, userKey, writeEvents } from "../../functions/_shared/live_index.ts";
import {
  ANON_KEY,
  DB_URL,
  FUNCTIONS_URL,
  REDIS_URL,
  ROOT,
  SERVICE_ROLE_KEY,
  WEBHOOK_SECRET as SECRET,
} from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { freePort } from "../_lib/ports.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { signBody } from "../../functions/_shared/auth.ts";
import { test } from "../_lib/test.ts";

const WEBHOOK = `${FUNCTIONS_URL}/presence-webhook`;
const EMAIL_DOMAIN = "presence-webhook.test";

const db = postgres(DB_URL, { max: 6, onnotice: () => {} });
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
const created: string[] = [];

// Shared pools live across tests; the last test closes them.

// ---- helpers -------------------------------------------------------------------------------

async function sign(body: string, opts: { secret?: string; t?: number } = {}): Promise<string> {
  return await signBody(opts.secret ?? SECRET, body, opts.t);
}

interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

async function post(
  body: unknown,
  headers: Record<string, string> = {},
  url = WEBHOOK,
): Promise<Answer> {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  const res = await fetch(url, {
    method: "POST",
    body: text,
    headers: { "content-type": "application/json", ...headers },
  });
  const raw = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    parsed = raw;
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

async function postSigned(body: unknown, url = WEBHOOK): Promise<Answer> {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return await post(text, { "x-sltr-signature": await sign(text) }, url);
}

async function postAs(userId: string, body: unknown): Promise<Answer> {
  return await post(body, { authorization: `Bearer ${await userJwt(userId)}` });
}

function expectError(res: Answer, status: number, code: string): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body?.error?.code, code, JSON.stringify(res.body));
  assert.equal(typeof res.body.error.message, "string");
}

interface Event {
  user_id?: string;
  status: "online" | "offline";
  at: string;
  lat?: number;
  lng?: number;
}

const ev = (
  userId: string | undefined,
  status: "online" | "offline",
  atMs: number,
  extra: Partial<Event> = {},
): Event => ({
  ...(userId ? { user_id: userId } : {}),
  status,
  at: new Date(atMs).toISOString(),
  ...extra,
});

async function createUsers(
  n: number,
  profile: { isOnline?: boolean; lastSeenAt?: Date | null } = {},
): Promise<string[]> {
  const ids = Array.from({ length: n }, () => crypto.randomUUID());
  created.push(...ids);
  await db`
    insert into auth.users (id, aud, role, email)
    select id, 'authenticated', 'authenticated', id || ${"@" + EMAIL_DOMAIN}
    from unnest(${ids}::uuid[]) as id`;
  await db`
    insert into public.profiles (id, display_name, is_online, last_seen_at)
    select id, 'presence test', ${profile.isOnline ?? false}, ${profile.lastSeenAt ?? null}
    from unnest(${ids}::uuid[]) as id`;
  return ids;
}

interface Held {
  is_online: boolean;
  last_seen_at: number | null;
  latitude: number | null;
  longitude: number | null;
}

/** The state Postgres holds, by the real-time rule (a newer buffered event wins). */
async function held(ids: string[]): Promise<Map<string, Held>> {
  const rows = await db<
    {
      id: string;
      is_online: boolean;
      last_seen_at: Date | null;
      latitude: number | null;
      longitude: number | null;
    }[]
  >`
    select p.id::text as id,
           case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
             then b.is_online else p.is_online end as is_online,
           case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
             then b.event_at else p.last_seen_at end as last_seen_at,
           case when b.latitude is not null and b.event_at > coalesce(p.last_seen_at, '-infinity')
             then b.latitude else p.latitude end as latitude,
           case when b.latitude is not null and b.event_at > coalesce(p.last_seen_at, '-infinity')
             then b.longitude else p.longitude end as longitude
    from public.profiles as p
    left join public.presence_buffer as b on b.user_id = p.id
    where p.id = any(${ids}::uuid[])`;
  return new Map(
    rows.map(({ id, last_seen_at, ...rest }) => [id, {
      ...rest,
      last_seen_at: last_seen_at?.getTime() ?? null,
    }]),
  );
}

async function heldOne(id: string): Promise<Held> {
  return (await held([id])).get(id)!;
}

/** What the live index holds for a user (its hash), with the time as the webhook's canonical
 * microsecond timestamp. */
async function cached(id: string): Promise<{ is_online: boolean; last_seen_at: string } | null> {
  const [o, s] = await redis.hmget(userKey(id), "o", "s");
  if (o === null) return null;
  const us = Number(s);
  const ms = Math.floor(us / 1000);
  return {
    is_online: o === "1",
    last_seen_at: new Date(ms).toISOString().replace("Z", `${String(us % 1000).padStart(3, "0")}Z`),
  };
}

async function assertUntouched(ids: string[]): Promise<void> {
  for (const [id, state] of await held(ids)) {
    assert.deepEqual(
      state,
      { is_online: false, last_seen_at: null, latitude: null, longitude: null },
      `${id} is untouched`,
    );
    assert.equal(await cached(id), null, `${id} has no Redis key`);
  }
}

const flush = async () => (await db`select private.flush_presence() as n`)[0].n as number;

// ---- method, credentials -------------------------------------------------------------------

test("setup_removes_users_left_by_an_interrupted_earlier_run", async () => {
  await db`
    delete from auth.users
    where email like ${"%@" + EMAIL_DOMAIN} and created_at < now() - interval '10 minutes'`;
});

test("refuses_other_methods_with_405", async () => {
  for (const method of ["GET", "PUT", "DELETE"]) {
    const res = await fetch(WEBHOOK, { method });
    assert.equal(res.status, 405, method);
    assert.equal(res.headers.get("allow"), "POST");
    assert.equal((await res.json()).error.code, "method_not_allowed");
  }
});

test("answers_the_cors_preflight", async () => {
  const res = await fetch(WEBHOOK, { method: "OPTIONS" });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("access-control-allow-headers") ?? "", /x-sltr-signature/);
  await res.body?.cancel();
});

test("refuses_a_request_without_signature_or_jwt_with_401", async () => {
  const [id] = await createUsers(1);
  expectError(await post({ events: [ev(id, "online", Date.now())] }), 401, "missing_credentials");
  await assertUntouched([id]);
});

// ---- signed batches ------------------------------------------------------------------------

test("accepts_a_signed_batch_and_redis_reflects_it_before_any_flush", async () => {
  const [a, b] = await createUsers(2);
  const unknown = crypto.randomUUID();
  const at = Date.now() - 1000;
  const res = await postSigned({
    events: [
      ev(a, "online", at, { lat: 52.52, lng: 13.405 }),
      ev(b, "offline", at),
      ev(unknown, "online", at),
    ],
  });
  const answeredAt = Date.now();
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.deepEqual(res.body, { accepted: 2, ignored: 1 });

  // Postgres holds it (buffered or already flushed by pg_cron: the read rule covers both).
  assert.deepEqual(await heldOne(a), {
    is_online: true,
    last_seen_at: at,
    latitude: 52.52,
    longitude: 13.405,
  });
  assert.equal((await heldOne(b)).last_seen_at, at);

  // Write-through happens before the 202; allow the 1 s the contract gives anyway.
  let key = await cached(a);
  while (key === null && Date.now() - answeredAt < 1000) key = await cached(a);
  assert.deepEqual(key, {
    is_online: true,
    last_seen_at: new Date(at).toISOString().replace("Z", "000Z"),
  });
  assert.ok(Date.now() - answeredAt < 1000);
  assert.equal(
    await redis.ttl(userKey(a)),
    -1,
    "the index keeps users until Postgres says otherwise",
  );
  assert.equal((await cached(b))?.is_online, false);
  assert.equal(await cached(unknown), null, "no key for an unknown user");
});

test("refuses_a_signature_made_with_the_wrong_secret", async () => {
  const [id] = await createUsers(1);
  const body = JSON.stringify({ events: [ev(id, "online", Date.now())] });
  const res = await post(body, {
    "x-sltr-signature": await sign(body, { secret: "not-the-webhook-secret" }),
  });
  expectError(res, 401, "invalid_signature");
  await assertUntouched([id]);
});

test("refuses_a_stale_signature_and_one_from_the_future", async () => {
  const [id] = await createUsers(1);
  const body = JSON.stringify({ events: [ev(id, "online", Date.now())] });
  const now = Math.floor(Date.now() / 1000);
  // Five seconds past the 300 s tolerance either way, so a second ticking over cannot matter.
  for (const t of [now - 305, now - 3600, now + 305]) {
    expectError(
      await post(body, { "x-sltr-signature": await sign(body, { t }) }),
      401,
      "stale_signature",
    );
  }
  await assertUntouched([id]);
});

test("accepts_a_signature_made_less_than_five_minutes_ago", async () => {
  const [id] = await createUsers(1);
  const body = JSON.stringify({ events: [ev(id, "online", Date.now() - 300_000)] });
  const t = Math.floor(Date.now() / 1000) - 290;
  const res = await post(body, { "x-sltr-signature": await sign(body, { t }) });
  assert.deepEqual(res.body, { accepted: 1, ignored: 0 });
});

test("refuses_a_replayed_signature_over_a_body_with_changed_bytes", async () => {
  const [id, other] = await createUsers(2);
  const body = JSON.stringify({ events: [ev(id, "online", Date.now())] });
  const header = await sign(body);
  const tampered = [
    body.replace('"online"', '"offline"'),
    body.replace(id, other),
    body + " ",
    body.replace(/(\d)Z"/, (_, d) => `${(Number(d) + 1) % 10}Z"`), // same length, 1 ms later
  ];
  for (const changed of tampered.filter((b) => b !== body)) {
    expectError(await post(changed, { "x-sltr-signature": header }), 401, "invalid_signature");
  }
  await assertUntouched([id, other]);
});

test("refuses_malformed_signature_headers", async () => {
  const [id] = await createUsers(1);
  const body = JSON.stringify({ events: [ev(id, "online", Date.now())] });
  const t = Math.floor(Date.now() / 1000);
  const good = (await sign(body, { t })).split("v1=")[1];
  for (
    const header of [
      "",
      "garbage",
      `v1=${good}`,
      `t=${t}`,
      `t=${t},v1=xyz`,
      `t=${t},v1=${good.slice(0, 62)}`,
      `t=abc,v1=${good}`,
      `t=${t},v1=${good}=`,
    ]
  ) {
    expectError(await post(body, { "x-sltr-signature": header }), 401, "invalid_signature");
  }
  await assertUntouched([id]);
});

test("accepts_any_matching_v1_so_secrets_can_rotate", async () => {
  const [id] = await createUsers(1);
  const body = JSON.stringify({ events: [ev(id, "online", Date.now())] });
  const t = Math.floor(Date.now() / 1000);
  const right = (await sign(body, { t })).split("v1=")[1];
  const wrong = (await sign(body, { t, secret: "old-secret" })).split("v1=")[1];
  const res = await post(body, { "x-sltr-signature": `t=${t},v1=${wrong},v1=${right}` });
  assert.equal(res.status, 202, JSON.stringify(res.body));
});

test("during_a_rotation_both_secrets_are_accepted_and_nothing_else", async () => {
  const next = "the-next-webhook-secret-".padEnd(40, "x");
  const { url, child } = await startFunctionsServer({
    PRESENCE_WEBHOOK_SECRETS: `${next},${SECRET}`,
  });
  try {
    const [a, b, c] = await createUsers(3);
    for (const [id, secret] of [[a, next], [b, SECRET]]) {
      const body = JSON.stringify({ events: [ev(id, "online", Date.now())] });
      const res = await post(
        body,
        { "x-sltr-signature": await sign(body, { secret }) },
        `${url}/presence-webhook`,
      );
      assert.equal(res.status, 202, JSON.stringify(res.body));
    }
    const body = JSON.stringify({ events: [ev(c, "online", Date.now())] });
    const forged = await post(
      body,
      { "x-sltr-signature": await sign(body, { secret: "not-one-of-ours-".padEnd(40, "y") }) },
      `${url}/presence-webhook`,
    );
    expectError(forged, 401, "invalid_signature");
    assert.equal((await heldOne(c)).is_online, false, "nothing written for c");
  } finally {
    child.kill();
    await child.status;
  }
});

test("a_webhook_secret_under_32_bytes_stops_the_server_with_the_reason", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}/functions/_serve/main.ts`],
    env: { ...Deno.env.toObject(), FUNCTIONS_PORT: "0", PRESENCE_WEBHOOK_SECRETS: "short-secret" },
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.notEqual(out.code, 0);
  assert.match(new TextDecoder().decode(out.stderr), /shorter than 32 bytes/);
});

test("replaying_an_identical_signed_batch_changes_nothing", async () => {
  const ids = await createUsers(3);
  const at = Date.now() - 2000;
  const body = JSON.stringify({ events: ids.map((id) => ev(id, "online", at)) });
  const header = await sign(body);
  const first = await post(body, { "x-sltr-signature": header });
  assert.deepEqual(first.body, { accepted: 3, ignored: 0 });
  const before = await held(ids);
  const replay = await post(body, { "x-sltr-signature": header });
  assert.equal(replay.status, 202);
  assert.deepEqual(replay.body, { accepted: 0, ignored: 3 });
  assert.deepEqual(await held(ids), before);
});

// ---- bad input -----------------------------------------------------------------------------

test("refuses_malformed_bodies_with_400_and_changes_nothing", async () => {
  const [id] = await createUsers(1);
  const at = Date.now();
  const cases: [unknown, string][] = [
    ["{not json", "invalid_json"],
    ["", "invalid_json"],
    [[], "invalid_body"],
    [{}, "invalid_body"],
    [{ events: [] }, "invalid_body"],
    [{ events: "x" }, "invalid_body"],
    [{ events: [null] }, "invalid_body"],
    [{ events: [{ status: "online", at: new Date(at).toISOString() }] }, "invalid_body"],
    [{ events: [ev("not-a-uuid", "online", at)] }, "invalid_body"],
    [{ events: [{ ...ev(id, "online", at), status: "away" }] }, "invalid_body"],
    [{ events: [{ ...ev(id, "online", at), status: true }] }, "invalid_body"],
    [{ events: [{ ...ev(id, "online", at), latitude: 52.5, longitude: 13.4 }] }, "invalid_body"],
    [{ events: [ev(id, "online", at)], extra: true }, "invalid_body"],
    // One bad event refuses the whole batch: the good one is not applied either.
    [
      { events: [ev(id, "online", at), { ...ev(id, "online", at), status: "busy" }] },
      "invalid_body",
    ],
  ];
  for (const [body, code] of cases) {
    expectError(await postSigned(body), 400, code);
  }
  await assertUntouched([id]);
});

test("refuses_out_of_range_or_partial_coordinates_with_400", async () => {
  const [id] = await createUsers(1);
  const at = Date.now();
  for (
    const extra of [
      { lat: 90.0001, lng: 0 },
      { lat: -91, lng: 0 },
      { lat: 0, lng: 180.5 },
      { lat: 0, lng: -181 },
      { lat: 52.5 },
      { lng: 13.4 },
      { lat: "52.5", lng: 13.4 },
      { lat: 52.5, lng: null },
    ]
  ) {
    const res = await postSigned({ events: [{ ...ev(id, "online", at), ...extra }] });
    expectError(res, 400, "invalid_location");
  }
  await assertUntouched([id]);
  // The edges themselves are fine.
  const res = await postSigned({ events: [ev(id, "online", at, { lat: -90, lng: 180 })] });
  assert.equal(res.status, 202, JSON.stringify(res.body));
});

test("refuses_bad_timestamps_with_400", async () => {
  const [id] = await createUsers(1);
  const inTenMinutes = new Date(Date.now() + 10 * 60_000).toISOString();
  for (
    const at of [
      "yesterday",
      "2026-11-25 12:00:00", // no time zone
      "2026-11-25T12:00:00", // no time zone
      "2026-11-25",
      "2026-02-30T12:00:00Z", // no such day
      "2026-11-25T24:00:00Z",
      "1999-12-31T23:59:59Z",
      "infinity",
      inTenMinutes, // the future beyond clock skew would pin the state
      1764072000,
      null,
    ]
  ) {
    const res = await postSigned({ events: [{ user_id: id, status: "online", at }] });
    expectError(res, 400, "invalid_timestamp");
  }
  await assertUntouched([id]);
});

test("accepts_timestamps_with_offsets_and_sub_millisecond_precision", async () => {
  const [id] = await createUsers(1);
  const base = new Date(Date.now() - 60_000);
  base.setUTCMilliseconds(0);
  // The same instant written at +02:00 with microseconds.
  const local = new Date(base.getTime() + 2 * 3600_000).toISOString().slice(0, 19);
  const res = await postSigned({
    events: [{ user_id: id, status: "online", at: `${local}.123456789+02:00` }],
  });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  const [row] = await db`
    select to_char(coalesce(b.event_at, p.last_seen_at) at time zone 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.US') as at
    from public.profiles p left join public.presence_buffer b on b.user_id = p.id
    where p.id = ${id}`;
  assert.equal(row.at, `${base.toISOString().slice(0, 19)}.123456`);
  assert.equal((await cached(id))?.last_seen_at, `${base.toISOString().slice(0, 19)}.123456Z`);
});

test("refuses_bodies_over_256_kib_and_batches_over_1000_events_with_413", async () => {
  const [id] = await createUsers(1);
  const at = Date.now();
  const big = JSON.stringify({ events: [ev(id, "online", at)], padding: "x".repeat(256 * 1024) });
  expectError(await post(big, { "x-sltr-signature": await sign(big) }), 413, "payload_too_large");
  const many = { events: Array.from({ length: 1001 }, () => ev(id, "online", at)) };
  assert.ok(JSON.stringify(many).length < 256 * 1024);
  expectError(await postSigned(many), 413, "too_many_events");
  await assertUntouched([id]);
  const max = { events: Array.from({ length: 1000 }, (_, i) => ev(id, "online", at - i)) };
  assert.deepEqual((await postSigned(max)).body, { accepted: 1000, ignored: 0 });
});

// ---- self-reports --------------------------------------------------------------------------

test("a_user_reports_their_own_presence_with_a_jwt", async () => {
  const [id] = await createUsers(1);
  const at = Date.now() - 5000;
  const res = await postAs(id, {
    events: [ev(undefined, "online", at, { lat: 48.85, lng: 2.35 })],
  });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.deepEqual(res.body, { accepted: 1, ignored: 0 });
  const withId = await postAs(id, { events: [ev(id.toUpperCase(), "offline", at + 1000)] });
  assert.deepEqual(withId.body, { accepted: 1, ignored: 0 });
  const state = await heldOne(id);
  assert.equal(state.is_online, false);
  assert.equal(state.last_seen_at, at + 1000);
  assert.equal(state.latitude, 48.85, "the location of the earlier event is kept");
  assert.equal((await cached(id))?.is_online, false);
});

test("a_user_cannot_report_someone_else_403", async () => {
  const [me, other] = await createUsers(2);
  const at = Date.now();
  expectError(await postAs(me, { events: [ev(other, "online", at)] }), 403, "not_your_presence");
  expectError(
    await postAs(me, { events: [ev(me, "online", at), ev(other, "online", at)] }),
    403,
    "not_your_presence",
  );
  await assertUntouched([me, other]);
});

test("self_reports_need_a_valid_user_jwt_401", async () => {
  const [id] = await createUsers(1);
  const body = { events: [ev(undefined, "online", Date.now())] };
  const forged = await userJwt(id, { secret: "not-the-project-secret-not-the-project-secret" });
  const expired = await userJwt(id, { expiresIn: Math.floor(Date.now() / 1000) - 60 });
  const cases: [string, string][] = [
    ["Bearer garbage", "invalid_jwt"],
    [`Bearer ${forged}`, "invalid_jwt"],
    [`Bearer ${expired}`, "invalid_jwt"],
    [`Bearer ${ANON_KEY}`, "user_jwt_required"],
    [`Bearer ${SERVICE_ROLE_KEY}`, "user_jwt_required"],
    ["Basic dXNlcjpwYXNz", "missing_jwt"],
  ];
  for (const [authorization, code] of cases) {
    expectError(await post(body, { authorization }), 401, code);
  }
  await assertUntouched([id]);
});

test("self_reports_are_capped_at_10_events_413", async () => {
  const [id] = await createUsers(1);
  const at = Date.now();
  const events = Array.from({ length: 11 }, (_, i) => ev(undefined, "online", at - i));
  expectError(await postAs(id, { events }), 413, "too_many_events");
  await assertUntouched([id]);
});

// ---- ordering ------------------------------------------------------------------------------

test("ignores_unknown_users_and_events_older_than_the_state_held", async () => {
  const now = Date.now();
  const [flushed] = await createUsers(1, { isOnline: false, lastSeenAt: new Date(now - 60_000) });
  const [buffered] = await createUsers(1);
  assert.deepEqual((await postSigned({ events: [ev(buffered, "online", now - 10_000)] })).body, {
    accepted: 1,
    ignored: 0,
  });
  const res = await postSigned({
    events: [
      ev(flushed, "online", now - 120_000), // older than profiles.last_seen_at
      ev(buffered, "offline", now - 20_000), // older than the buffered event
      ev(buffered, "offline", now - 10_000), // same time: a replay, not newer
      ev(crypto.randomUUID(), "online", now),
    ],
  });
  assert.deepEqual(res.body, { accepted: 0, ignored: 4 });
  assert.deepEqual(await heldOne(flushed), {
    is_online: false,
    last_seen_at: now - 60_000,
    latitude: null,
    longitude: null,
  });
  assert.equal((await heldOne(buffered)).is_online, true);
  assert.equal((await cached(buffered))?.is_online, true, "Redis keeps the newer event");
});

test("out_of_order_events_end_in_the_newest_state", async () => {
  const ids = await createUsers(5);
  const now = Date.now();
  // Within one batch, shuffled: per user the newest event wins wherever it sits.
  const events = ids.flatMap((id, i) => [
    ev(id, i % 2 ? "online" : "offline", now - 1000),
    ev(id, "online", now - 30_000),
    ev(id, "offline", now - 20_000),
  ]).sort(() => Math.random() - 0.5);
  assert.deepEqual((await postSigned({ events })).body, { accepted: 15, ignored: 0 });
  // A late batch of older events changes nothing, in Postgres or in Redis.
  const late = await postSigned({ events: ids.map((id) => ev(id, "online", now - 5000)) });
  assert.deepEqual(late.body, { accepted: 0, ignored: 5 });
  const state = await held(ids);
  for (const [i, id] of ids.entries()) {
    assert.equal(state.get(id)!.is_online, i % 2 === 1, id);
    assert.equal(state.get(id)!.last_seen_at, now - 1000, id);
    assert.equal((await cached(id))?.is_online, i % 2 === 1, `redis ${id}`);
  }
  // Partly new, partly stale: the new part lands, the stale part cannot overwrite Redis.
  const mixed = await postSigned({
    events: [ev(ids[0], "online", now - 500), ev(ids[1], "offline", now - 60_000)],
  });
  assert.deepEqual(mixed.body, { accepted: 1, ignored: 1 });
  assert.equal((await cached(ids[0]))?.is_online, true);
  assert.equal((await cached(ids[1]))?.is_online, true, "the ignored event left Redis alone");
});

test("twenty_concurrent_batches_for_overlapping_users_keep_each_users_newest_event", async () => {
  const ids = await createUsers(20);
  const now = Date.now();
  // 400 distinct times over the last 200 s, dealt at random to (batch, user) pairs.
  const times = Array.from({ length: 400 }, (_, i) => now - i * 500).sort(() =>
    Math.random() - 0.5
  );
  const batches = Array.from({ length: 20 }, (_, b) => ({
    events: ids.map((id, u) =>
      ev(id, Math.random() < 0.5 ? "online" : "offline", times[b * 20 + u])
    )
      .sort(() => Math.random() - 0.5),
  }));
  const expected = new Map<string, Event>();
  for (const e of batches.flatMap((b) => b.events)) {
    const seen = expected.get(e.user_id!);
    if (!seen || e.at > seen.at) expected.set(e.user_id!, e);
  }
  const answers = await Promise.all(batches.map((b) => postSigned(b)));
  for (const a of answers) assert.equal(a.status, 202, JSON.stringify(a.body));
  const total = answers.reduce((n, a) => n + a.body.accepted + a.body.ignored, 0);
  assert.equal(total, 400);
  const state = await held(ids);
  for (const id of ids) {
    const e = expected.get(id)!;
    assert.equal(state.get(id)!.last_seen_at, Date.parse(e.at), id);
    assert.equal(state.get(id)!.is_online, e.status === "online", id);
    const key = await cached(id);
    assert.equal(key && Date.parse(key.last_seen_at), Date.parse(e.at), `redis ${id}`);
    assert.equal(key?.is_online, e.status === "online", `redis ${id}`);
  }
});

test("the_index_keeps_each_users_newest_event_to_the_microsecond", async () => {
  const id = crypto.randomUUID();
  const t = Date.parse("2026-11-25T12:00:00.500Z") * 1000;
  const write = (online: boolean, us: number) =>
    writeEvents(redis, [{ user_id: id, online, at: us, lat: 52.52, lng: 13.405 }]);
  try {
    await write(false, t);
    await write(true, t - 100); // older: ignored
    await write(true, t); // not newer: ignored
    assert.deepEqual(await cached(id), {
      is_online: false,
      last_seen_at: "2026-11-25T12:00:00.500000Z",
    });
    await write(true, t + 1); // one microsecond later wins
    assert.deepEqual(await cached(id), {
      is_online: true,
      last_seen_at: "2026-11-25T12:00:00.500001Z",
    });
    await write(false, t + 1000); // offline: out of its cell
    assert.equal((await cached(id))?.is_online, false);
    assert.equal(await redis.sismember("{live}:online", id), 0);
  } finally {
    await forget(redis, [id]);
  }
});

test("a_batch_racing_a_user_deletion_gets_a_retryable_503_and_then_succeeds", async () => {
  const [doomed, other] = await createUsers(2);
  const body = { events: [ev(doomed, "online", Date.now()), ev(other, "online", Date.now())] };
  let answer: Promise<Answer> | undefined;
  await db.begin(async (tx) => {
    // The deletion is not committed yet: the batch still sees the user, then its foreign key
    // check waits for the deletion and finds the user gone.
    await tx`delete from auth.users where id = ${doomed}`;
    answer = postSigned(body);
    await new Promise((r) => setTimeout(r, 300));
  });
  const res = await answer!;
  expectError(res, 503, "conflict_retry");
  assert.equal(res.headers.get("retry-after"), "1");
  assert.equal((await heldOne(other)).last_seen_at, null, "nothing of the batch was stored");
  assert.deepEqual((await postSigned(body)).body, { accepted: 1, ignored: 1 });
});

// ---- flush and expiry ----------------------------------------------------------------------

test("an_ingest_during_a_flush_loses_nothing", async () => {
  const now = Date.now();
  const claimed = await createUsers(50);
  const fresh = await createUsers(50);
  await postSigned({ events: claimed.map((id) => ev(id, "online", now - 30_000)) });
  let posts: Promise<Answer[]> | undefined;
  let committedAt = 0;
  let flushedInside = 0;
  await db.begin(async (tx) => {
    // The flush claims and deletes the buffered rows and holds them until it commits.
    flushedInside = (await tx`select private.flush_presence() as n`)[0].n;
    posts = Promise.all([
      postSigned({ events: claimed.map((id) => ev(id, "offline", now - 10_000)) }),
      postSigned({ events: fresh.map((id) => ev(id, "online", now - 10_000)) }),
    ]);
    await new Promise((r) => setTimeout(r, 300));
    committedAt = Date.now();
  });
  const answers = await posts!;
  const answeredAt = Date.now();
  for (const a of answers) assert.deepEqual(a.body, { accepted: 50, ignored: 0 });
  if (flushedInside >= 50) {
    assert.ok(answeredAt >= committedAt, "the claimed users' batch waited for the flush");
  }
  const check = async (what: string) => {
    const state = await held([...claimed, ...fresh]);
    for (const id of claimed) {
      assert.deepEqual(
        [state.get(id)!.is_online, state.get(id)!.last_seen_at],
        [false, now - 10_000],
        `${what}: ${id}`,
      );
    }
    for (const id of fresh) {
      assert.deepEqual(
        [state.get(id)!.is_online, state.get(id)!.last_seen_at],
        [true, now - 10_000],
        `${what}: ${id}`,
      );
    }
  };
  await check("before the next flush");
  await flush();
  await check("after the next flush");
  const [{ n }] = await db`
    select count(*)::int as n from public.presence_buffer where user_id = any(${[
    ...claimed,
    ...fresh,
  ]}::uuid[])`;
  assert.equal(n, 0, "every change was applied and removed from the buffer");
});

test("flapping_between_flushes_costs_one_profile_update_and_a_heartbeat_costs_none", async () => {
  const now = Date.now();
  const [flapper] = await createUsers(1, { lastSeenAt: new Date(now - 120_000) });
  const [steady] = await createUsers(1, { isOnline: true, lastSeenAt: new Date(now - 120_000) });
  const xmin = async (id: string) =>
    (await db`select xmin::text as x from public.profiles where id = ${id}`)[0].x as string;
  const before = { flapper: await xmin(flapper), steady: await xmin(steady) };
  // Ten flaps in ten requests, ending online; a heartbeat for the steady user.
  for (let i = 0; i < 10; i++) {
    await postSigned({
      events: [ev(flapper, i % 2 ? "online" : "offline", now - 10_000 + i * 100)],
    });
  }
  await postSigned({ events: [ev(steady, "online", now - 1000)] });
  await flush();
  const [row] = await db`select is_online, last_seen_at from public.profiles where id = ${flapper}`;
  assert.deepEqual([row.is_online, row.last_seen_at.getTime()], [true, now - 10_000 + 900]);
  assert.notEqual(await xmin(flapper), before.flapper, "the flapper's profile was written");
  assert.equal(await xmin(steady), before.steady, "the heartbeat did not write the profile");
  // The heartbeat stays buffered: it is the steady user's last-seen time...
  assert.equal((await heldOne(steady)).last_seen_at, now - 1000);
  // ...so expiry (5 minutes) does not take them offline, though the profile says 2 minutes ago.
  await db`select private.expire_stale_presence(interval '90 seconds')`;
  assert.equal((await heldOne(steady)).is_online, true);
});

test("a_missed_leave_expires_after_max_age", async () => {
  const now = Date.now();
  const [silent] = await createUsers(1, {
    isOnline: true,
    lastSeenAt: new Date(now - 10 * 60_000),
  });
  const [heartbeat] = await createUsers(1, {
    isOnline: true,
    lastSeenAt: new Date(now - 20 * 60_000),
  });
  await postSigned({ events: [ev(heartbeat, "online", now - 30_000)] });
  await db`select private.expire_stale_presence()`;
  assert.deepEqual(
    [(await heldOne(silent)).is_online, (await heldOne(silent)).last_seen_at],
    [false, now - 10 * 60_000],
  );
  assert.equal((await heldOne(heartbeat)).is_online, true);
});

// ---- outages and crashes -------------------------------------------------------------------

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

test("teardown_removes_the_users_and_keys_it_created", async () => {
  if (created.length) {
    await db`delete from auth.users where id = any(${created}::uuid[])`;
    await forget(redis, created);
  }
  await db.end({ timeout: 1 });
  redis.disconnect();
});
