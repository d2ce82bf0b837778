// A client calling nearby-online and online-status with supabase-js (functions.invoke).
import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { ANON_KEY, API_URL as SUPABASE_URL } from "../_lib/env.ts";
import { test } from "../_lib/harness.ts";
import { createNeighbourhood, far, near, removeNeighbourhood, viewer } from "./_neighbourhood.ts";

test("setup_creates_a_neighbourhood", createNeighbourhood);

test("supabase_js_clients_invoke_both_functions", async () => {
  const supabase = createClient(SUPABASE_URL, ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const headers = { Authorization: `Bearer ${viewer.jwt}` };
  const status = await supabase.functions.invoke("online-status", {
    body: { user_ids: [near.id, far.id] },
    headers,
  });
  assert.equal(status.error, null, String(status.error));
  assert.deepEqual(status.data.users.map((u: { user_id: string }) => u.user_id), [near.id, far.id]);

  const q = new URLSearchParams({
    lat: String(viewer.lat),
    lng: String(viewer.lng),
    radius_m: "4000",
  });
  const found = await supabase.functions.invoke(`nearby-online?${q}`, { method: "GET", headers });
  assert.equal(found.error, null, String(found.error));
  assert.deepEqual(found.data.users.map((u: { display_name: string }) => u.display_name), [
    "near",
    "mid",
    "far",
  ]);

  // Without a user's JWT the anon key alone is refused, as with any user-only function.
  const refused = await supabase.functions.invoke("online-status", {
    body: { user_ids: [near.id] },
  });
  assert.ok(refused.error, "the anon key alone is refused");
  assert.equal((refused.error as { context?: Response }).context?.status, 401);
  await (refused.error as { context?: Response }).context?.body?.cancel();
});

test("teardown_removes_the_neighbourhood", removeNeighbourhood);
