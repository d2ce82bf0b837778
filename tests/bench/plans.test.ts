// The benchmarks' headroom against hosted Realtime plans (bench/lib.ts planHeadroom), on the
// figures docs/scaling.md sizes: 5,000 online fit Pro without a spend cap (Team's limits); 50,000
// online with their pushes fit no published plan.
import assert from "node:assert/strict";
import { planHeadroom } from "../../bench/lib.ts";

Deno.test("5k_online_fit_pro_without_a_spend_cap_and_50k_fit_no_published_plan", () => {
  // 73 pushes a second per 1,000 online, each counted at the source and on its delivery.
  const at = (online: number) =>
    planHeadroom({ connections: online, messagesPerSecond: (online / 1000) * 73 * 2 });
  const five = at(5_000);
  assert.equal(five.smallest_plan_that_fits, "pro_no_spend_cap");
  assert.equal(five.plans.pro.fits, false, "Pro caps connections at 500");
  assert.deepEqual(five.plans.team.connections, { used: 5000, limit: 10_000, used_share: 0.5 });
  assert.equal(five.plans.team.messagesPerSecond?.used_share, 0.292);
  const fifty = at(50_000);
  assert.equal(fifty.smallest_plan_that_fits, "none");
  assert.equal(fifty.plans.enterprise.connections?.used_share, 5);
});
