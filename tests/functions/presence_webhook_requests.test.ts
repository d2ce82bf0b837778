// The presence webhook's front door: methods, CORS, credentials, what a signed batch does (Redis
// reflects it before any flush), and bad input refused with a 4xx and no change anywhere.
import assert from "node:assert/strict";
import { userKey } from "../../functions/_shared/live_index.ts";
import { test } from "../_lib/harness.ts";
import {
  assertUntouched,
  cached,
  createUsers,
  db,
  ev,
  expectError,
  heldOne,
  post,
  postSigned,
  redis,
  removeLeftovers,
  sign,
  teardown,
  WEBHOOK,
} from "./_presence_webhook.ts";

test("setup_removes_users_left_by_an_interrupted_earlier_run", removeLeftovers);

// ---- method, credentials -------------------------------------------------------------------

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

test("teardown_removes_the_users_and_keys_it_created", teardown);
