// The benchmark's population: every user by number (ids derived from it), where they are, and
// who is online, in typed arrays (a million users fit), with O(1) picks of a random online or
// offline user. The database and Redis are seeded from the same facts.
import type { Sql } from "postgres";
import { CITIES } from "./lib.ts";

export const ID_PREFIX = "b0000000-0000-4000-8000-";
export const idOf = (n: number) => `${ID_PREFIX}${n.toString(16).padStart(12, "0")}`;

export class Population {
  readonly lat: Float64Array;
  readonly lng: Float64Array;
  /** Positions in `list`: online users first (the first `online` entries), then offline. */
  private readonly list: Int32Array;
  private readonly where: Int32Array;
  online = 0;
  /** Users a probe is watching: left out of the churn meanwhile. */
  readonly reserved = new Set<number>();

  constructor(readonly size: number) {
    this.lat = new Float64Array(size + 1);
    this.lng = new Float64Array(size + 1);
    this.list = new Int32Array(size);
    this.where = new Int32Array(size + 1);
    for (let n = 1; n <= size; n++) {
      this.list[n - 1] = n;
      this.where[n] = n - 1;
    }
  }

  isOnline(n: number): boolean {
    return this.where[n] < this.online;
  }

  private swap(i: number, j: number): void {
    const a = this.list[i];
    const b = this.list[j];
    this.list[i] = b;
    this.list[j] = a;
    this.where[a] = j;
    this.where[b] = i;
  }

  setOnline(n: number, on: boolean): void {
    if (this.isOnline(n) === on) return;
    if (on) {
      this.swap(this.where[n], this.online);
      this.online++;
    } else {
      this.online--;
      this.swap(this.where[n], this.online);
    }
  }

  /** The k-th online user (0 <= k < online), for round-robin refreshes. */
  onlineAt(k: number): number {
    return this.list[k];
  }

  /** A random online (or offline) user not reserved by a probe. */
  pick(online: boolean, r: () => number): number | undefined {
    const count = online ? this.online : this.size - this.online;
    if (count === 0) return undefined;
    for (let tries = 0; tries < 20; tries++) {
      const n = this.list[(online ? 0 : this.online) + Math.floor(r() * count)];
      if (!this.reserved.has(n)) return n;
    }
    return undefined;
  }
}

/** Users 1..`users` in auth.users and profiles, scattered around CITIES (a ~5 km standard
 * deviation); 1..`online` online, seen a moment ago, with a buffered heartbeat (as the bridge's
 * refresh leaves one). Replaces every earlier bench user, in one transaction, reproducibly
 * (setseed). */
export async function seedUsers(
  sql: Sql,
  users: number,
  online: number,
  onProfiles: () => void = () => {},
): Promise<void> {
  await sql`delete from auth.users where email like 'bench-%@sltr.bench'`;
  await sql.begin(async (tx) => {
    await tx`select setseed(0.42)`;
    await tx`
      insert into auth.users (id, aud, role, email)
      select (${ID_PREFIX} || lpad(to_hex(n), 12, '0'))::uuid, 'authenticated', 'authenticated',
             'bench-' || n || '@sltr.bench'
      from generate_series(1, ${users}::int) as n`;
    onProfiles();
    await tx`
      insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
      select (${ID_PREFIX} || lpad(to_hex(n), 12, '0'))::uuid, 'Bench ' || n,
             n <= ${online}::int,
             least(89.0, greatest(-89.0, c.lat + r * cos(t) * 0.045)),
             c.lng + r * sin(t) * 0.045 / cos(radians(c.lat)),
             case when n <= ${online}::int then now() - interval '2 seconds'
                  else now() - interval '2 hours' end
      from generate_series(1, ${users}::int) as n
      cross join lateral (select sqrt(-2 * ln(1 - random())) as r, 2 * pi() * random() as t, n as k) as g
      join jsonb_to_recordset(${tx.json(CITIES.map((c, i) => ({ ...c, i })))}::jsonb)
        as c(i int, lat float8, lng float8) on c.i = g.k % ${CITIES.length}::int`;
    await tx`
      insert into public.presence_buffer (user_id, is_online, event_at, latitude, longitude)
      select p.id, true, now(), p.latitude, p.longitude from public.profiles as p
      where p.id between ${idOf(1)}::uuid and ${idOf(online)}::uuid
      on conflict (user_id) do update set is_online = true, event_at = excluded.event_at`;
  });
}
