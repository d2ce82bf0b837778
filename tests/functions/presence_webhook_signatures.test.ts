// The presence webhook's signatures (x-sltr-signature): the wrong secret, stale or future
// timestamps, changed bytes, malformed headers, secrets rotating, a secret too short to start
// with, and a replayed batch changing nothing.
import assert from "node:assert/strict";
import { ROOT, WEBHOOK_SECRET as SECRET } from "../_lib/env.ts";
import { startFunctionsServer } from "../_lib/servers.ts";
import { test } from "../_lib/harness.ts";
import {
  assertUntouched,
  createUsers,
  ev,
  expectError,
  held,
  heldOne,
  post,
  removeLeftovers,
  sign,
  teardown,
} from "./_presence_webhook.ts";

test("setup_removes_users_left_by_an_interrupted_earlier_run", removeLeftovers);

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

test("teardown_removes_the_users_and_keys_it_created", teardown);
