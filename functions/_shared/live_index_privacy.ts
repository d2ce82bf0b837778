// The safety controls in the live index: who is incognito, who hides their distance, and who is
// blocked with whom, copied from Postgres (migration 20261207130000_safety_controls) so that
// nearby and status reads from Redis apply them without a Postgres statement:
//   {live}:incognito        set: users who appear offline (never placed in a cell)
//   {live}:hidden           set: users whose distance is hidden (show_distance false)
//   {live}:blocks:<id>      set: everyone blocked with <id>, either way (absent: nobody)
//   {live}:blocking         set: the users that have a blocks set
//   {live}:privacy:since    where the next sync starts reading private.privacy_changes (the
//                           last sync's database time, less OVERLAP_MS: a change may commit
//                           after a later one, and is applied when it shows)
//   {live}:privacy:at       when it was applied (Redis time, ms)
//   {live}:privacy:sync     held by the one process syncing now (2 s at most)
// The block_user / set_privacy RPCs write Postgres only; every read's script asks whether a sync
// is due (live_index.ts PRIVACY_DUE): after 500 ms one read starts one in the background, and
// after a second without one a read waits for it, so that a change shows on every read within a
// second of its commit. A rebuilt index loads everything before it answers.
import type { Redis } from "ioredis";
import { query } from "./db.ts";
import {
  BLOCKING,
  HIDDEN,
  INCOGNITO,
  LEAVE,
  PREFIX,
  PRIVACY_AT,
  PRIVACY_SINCE,
  PRIVACY_SYNC,
} from "./live_index.ts";
import { runScript } from "./redis.ts";

/** How a user's state changes in the index: in or out of the incognito set (out of their cell
 * while in it, back in when out and online). */
const SET_STATE = `${LEAVE}
local function set_incognito(id, on)
  local h = '${PREFIX}:user:' .. id
  local cur = redis.call('HMGET', h, 'o', 's', 'c', 'x', 'y')
  if on then
    if redis.call('SADD', '${INCOGNITO}', id) == 1 and cur[1] == '1' and cur[3] then
      leave(id, cur[3])
    end
  elseif redis.call('SREM', '${INCOGNITO}', id) == 1 and cur[1] == '1' and cur[3] then
    place(id, cur[3], cur[4], cur[5], tonumber(cur[2]))
  end
end
local function set_blocks(id, ids)
  local key = '${PREFIX}:blocks:' .. id
  redis.call('DEL', key)
  if #ids == 0 then
    redis.call('SREM', '${BLOCKING}', id)
    return
  end
  for j = 1, #ids, 500 do
    redis.call('SADD', key, unpack(ids, j, math.min(j + 499, #ids)))
  end
  redis.call('SADD', '${BLOCKING}', id)
end
`;

/** Users' whole state: per user (id, incognito 1|0, hidden 1|0, n, n ids blocked with them).
 * Applying a state twice changes nothing: the windows of two syncs overlap. */
const APPLY = `${SET_STATE}
local i = 1
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 3])
  set_incognito(id, ARGV[i + 1] == '1')
  if ARGV[i + 2] == '1' then redis.call('SADD', '${HIDDEN}', id)
  else redis.call('SREM', '${HIDDEN}', id) end
  local ids = {}
  for k = 1, n do ids[k] = ARGV[i + 3 + k] end
  set_blocks(id, ids)
  i = i + 4 + n
end
return 1
`;

/** After a full load: everyone the index holds a state for and the load did not name goes back
 * to the default (ARGV: the ids the load named). */
const SWEEP = `${SET_STATE}
local named = {}
for _, id in ipairs(ARGV) do named[id] = true end
local swept = 0
for _, set in ipairs({'${INCOGNITO}', '${HIDDEN}', '${BLOCKING}'}) do
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    if not named[id] then
      set_incognito(id, false)
      redis.call('SREM', '${HIDDEN}', id)
      set_blocks(id, {})
      swept = swept + 1
    end
  end
end
return swept
`;

/** Marks the sync done (Redis time), where the next one starts (ARGV[1]), and lets it go. */
const DONE = `
local t = redis.call('TIME')
redis.call('SET', '${PRIVACY_AT}', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('SET', '${PRIVACY_SINCE}', ARGV[1])
redis.call('DEL', '${PRIVACY_SYNC}')
return 1
`;

/** How far a sync reads back before the last one's time: longer than any transaction that
 * changes the controls may take to commit (the RPCs run under an 8 s statement timeout). */
const OVERLAP_MS = 15_000;

interface StateRow {
  user_id: string;
  incognito: boolean;
  show_distance: boolean;
  blocked: string[];
}

/** One sync's queries (a full load of a large population takes seconds). */
const SYNC_DEADLINE_MS = 30_000;

/** Users' rows into the index, a few hundred users (or blocks) a script. */
async function apply(r: Redis, rows: StateRow[]): Promise<void> {
  let args: (string | number)[] = [];
  for (const row of rows) {
    args.push(row.user_id, row.incognito ? 1 : 0, row.show_distance ? 0 : 1, row.blocked.length);
    args.push(...row.blocked);
    if (args.length > 5000) {
      await runScript(r, APPLY, args);
      args = [];
    }
  }
  if (args.length) await runScript(r, APPLY, args);
}

/** One sync: the users changed since the last applied seq (every user with a state when the
 * index has none yet, or when it fell behind what Postgres keeps), from the primary. */
export async function syncPrivacy(r: Redis, { full = false } = {}): Promise<void> {
  // The lock a read took lasts 2 s: held for as long as this sync takes (a full load may take
  // seconds, and two syncs at once could undo each other: a full load's SWEEP would clear what
  // a newer one applied), and 2 s again after a failure, before the next one may try.
  await r.pexpire(PRIVACY_SYNC, SYNC_DEADLINE_MS * 2);
  try {
    await sync(r, full);
  } catch (e) {
    await r.pexpire(PRIVACY_SYNC, 2000).catch(() => 0);
    throw e;
  }
}

async function sync(r: Redis, full: boolean): Promise<void> {
  const held = await r.get(PRIVACY_SINCE);
  const [bounds] = await query(
    (sql) =>
      sql<{ oldest: Date | null; now: Date }[]>`
        select oldest, now from private.privacy_changes_bounds()`,
    "live_index_privacy",
    SYNC_DEADLINE_MS,
  );
  // No copy yet, or one older than what Postgres keeps: everything.
  const since = full || held === null || (bounds.oldest !== null && new Date(held) < bounds.oldest)
    ? null
    : new Date(held);
  const rows = await query(
    (sql) =>
      sql<StateRow[]>`select user_id, incognito, show_distance, blocked
                      from private.live_index_privacy(${since}::timestamptz)`,
    "live_index_privacy",
    SYNC_DEADLINE_MS,
  );
  await apply(r, rows);
  if (since === null) await runScript(r, SWEEP, rows.map((row) => row.user_id));
  const next = new Date(bounds.now.getTime() - OVERLAP_MS).toISOString();
  await runScript(r, DONE, [next]);
}
