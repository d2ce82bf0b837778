// Users reporting their own presence to the webhook with their JWT: only their own, only with a
// valid user JWT, at most 10 events.
import assert from "node:assert/strict";
import { ANON_KEY, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { test } from "../_lib/harness.ts";
import {
  assertUntouched,
  cached,
  createUsers,
  ev,
  expectError,
  heldOne,
  post,
  postAs,
  removeLeftovers,
  teardown,
} from "./_presence_webhook.ts";

test("setup_removes_users_left_by_an_interrupted_earlier_run", removeLeftovers);

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

test("teardown_removes_the_users_and_keys_it_created", teardown);
