// Per-user quotas: token buckets in Redis, so one account cannot tile a city every minute,
// poll thousands of ids or flood self-reports. A bucket holds `capacity` tokens and refills
// `perSecond`; a request takes its cost (1, or the number of ids it asks about) or is refused
// with 429 and Retry-After. The buckets sit beside the live index (same hash slot) so the read
// scripts take a token in the same round trip as the read. The database applies the same
// limits to the RPCs clients call directly (private.check_request_quota, PostgREST's
// db-pre-request hook). Redis down: not enforced (the Postgres fallback is bounded anyway).
// The quotas and the probe limit, and why: docs/read-path.md, docs/privacy.md.
import type { Redis } from "ioredis";
import { HttpError } from "./http.ts";
import { runScript } from "./redis.ts";

export interface Quota {
  /** The bucket's name: nearby, status, self_report. */
  name: string;
  capacity: number;
  perSecond: number;
}

/** take(key, capacity, per_second, cost): 0 when taken, else whole seconds until it would be. */
export const TAKE_LUA = `
local function take(key, capacity, per_second, cost)
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local b = redis.call('HMGET', key, 't', 'at')
  local tokens = tonumber(b[1]) or capacity
  local at = tonumber(b[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - at) / 1000 * per_second)
  if tokens < cost then
    return math.max(1, math.ceil((math.min(cost, capacity) - tokens) / per_second))
  end
  redis.call('HSET', key, 't', tokens - cost, 'at', now)
  redis.call('PEXPIRE', key, math.ceil(capacity / per_second * 1000) + 1000)
  return 0
end
`;

export const quotaKey = (q: Quota, userId: string) => `{live}:quota:${q.name}:${userId}`;

/** The arguments a script passes to take(): key, capacity, refill per second. */
export const quotaArgs = (
  q: Quota,
  userId: string,
) => [quotaKey(q, userId), q.capacity, q.perSecond];

const TAKE = `${TAKE_LUA}
return take(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
`;

/** Takes `cost` tokens in a script of its own; returns the seconds to wait (0: taken). */
export async function take(r: Redis, q: Quota, userId: string, cost = 1): Promise<number> {
  return Number(await runScript(r, TAKE, [...quotaArgs(q, userId), cost]));
}

/** The refusal: 429 rate_limited with Retry-After. */
export function rateLimited(q: Quota, retryAfterSeconds: number): HttpError {
  return new HttpError(
    429,
    "rate_limited",
    `Too many ${q.name.replace("_", " ")} requests: try again in ${retryAfterSeconds} s.`,
    { "retry-after": String(retryAfterSeconds) },
  );
}
