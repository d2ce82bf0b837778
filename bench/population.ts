// The benchmark's population: every user by number (ids derived from it), where they are, and
// who is online, in typed arrays (a million users fit), with O(1) picks of a random online or
// offline user. The database and Redis are seeded from the same facts.

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
