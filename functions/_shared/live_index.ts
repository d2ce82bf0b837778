// The live index: who is online, per ~500 m privacy cell, in Redis, so nearby-online and
// online-status answer without a Postgres statement. docs/read-path.md tells the whole story;
// in short:
//   {live}:cells          GEO set of the occupied cells (member = cell id "<row>:<col>")
//   {live}:cell:<cell>    sorted set: the users in the cell, scored by their last event (µs)
//   {live}:user:<id>      hash: o (1 online / 0), s (last event, µs), c (cell), x/y (its centre)
//   {live}:online         set of the users online
//   {live}:names          hash: user id -> display name
//   {live}:built          when the index was last rebuilt from Postgres (absent: cold)
// Only cell ids and cell centres are stored, never a raw coordinate. The presence webhook
// maintains it after each commit with one script per batch (WRITE); a cold or emptied Redis is
// rebuilt from one Postgres snapshot (live_index_snapshot), and a reconciliation with Postgres
// every minute repairs lost writes. Every key shares the hash tag {live}: a Redis Cluster puts
// them in one slot, as the scripts need.
//
// Distances are those of private.find_nearby_online_users, computed here the way PostGIS does
// for geography on its sphere (lwgeodetic.c sphere_distance, degrees to radians as PI * x / 180,
// radius (2a + b) / 3 of WGS 84), from the same snapped cell centres (public.snap_location,
// operation for operation), rounded the same way (greatest(1, round(d / 100)) * 100 with
// round-half-even) and ordered the same way (distance, then user id): tests/functions/
// nearby_parity.test.ts compares them on thousands of queries.
import type { Redis } from "ioredis";
import { type Quota, quotaArgs, TAKE_LUA } from "./quota.ts";
import { runScript } from "./redis.ts";

export const PREFIX = "{live}";
export const CELLS = `${PREFIX}:cells`;
export const ONLINE = `${PREFIX}:online`;
export const NAMES = `${PREFIX}:names`;
export const BUILT = `${PREFIX}:built`;
/** Held while one process rebuilds the index (120 s at most). */
export const REBUILDING = `${PREFIX}:rebuilding`;
/** A rebuild under way, between its pages: taken_at (µs, Redis's clock, when its first page
 * began), after (the last user id loaded), rows. */
export const REBUILD_STATE = `${PREFIX}:rebuild`;
/** The users the rebuild's pages so far had online. */
export const REBUILD_ONLINE = `${PREFIX}:rebuild:online`;
/** Set for a minute by whoever starts the minute's reconciliation. */
export const RECONCILED = `${PREFIX}:reconciled`;
/** How often the index is reconciled with Postgres. */
export const RECONCILE_SECONDS = 60;
/** The safety controls' copy (live_index_privacy.ts says how it is kept). */
export const INCOGNITO = `${PREFIX}:incognito`;
export const HIDDEN = `${PREFIX}:hidden`;
export const BLOCKING = `${PREFIX}:blocking`;
export const PRIVACY_SINCE = `${PREFIX}:privacy:since`;
export const PRIVACY_AT = `${PREFIX}:privacy:at`;
export const PRIVACY_SYNC = `${PREFIX}:privacy:sync`;
export const blocksKey = (id: string) => `${PREFIX}:blocks:${id}`;
export const cellKey = (cell: string) => `${PREFIX}:cell:${cell}`;
export const userKey = (id: string) => `${PREFIX}:user:${id}`;

/** A user is online while their newest event is this recent (expire_stale_presence's age). */
export const ONLINE_WINDOW_MS = 5 * 60 * 1000;

/** Event times are kept in microseconds, as Postgres keeps them (a later event in the same
 * millisecond must still win). From the webhook's canonical `YYYY-MM-DDTHH:MM:SS.ffffffZ`. */
export function micros(canonical: string): number {
  return Date.parse(canonical.slice(0, 23) + "Z") * 1000 + Number(canonical.slice(23, 26) || 0);
}

/** A last-seen time as users see it: to the minute, as private.seen_minute gives it (precise
 * times of someone else's last event would tell when their device moved). */
export const seenMinute = (ms: number) => new Date(Math.floor(ms / 60_000) * 60_000).toISOString();
const seenOfMicros = (us: number) => seenMinute(Math.floor(us / 1000));

// ---- the privacy grid, exactly as public.snap_location computes it ----------------------

const CELL_DEGREES = 0.0045;
/** Postgres's RADIANS_PER_DEGREE, as radians() multiplies by it. */
const PG_RADIANS_PER_DEGREE = 0.0174532925199432957692;

export interface Cell {
  id: string;
  lat: number;
  lng: number;
}

/** The cell holding (lat, lng) and its centre (public.snap_location, operation for operation). */
export function cellOf(lat: number, lng: number): Cell {
  const row = Math.floor((lat + 90) / CELL_DEGREES);
  return cellAt(row, lng);
}

function cellAt(row: number, lng: number): Cell {
  const centreLat = Math.min(90, -90 + (row + 0.5) * CELL_DEGREES);
  const n = Math.max(
    1,
    Math.floor(360 * Math.cos(centreLat * PG_RADIANS_PER_DEGREE) / CELL_DEGREES),
  );
  const col = Math.min(Math.floor((lng + 180) * n / 360), n - 1);
  return { id: `${row}:${col}`, lat: centreLat, lng: -180 + (col + 0.5) * 360 / n };
}

/** How far outside the cell a user is shown in a fix must lie to move them to another cell. */
export const HYSTERESIS_M = 100;
const HYSTERESIS_DEGREES = HYSTERESIS_M / 111195.0;
const clamp = (x: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, x));

/**
 * The cells within HYSTERESIS_M of a fix, on either axis (private.keeps_cell, operation for
 * operation): those holding a corner of the square around it, or the fix itself. A user shown
 * in one of them stays there: GPS noise across an edge never flips their cell.
 */
export function keptCells(lat: number, lng: number): string[] {
  const dLng = HYSTERESIS_DEGREES / Math.max(0.01, Math.cos(lat * PG_RADIANS_PER_DEGREE));
  const ids = new Set([cellOf(lat, lng).id]);
  for (const dy of [-1, 1]) {
    for (const dx of [-1, 1]) {
      ids.add(
        cellOf(clamp(lat + dy * HYSTERESIS_DEGREES, -90, 90), clamp(lng + dx * dLng, -180, 180)).id,
      );
    }
  }
  return [...ids];
}

/** The centre of a cell id. */
export function cellCentre(id: string): Cell {
  const [row, col] = id.split(":").map(Number);
  const centreLat = Math.min(90, -90 + (row + 0.5) * CELL_DEGREES);
  const n = Math.max(
    1,
    Math.floor(360 * Math.cos(centreLat * PG_RADIANS_PER_DEGREE) / CELL_DEGREES),
  );
  return { id, lat: centreLat, lng: -180 + (col + 0.5) * 360 / n };
}

// ---- distances, exactly as PostGIS computes them for geography on its sphere ------------

const SPHERE_RADIUS = (2 * 6378137 + 6356752.314245179) / 3;
const toRadians = (degrees: number) => Math.PI * degrees / 180;

/** PostGIS's `geography <-> geography`: from the cell centre (s) to the probe (e). */
export function sphereDistance(sLat: number, sLng: number, eLat: number, eLng: number): number {
  const latS = toRadians(sLat);
  const latE = toRadians(eLat);
  const dLon = toRadians(eLng) - toRadians(sLng);
  const cosDLon = Math.cos(dLon);
  const cosLatE = Math.cos(latE);
  const sinLatE = Math.sin(latE);
  const cosLatS = Math.cos(latS);
  const sinLatS = Math.sin(latS);
  const a1 = (cosLatE * Math.sin(dLon)) ** 2;
  const a2 = (cosLatS * sinLatE - sinLatS * cosLatE * cosDLon) ** 2;
  return Math.atan2(Math.sqrt(a1 + a2), sinLatS * sinLatE + cosLatS * cosLatE * cosDLon) *
    SPHERE_RADIUS;
}

/** Postgres's round(double precision): to nearest, ties to even (rint). */
function rint(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The distance an answer shows: greatest(1, round(d / 100)) * 100. */
export const shownDistance = (metres: number) => Math.max(1, rint(metres / 100)) * 100;

// ---- scripts ------------------------------------------------------------------------------

export const LEAVE = `
local function leave(id, cell)
  local key = '${PREFIX}:cell:' .. cell
  redis.call('ZREM', key, id)
  if redis.call('ZCARD', key) == 0 then redis.call('ZREM', '${CELLS}', cell) end
end
-- An incognito user is on no map: their hash says where, their cell does not hold them.
local function place(id, cell, x, y, seen)
  if redis.call('SISMEMBER', '${INCOGNITO}', id) == 1 then return end
  local key = '${PREFIX}:cell:' .. cell
  if redis.call('EXISTS', key) == 0 then redis.call('GEOADD', '${CELLS}', x, y, cell) end
  redis.call('ZADD', key, seen, id)
end
`;

/** One batch of events, each (id, online 1|0, event µs, cell or '', centre lng, centre lat,
 * the cells that keep a user shown in them (keptCells) joined by ','). An event not newer than
 * what the index holds changes nothing. Returns the ids whose name, or whose cell (online
 * without a location the index knows), must come from Postgres. */
const WRITE = `${LEAVE}
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local needs, i = {}, 1
while i <= #ARGV do
  local id, online, seen = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local cell, x, y, kept = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local h = '${PREFIX}:user:' .. id
  local cur = redis.call('HMGET', h, 'o', 's', 'c', 'x', 'y')
  if seen > tonumber(cur[2] or '-1') then
    redis.call('HSET', h, 'w', now)
    local was_online, old = cur[1] == '1', cur[3]
    if cell == '' or (old and string.find(',' .. kept .. ',', ',' .. old .. ',', 1, true)) then
      cell, x, y = old, cur[4], cur[5]
    end
    if online == '1' then
      if was_online and old and old ~= cell then leave(id, old) end
      if cell then
        place(id, cell, x, y, seen)
        redis.call('HSET', h, 'o', '1', 's', seen, 'c', cell, 'x', x, 'y', y)
      else
        redis.call('HSET', h, 'o', '1', 's', seen)
        needs[#needs + 1] = id
      end
      redis.call('SADD', '${ONLINE}', id)
    else
      if was_online and old then leave(id, old) end
      redis.call('HSET', h, 'o', '0', 's', seen)
      redis.call('SREM', '${ONLINE}', id)
    end
    if redis.call('HEXISTS', '${NAMES}', id) == 0 then needs[#needs + 1] = id end
  end
end
return needs
`;

/** Rows from Postgres (live_index_snapshot): (id, online 1|0, last seen µs or '', cell or '',
 * x, y, name). Taken unless the index holds a newer event; an online row without a cell is
 * online but on no map (no location known). ARGV[1]: 1 to also drop index users absent from
 * an online-only snapshot taken at ARGV[2] (ms), then the rows. */
const LOAD = `${LEAVE}
local i = 3
while i <= #ARGV do
  local id, online, seen, cell, x, y, name =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  redis.call('HSET', '${NAMES}', id, name)
  local h = '${PREFIX}:user:' .. id
  local cur = redis.call('HMGET', h, 'o', 's', 'c')
  local held = tonumber(cur[2] or '-1')
  if seen ~= '' and tonumber(seen) >= held then
    if cur[1] == '1' and cur[3] and cur[3] ~= cell then leave(id, cur[3]) end
    if online == '1' then
      if cell ~= '' then
        place(id, cell, x, y, tonumber(seen))
        redis.call('HSET', h, 'o', '1', 's', seen, 'c', cell, 'x', x, 'y', y)
      else
        redis.call('HSET', h, 'o', '1', 's', seen)
      end
      redis.call('SADD', '${ONLINE}', id)
    else
      redis.call('HSET', h, 'o', '0', 's', seen)
      if cell ~= '' then redis.call('HSET', h, 'c', cell, 'x', x, 'y', y) end
      redis.call('SREM', '${ONLINE}', id)
    end
  elseif seen == '' and held < 0 then
    -- Never seen online: offline, and where their profile says they are (if anywhere).
    redis.call('HSET', h, 'o', '0')
    if cell ~= '' and not cur[3] then redis.call('HSET', h, 'c', cell, 'x', x, 'y', y) end
  end
end
return 1
`;

/** Index users online but absent from an online-only snapshot that started at ARGV[1] (Redis
 * time, µs): offline, unless the webhook wrote them since (field w, Redis time: their event
 * committed after the snapshot began, whatever time the event itself carries). KEYS: none;
 * ARGV[2..]: the ids the snapshot says are online. */
const PRUNE = `${LEAVE}
local snapshot = tonumber(ARGV[1])
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local dropped = 0
for _, id in ipairs(redis.call('SMEMBERS', '${ONLINE}')) do
  if not keep[id] then
    local h = '${PREFIX}:user:' .. id
    local cur = redis.call('HMGET', h, 'w', 'c')
    if tonumber(cur[1] or '0') < snapshot then
      if cur[2] then leave(id, cur[2]) end
      redis.call('HSET', h, 'o', '0')
      redis.call('SREM', '${ONLINE}', id)
      dropped = dropped + 1
    end
  end
end
return dropped
`;

/** Every read first says whether the index can answer and what upkeep falls to its caller:
 * 'cold' (not built; another process is rebuilding it), 'rebuild' (not built; this caller got
 * the lock and rebuilds), 'reconcile' (built; this caller reconciles this minute), 'ready'. In
 * the read's own script: one round trip a request. */
export type Readiness = "ready" | "reconcile" | "cold" | "rebuild";

const READINESS = `
local function readiness()
  if redis.call('EXISTS', '${BUILT}') == 0 then
    return redis.call('SET', '${REBUILDING}', '1', 'EX', 120, 'NX') and 'rebuild' or 'cold'
  end
  return redis.call('SET', '${RECONCILED}', '1', 'EX', ${RECONCILE_SECONDS}, 'NX') and 'reconcile'
    or 'ready'
end
`;

export const canAnswer = (state: Readiness) => state === "ready" || state === "reconcile";

/** Whether the safety controls' copy must be synced (live_index_privacy.ts): '' no; 'bg' this
 * caller starts one in the background (none for 500 ms); 'wait' this caller syncs before it
 * answers (none for a second: a change must show within one). One caller at a time. */
export type PrivacyDue = "" | "bg" | "wait";

const PRIVACY_DUE = `
local function privacy_due()
  local t = redis.call('TIME')
  local age = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(redis.call('GET', '${PRIVACY_AT}') or '0')
  if age < 500 or not redis.call('SET', '${PRIVACY_SYNC}', '1', 'PX', 2000, 'NX') then return '' end
  return age >= 1000 and 'wait' or 'bg'
end
`;

/** The occupied cells nearest to (lng, lat) within a radius, nearest first by Redis's own
 * distance, with the users seen since ARGV[4]: flat (cell, count, then count x (id, seen)),
 * then the names of everyone returned. It stops once `need` users are in and no farther cell
 * can hold a nearer one (Redis measures on a slightly larger sphere and rounds positions to
 * its geohash: the margin covers both; the caller computes the exact distances).
 *
 * The search starts small and widens (x4) only while that condition cannot be settled inside
 * it: in a busy area the answer lies within a kilometre, and searching the whole radius there
 * cost most of the script (GEOSEARCH over hundreds of cells, 350 us a call at 50k online). A
 * cell's users are read once however often the search widens. */
const NEARBY = `${READINESS}${PRIVACY_DUE}${TAKE_LUA}
-- The caller's quota first (ARGV[7..9]: bucket key, capacity, refill per second; ARGV[11] 0
-- when this request was already charged), then, once the index can answer, how far the probe
-- is from the caller's own cell (ARGV[10] metres, 0 for no limit; ARGV[12] the caller).
if ARGV[11] == '1' then
  local wait = take(ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), 1)
  if wait > 0 then return {'limited', tostring(wait)} end
end
local state = readiness()
if state == 'cold' or state == 'rebuild' then return {state} end
if tonumber(ARGV[10]) > 0 then
  local xy = redis.call('HMGET', '${PREFIX}:user:' .. ARGV[12], 'x', 'y')
  if not xy[1] then return {'unlocated', state} end
  local rad = math.pi / 180
  local dlat, dlng = (tonumber(ARGV[2]) - tonumber(xy[2])) * rad, (tonumber(ARGV[1]) - tonumber(xy[1])) * rad
  local h = math.sin(dlat / 2) ^ 2
    + math.cos(tonumber(ARGV[2]) * rad) * math.cos(tonumber(xy[2]) * rad) * math.sin(dlng / 2) ^ 2
  if 2 * 6371008.8 * math.asin(math.min(1, math.sqrt(h))) > tonumber(ARGV[10]) then
    return {'too_far', state}
  end
end
local due = privacy_due()
local lng, lat, radius, since = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local need, r = tonumber(ARGV[5]), math.min(tonumber(ARGV[3]), tonumber(ARGV[6]))
-- Members of a set among ids, as 0/1 in their order (SMISMEMBER, 500 at a time).
local function members(set, ids)
  local flags = {}
  for j = 1, #ids, 500 do
    for _, f in ipairs(redis.call('SMISMEMBER', set, unpack(ids, j, math.min(j + 499, #ids)))) do
      flags[#flags + 1] = f
    end
  end
  return flags
end
-- A cell's users seen since, (id, seen) flat, without anyone blocked with the caller.
local blocks = '${PREFIX}:blocks:' .. ARGV[12]
local filter = redis.call('EXISTS', blocks) == 1
local function read_cell(cell)
  local users = redis.call('ZRANGE', '${PREFIX}:cell:' .. cell, since, '+inf', 'BYSCORE', 'WITHSCORES')
  if not filter or #users == 0 then return users end
  local ids = {}
  for j = 1, #users, 2 do ids[#ids + 1] = users[j] end
  local kept = {}
  for q, f in ipairs(members(blocks, ids)) do
    if f == 0 then
      kept[#kept + 1] = users[2 * q - 1]
      kept[#kept + 1] = users[2 * q]
    end
  end
  return kept
end
-- A hidden distance is ordered (and counted toward need) at the end of its 1 km band, as
-- find_nearby_online_users orders it: the walk counts a hidden user only once it has passed
-- their band's end (on Redis's distances, with the margin), so the cutoff covers everyone
-- whose place in the order could be before the need-th. Their flags come with their cell.
local anyone_hidden = redis.call('SCARD', '${HIDDEN}') > 0
local function band_end(d) return math.max(1, math.ceil((d * 1.002 + 5) / 1000)) * 1000 end
local seen, flags = {}, {}
local cells, cutoff
while true do
  cells = redis.call('GEOSEARCH', '${CELLS}', 'FROMLONLAT', lng, lat, 'BYRADIUS', r, 'm',
    'ASC', 'WITHDIST')
  local count, pending = 0, {}
  cutoff = nil
  for _, c in ipairs(cells) do
    local d = tonumber(c[2])
    if cutoff and d > cutoff then break end
    local users = seen[c[1]]
    if not users then
      users = read_cell(c[1])
      seen[c[1]] = users
      if anyone_hidden and #users > 0 then
        local ids = {}
        for j = 1, #users, 2 do ids[#ids + 1] = users[j] end
        flags[c[1]] = members('${HIDDEN}', ids)
      end
    end
    local f = flags[c[1]]
    for q = 1, #users / 2 do
      if f and f[q] == 1 then pending[#pending + 1] = band_end(d) else count = count + 1 end
    end
    local waiting = {}
    for _, b in ipairs(pending) do
      if b <= d then count = count + 1 else waiting[#waiting + 1] = b end
    end
    pending = waiting
    if not cutoff and count >= need then cutoff = d * 1.002 + 5 end
  end
  if r >= radius or (cutoff and cutoff <= r) then break end
  r = math.min(radius, r * 4)
end
local out, ids, hidden = {}, {}, {}
for _, c in ipairs(cells) do
  if cutoff and tonumber(c[2]) > cutoff then break end
  local users = seen[c[1]]
  if #users > 0 then
    out[#out + 1] = c[1]
    out[#out + 1] = #users / 2
    local f = flags[c[1]]
    for j = 1, #users, 2 do
      out[#out + 1] = users[j]
      out[#out + 1] = users[j + 1]
      ids[#ids + 1] = users[j]
      if anyone_hidden then hidden[#hidden + 1] = f and f[(j + 1) / 2] or 0 end
    end
  end
end
local names = {}
for j = 1, #ids, 500 do
  local chunk = {}
  for k = j, math.min(j + 499, #ids) do chunk[#chunk + 1] = ids[k] end
  for _, n in ipairs(redis.call('HMGET', '${NAMES}', unpack(chunk))) do names[#names + 1] = n or '' end
end
return {state, out, names, hidden, due}
`;

/** Users that do not exist (unknown ids an event named): out of the index entirely. */
const FORGET = `${LEAVE}
for _, id in ipairs(ARGV) do
  local h = '${PREFIX}:user:' .. id
  local cell = redis.call('HGET', h, 'c')
  if cell then leave(id, cell) end
  redis.call('DEL', h)
  redis.call('SREM', '${ONLINE}', id)
  redis.call('HDEL', '${NAMES}', id)
end
return #ARGV
`;

/** (online, last seen) of each id: the user hash's o and s, or nothing when not indexed. */
const STATUS = `${READINESS}${PRIVACY_DUE}${TAKE_LUA}
-- ARGV[1..3]: the caller's bucket (key, capacity, refill per second), charged one token per id
-- unless ARGV[5] is 0 (a read again); ARGV[4] the caller; then the ids. 'h' for a user hidden
-- from the caller (incognito, or a blocked pair): offline with no last seen, whatever the index
-- holds.
local wait = take(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5] == '1' and #ARGV - 5 or 0)
if wait > 0 then return {'limited', tostring(wait)} end
local state = readiness()
if state == 'cold' or state == 'rebuild' then return {state} end
local due = privacy_due()
local me, blocks = ARGV[4], '${PREFIX}:blocks:' .. ARGV[4]
local filter = redis.call('EXISTS', blocks) == 1
local out = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  if id ~= me and (redis.call('SISMEMBER', '${INCOGNITO}', id) == 1
      or (filter and redis.call('SISMEMBER', blocks, id) == 1)) then
    out[i - 5] = 'h'
  else
    local v = redis.call('HMGET', '${PREFIX}:user:' .. id, 'o', 's')
    out[i - 5] = v[1] and (v[1] .. ':' .. (v[2] or '')) or false
  end
end
return {state, out, due}
`;

// ---- writes ------------------------------------------------------------------------------

export interface IndexEvent {
  user_id: string;
  online: boolean;
  /** The event's time, µs. */
  at: number;
  lat?: number;
  lng?: number;
}

/** One batch, after its commit: returns the users whose name or cell the index lacks. */
export async function writeEvents(r: Redis, events: IndexEvent[]): Promise<string[]> {
  if (events.length === 0) return [];
  const args: (string | number)[] = [];
  for (const e of events) {
    const located = e.lat !== undefined && e.lng !== undefined;
    const cell = located ? cellOf(e.lat!, e.lng!) : undefined;
    const kept = located ? keptCells(e.lat!, e.lng!).join(",") : "";
    args.push(
      e.user_id,
      e.online ? 1 : 0,
      e.at,
      cell?.id ?? "",
      cell?.lng ?? "",
      cell?.lat ?? "",
      kept,
    );
  }
  return [...new Set(await runScript(r, WRITE, args) as string[])];
}

export interface SnapshotRow {
  user_id: string;
  display_name: string;
  is_online: boolean;
  last_seen_at: Date | null;
  cell_lat: number | null;
  cell_lng: number | null;
}

/** Rows from live_index_snapshot into the index (never over a newer event). */
export async function load(r: Redis, rows: SnapshotRow[]): Promise<void> {
  // 500 rows a script: each holds Redis for a few milliseconds, so reads interleave.
  for (let i = 0; i < rows.length; i += 500) {
    const args: (string | number)[] = [0, 0];
    for (const row of rows.slice(i, i + 500)) {
      const cell = row.cell_lat !== null && row.cell_lng !== null
        ? cellOf(row.cell_lat, row.cell_lng)
        : undefined;
      args.push(
        row.user_id,
        row.is_online ? 1 : 0,
        row.last_seen_at ? row.last_seen_at.getTime() * 1000 : "",
        cell?.id ?? "",
        cell?.lng ?? "",
        cell?.lat ?? "",
        row.display_name ?? "",
      );
    }
    await runScript(r, LOAD, args);
  }
}

/** Redis's clock, µs: what a snapshot's start is compared with (see PRUNE). */
export async function redisMicros(r: Redis): Promise<number> {
  const [s, us] = await r.time();
  return Number(s) * 1_000_000 + Number(us);
}

/** After an online-only snapshot that started at `takenAt` (redisMicros): who the index has
 * online and Postgres does not goes offline (unless the webhook wrote them since). Returns
 * how many. */
export async function prune(r: Redis, takenAt: number, onlineIds: string[]): Promise<number> {
  return await runScript(r, PRUNE, [takenAt, ...onlineIds]) as number;
}

/** Removes users Postgres does not know. */
export async function forget(r: Redis, userIds: string[]): Promise<void> {
  if (userIds.length) await runScript(r, FORGET, userIds);
}

// ---- reads -------------------------------------------------------------------------------

export interface NearbyUser {
  user_id: string;
  display_name: string;
  /** Null when the user hides their distance (ordered by the end of its 1 km band). */
  distance_m: number | null;
  last_seen_at: string | null;
}

/** Where a hidden distance is ordered: the end of its 1 km band (find_nearby_online_users). */
export const bandEnd = (metres: number) => Math.max(1, Math.ceil(metres / 1000)) * 1000;

/** Where NEARBY's search starts: three cells across. */
const FIRST_SEARCH_M = 1500;

/** Why the index refused a read: the caller's quota is spent (retry after `retryAfter` s),
 * the probe is too far from the caller's own cell, or the index does not know the caller's. */
export type Refusal = "limited" | "too_far" | "unlocated";

export interface Caller {
  id: string;
  quota: Quota;
  /** How far from the caller's own cell the probe may be, metres (0: no limit). */
  maxProbeM: number;
  /** False when this request already took its token (a retry). */
  charge: boolean;
}

/** find_nearby_online_users from the index: no Postgres statement. `users` is absent when the
 * index is not built or refused the read (`state` says which). */
export async function nearby(
  r: Redis,
  q: { lat: number; lng: number; radius_m: number; limit: number },
  caller: Caller,
  nowMs = Date.now(),
): Promise<
  {
    state: Readiness | Refusal;
    users?: NearbyUser[];
    retryAfter?: number;
    readiness?: Readiness;
    privacy?: PrivacyDue;
  }
> {
  const excluded = caller.id;
  const need = q.limit + 1;
  const [state, flat, names, hiddenFlags, privacy] = await runScript(r, NEARBY, [
    q.lng,
    q.lat,
    q.radius_m * 1.001 + 10,
    (nowMs - ONLINE_WINDOW_MS) * 1000,
    need,
    FIRST_SEARCH_M,
    ...quotaArgs(caller.quota, caller.id),
    caller.maxProbeM,
    caller.charge ? 1 : 0,
    caller.id,
  ]) as [Readiness | Refusal, string[], string[], number[], PrivacyDue];
  if (state === "limited") return { state, retryAfter: Number(flat) };
  if (state === "too_far" || state === "unlocated") {
    return { state, readiness: flat as unknown as Readiness };
  }
  if (!canAnswer(state)) return { state, readiness: state };
  const found: {
    user_id: string;
    display_name: string;
    seen: number;
    d: number;
    hidden: boolean;
    key: number;
  }[] = [];
  let n = 0;
  for (let i = 0; i < flat.length;) {
    const centre = cellCentre(flat[i]);
    const count = Number(flat[i + 1]);
    i += 2;
    const d = sphereDistance(centre.lat, centre.lng, q.lat, q.lng);
    for (let k = 0; k < count; k++, i += 2, n++) {
      const id = flat[i];
      const hidden = hiddenFlags[n] === 1;
      // A hidden distance is as far as its band's end, for the radius as for the order.
      const key = hidden ? bandEnd(d) : d;
      if (d > q.radius_m || key > q.radius_m || id === excluded) continue;
      found.push({
        user_id: id,
        display_name: names[n],
        seen: Number(flat[i + 1]),
        d,
        hidden,
        key,
      });
    }
  }
  found.sort((a, b) =>
    a.key - b.key || (a.user_id < b.user_id ? -1 : a.user_id > b.user_id ? 1 : 0)
  );
  const users = found.slice(0, q.limit).map((u) => ({
    user_id: u.user_id,
    display_name: u.display_name,
    distance_m: u.hidden ? null : shownDistance(u.d),
    last_seen_at: seenOfMicros(u.seen),
  }));
  return { state, users, readiness: state, privacy };
}

export interface Status {
  user_id: string;
  is_online: boolean;
  last_seen_at: string | null;
}

/** get_online_users_batch from the index; ids the index does not hold are left out (the
 * caller asks Postgres about those). Online means an event in the last 5 minutes. */
export async function statuses(
  r: Redis,
  ids: string[],
  caller: { id: string; quota: Quota; charge?: boolean },
  nowMs = Date.now(),
): Promise<
  {
    state: Readiness | "limited";
    found?: Status[];
    missing?: string[];
    retryAfter?: number;
    privacy?: PrivacyDue;
  }
> {
  const [state, raw, privacy] = await runScript(r, STATUS, [
    ...quotaArgs(caller.quota, caller.id),
    caller.id,
    caller.charge === false ? 0 : 1,
    ...ids,
  ]) as [
    Readiness | "limited",
    (string | null)[],
    PrivacyDue,
  ];
  if (state === "limited") return { state, retryAfter: Number(raw) };
  if (!canAnswer(state)) return { state };
  const found: Status[] = [];
  const missing: string[] = [];
  ids.forEach((id, i) => {
    const v = raw[i];
    if (!v) return void missing.push(id);
    if (v === "h") return void found.push({ user_id: id, is_online: false, last_seen_at: null });
    const [o, s] = v.split(":");
    const seen = s ? Number(s) : undefined;
    found.push({
      user_id: id,
      is_online: o === "1" && seen !== undefined && nowMs * 1000 - seen <= ONLINE_WINDOW_MS * 1000,
      last_seen_at: seen !== undefined ? seenOfMicros(seen) : null,
    });
  });
  return { state, found, missing, privacy };
}
