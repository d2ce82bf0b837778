// The read path's Redis cache: presence write-through keys (read), nearby answers (read
// through, TTL 60 s) and the cell version keys that keep those answers real time.
//
// How a cached nearby answer stays correct:
// - Went offline: every cached user is checked against presence:<id> (MGET) when served; a
//   key saying offline drops them. The presence webhook writes those keys after each commit.
// - Came online: an answer covers a disk; the disk is covered by a few "version cells"
//   (nearby:ver:<level>:<row>:<col>). The webhook bumps the cells where a user came online
//   (offline or unknown before: its write-through script says which), after its commit
//   (bumpNearbyVersionsWith); an answer is served only while every version it was computed
//   under is unchanged. Versions are read before the database is, so an event committed
//   during a recompute invalidates the answer it might have missed. An arrival without a
//   location bumps nearby:ver:all, which every answer depends on. Moves of users already
//   online and heartbeats bump nothing. An answer cut at its row limit depends only on the
//   cells of the smaller disk out to its last row (an arrival farther away cannot enter it),
//   which keeps busy areas cacheable.
// - The caller is never in their own answer: answers are computed for everyone in the cell
//   (with a few spare rows) and the caller is removed when serving.
// Why version cells rather than a short-circuit (asking Postgres on every hit whether anyone
// came online nearby): that costs a database round trip per request, the very thing the cache
// saves, while the webhook already knows where each event happened. The price: arrivals in a
// busy area invalidate its answers often, so the hit rate is highest where it matters most,
// in the many quiet cells, and a user who moves away while online can be listed at their old
// distance until the answer expires (60 s).
import type { Redis } from "ioredis";

function positiveNumberFromEnv(name: string, fallback: number): number {
  const value = Number(Deno.env.get(name) ?? "");
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

/** How long a nearby answer may be served (SLTR_NEARBY_CACHE_TTL_SECONDS, default 60). */
export const NEARBY_TTL_SECONDS = positiveNumberFromEnv("SLTR_NEARBY_CACHE_TTL_SECONDS", 60);

/** Version keys outlive every answer computed under them: a key that expired and was
 * created again by a bump can never match an answer stored before it expired. */
export const VERSION_TTL_SECONDS = Math.max(120, 2 * NEARBY_TTL_SECONDS + 10);

/** How long online-status keeps a state read from Postgres (only when the key is absent). */
export const STATUS_TTL_SECONDS = positiveNumberFromEnv("SLTR_STATUS_CACHE_TTL_SECONDS", 60);

/** Callers share a cached answer per query cell of 0.002 degrees (~220 m x 135 m at 52° N);
 * the answer is computed from the cell's centre, so distances are off by at most ~130 m on
 * the caller's side, below the 100 m rounding plus the 500 m privacy grid on the other.
 * SLTR_NEARBY_QUERY_CELL_DEGREES trades that precision for hit rate (see the README). */
export const QUERY_CELL_DEGREES = positiveNumberFromEnv("SLTR_NEARBY_QUERY_CELL_DEGREES", 0.002);

/** Levels of version cells, finest first, in degrees (~1.1 km, 5.6 km, 28 km of latitude). */
export const VERSION_LEVELS = [0.01, 0.05, 0.25] as const;

/** An answer depends on at most this many version cells (MGET'd on each read): a 5 km disc
 * fits at the finest level, else a coarser level is used. */
const MAX_VERSION_CELLS = 400;

/** How far a user's snapped point can be from where they are (the 500 m grid's half
 * diagonal is ~354 m), so version cells cover a disk widened by that. */
const SNAP_PAD_METRES = 400;

const METRES_PER_DEGREE_LATITUDE = 110_574; // the shortest, at the equator

export const ALL_VERSION_KEY = "nearby:ver:all";

export const presenceKey = (userId: string) => `presence:${userId}`;

/** expire_stale_presence (pg_cron) marks a user offline in Postgres alone when their newest
 * event is 5 minutes old, while presence keys live 10; so a key saying online is trusted only
 * while its event is younger than this. */
export const PRESENCE_TRUSTED_ONLINE_MS = 4 * 60 * 1000;

/** A presence key's state, if it can be served as is (see PRESENCE_TRUSTED_ONLINE_MS). */
export function trustedPresence(
  raw: string | null | undefined,
  nowMs = Date.now(),
): PresenceState | undefined {
  const state = parsePresence(raw);
  if (!state) return undefined;
  if (state.is_online && nowMs - Date.parse(state.last_seen_at) > PRESENCE_TRUSTED_ONLINE_MS) {
    return undefined;
  }
  return state;
}

/** The value the presence webhook writes to presence:<user_id>. */
export interface PresenceState {
  is_online: boolean;
  last_seen_at: string;
}

export function parsePresence(raw: string | null | undefined): PresenceState | undefined {
  if (!raw) return undefined;
  try {
    const v = JSON.parse(raw);
    if (typeof v?.is_online !== "boolean" || typeof v?.last_seen_at !== "string") return undefined;
    const t = Date.parse(v.last_seen_at);
    if (Number.isNaN(t)) return undefined;
    return { is_online: v.is_online, last_seen_at: new Date(t).toISOString() };
  } catch {
    return undefined;
  }
}

/** The centre of the query cell holding (lat, lng). */
export function queryCell(lat: number, lng: number): { lat: number; lng: number } {
  const snap = (x: number) => Math.round(x / QUERY_CELL_DEGREES) * QUERY_CELL_DEGREES;
  return {
    lat: Number(Math.min(90, Math.max(-90, snap(lat))).toFixed(3)),
    lng: Number(Math.min(180, Math.max(-180, snap(lng))).toFixed(3)),
  };
}

export function nearbyKey(lat: number, lng: number, radiusM: number, limit: number): string {
  return `nearby:v1:${lat.toFixed(3)}:${lng.toFixed(3)}:${radiusM}:${limit}`;
}

function cellIndex(x: number, size: number): number {
  return Math.floor(x / size);
}

function versionKey(level: number, row: number, col: number): string {
  return `nearby:ver:${VERSION_LEVELS[level]}:${row}:${col}`;
}

/** The version cells holding a point, one per level (what a change there bumps). */
export function pointVersionKeys(lat: number, lng: number): string[] {
  return VERSION_LEVELS.map((size, level) => {
    const cols = Math.round(360 / size);
    const col = ((cellIndex(lng + 180, size) % cols) + cols) % cols;
    return versionKey(level, cellIndex(lat + 90, size), col);
  });
}

/** The version cells an answer for a disk depends on: the cells at `level`, plus
 * nearby:ver:all. */
export interface DiskVersions {
  level: number;
  keys: string[];
}

/**
 * The version cells covering the disk (lat, lng, radiusM), at the finest level that needs at
 * most MAX_VERSION_CELLS of them (or exactly at `level`), plus nearby:ver:all; undefined when
 * no level fits (near the poles): such answers are not cached.
 */
export function diskVersionKeys(
  lat: number,
  lng: number,
  radiusM: number,
  level?: number,
): DiskVersions | undefined {
  const padLat = (radiusM + SNAP_PAD_METRES) / METRES_PER_DEGREE_LATITUDE;
  const maxAbsLat = Math.abs(lat) + padLat;
  if (maxAbsLat >= 89) return undefined;
  const padLng = padLat / Math.cos((maxAbsLat * Math.PI) / 180);
  const levels = level === undefined ? VERSION_LEVELS.map((_, i) => i) : [level];
  for (const l of levels) {
    const size = VERSION_LEVELS[l];
    const cols = Math.round(360 / size);
    const row0 = cellIndex(lat - padLat + 90, size);
    const row1 = cellIndex(lat + padLat + 90, size);
    const col0 = cellIndex(lng - padLng + 180, size);
    const col1 = cellIndex(lng + padLng + 180, size);
    const count = (row1 - row0 + 1) * (col1 - col0 + 1);
    if (count > MAX_VERSION_CELLS || col1 - col0 + 1 > cols) continue;
    const keys: string[] = [];
    for (let row = row0; row <= row1; row++) {
      for (let col = col0; col <= col1; col++) {
        keys.push(versionKey(l, row, ((col % cols) + cols) % cols)); // wraps at ±180°
      }
    }
    keys.push(ALL_VERSION_KEY);
    return { level: l, keys };
  }
  return undefined;
}

/** Where a presence change happened; null coordinates mean "somewhere" (bumps every answer). */
export interface ChangedPoint {
  latitude?: number | null;
  longitude?: number | null;
}

/**
 * For the presence webhook, after its commit, on its own connection: cached nearby answers
 * around these points (the users who came online) are recomputed on their next read. A point
 * without coordinates bumps every answer. Throws when Redis fails (answers then expire by
 * their TTL; the offline filter does not depend on this).
 */
export async function bumpNearbyVersionsWith(r: Redis, points: ChangedPoint[]): Promise<void> {
  const keys = new Set<string>();
  for (const p of points) {
    if (typeof p.latitude === "number" && typeof p.longitude === "number") {
      for (const k of pointVersionKeys(p.latitude, p.longitude)) keys.add(k);
    } else {
      keys.add(ALL_VERSION_KEY);
    }
  }
  if (keys.size === 0) return;
  const pipe = r.multi();
  for (const k of keys) pipe.incr(k).expire(k, VERSION_TTL_SECONDS);
  const results = await pipe.exec();
  if (!results || results.some(([e]) => e)) throw new Error("version bump failed");
}

/** The versions an answer was computed under, as one comparable string. */
export function versionStamp(values: (string | null)[]): string {
  return values.map((v) => v ?? "-").join(",");
}
