// ReconnectPolicy's delays against hosted Realtime's join limit, measured the way the server
// measures it (realtime/rate_counter.ts, the local endpoint's copy of hosted's RateCounter): a
// whole population dropped at once must come back without the tenant's joins per second ever
// being judged over the plan's limit, and a lone client whose own network failed must come back
// quickly.
import assert from "node:assert/strict";
import { ReconnectPolicy } from "../../client/reconnect.ts";
import { PLANS } from "../../realtime/config.ts";
import { RateCounter } from "../../realtime/rate_counter.ts";
import { rng } from "../_lib/rng.ts";

/** The highest average the server computes at any tick while `clients` reconnect. */
function stormPeak(clients: number, channelsPerClient: number, warmJoinsPerSecond: number) {
  const counter = new RateCounter(PLANS.team.maxJoinsPerSecond);
  // A warm counter: a minute of ordinary joins (sessions coming and going) before the storm.
  for (let i = 0; i < 12 && warmJoinsPerSecond > 0; i++) {
    counter.add(warmJoinsPerSecond * 5);
    counter.tick();
  }
  const random = rng(42); // seeded: the simulated storm is the same every run
  const buckets: number[] = [];
  for (let i = 0; i < clients; i++) {
    const policy = new ReconnectPolicy({ random });
    const at = policy.delayMs(1); // the server dropped everyone: first attempt
    const b = Math.floor(at / 5000);
    buckets[b] = (buckets[b] ?? 0) + channelsPerClient;
  }
  let peak = 0;
  let triggered = false;
  for (const joins of buckets) {
    counter.add((joins ?? 0) + warmJoinsPerSecond * 5);
    counter.tick();
    peak = Math.max(peak, counter.avg);
    triggered ||= counter.triggered;
  }
  return { peak, triggered, seconds: buckets.length * 5 };
}

Deno.test("a_50k_client_reconnect_storm_stays_under_teams_joins_per_second", () => {
  // A Realtime node that just restarted has a fresh counter: the strictest case.
  const fresh = stormPeak(50_000, 2, 0);
  console.log(`fresh counter: peak ${fresh.peak.toFixed(0)} joins/s over ${fresh.seconds} s`);
  assert.equal(fresh.triggered, false, `peak ${fresh.peak} joins/s`);
  assert.ok(fresh.peak <= PLANS.team.maxJoinsPerSecond);
  // Sessions of ~20 minutes at 50k online: ~42 new sockets a second, two joins each.
  const warm = stormPeak(50_000, 2, 84);
  assert.equal(warm.triggered, false, `peak ${warm.peak} joins/s`);
});

Deno.test("the_same_storm_without_the_spread_would_be_refused", () => {
  // What the spread buys: realtime-js's default (everyone back within a second or two).
  const counter = new RateCounter(PLANS.team.maxJoinsPerSecond);
  counter.add(100_000);
  counter.tick();
  assert.equal(counter.triggered, true);
});

Deno.test("a_client_whose_own_network_failed_retries_within_a_second_then_backs_off", () => {
  const policy = new ReconnectPolicy({ random: () => 1 });
  policy.heartbeat("timeout");
  assert.deepEqual([1, 2, 3, 4].map((n) => policy.delayMs(n)), [1000, 2000, 4000, 8000]);
  assert.equal(policy.delayMs(20), 60_000, "capped");
  policy.heartbeat("ok");
  assert.equal(policy.delayMs(1), 45_000, "a server-side drop is spread again");
  // Later attempts after a server-side drop: never less spread than the first, up to the cap.
  assert.deepEqual([2, 7].map((n) => policy.delayMs(n)), [45_000, 60_000]);
});

Deno.test("a_summed_rate_counter_triggers_at_its_limit_and_releases_when_the_window_falls_under", () => {
  // tenants.ex authorization_errors_per_second_rate/1: 1 s ticks, 30 buckets, summed.
  const errors = new RateCounter(2, 1000, 30, "sum");
  errors.add();
  errors.tick();
  assert.equal(errors.triggered, false, "one error in 30 s is under a limit of 2");
  errors.add();
  errors.tick();
  assert.equal(errors.triggered, true, "two in 30 s reach it");
  for (let i = 0; i < 28; i++) errors.tick();
  assert.equal(errors.triggered, true, "both still in the window after 29 ticks");
  errors.tick();
  assert.equal(errors.triggered, false, "the first error left the window: under the limit");
});
