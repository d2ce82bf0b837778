// The bridge's pending events: in arrival order, and what to shed when the webhook is away
// too long.
import type { PresenceEvent } from "../../functions/_shared/presence.ts";

export interface BufferOptions {
  /** Above this many pending events the buffer sheds (see shed()). */
  maxEvents: number;
  /** Called when events had to be dropped that were not superseded (online events only). */
  onLostOnline?: (count: number) => void;
}

/**
 * Pending events in arrival order. While the webhook answers, it only ever holds a few
 * hundred. During an outage it grows; past maxEvents it sheds, in this order:
 *   1. per user, every event superseded by a newer one of the same user, except that the
 *      user's newest leave is always kept (so a user who left is recorded offline at the right
 *      time even if they came back since). This loses nothing the database would keep: it
 *      stores only each user's newest event.
 *   2. if that is not enough, the oldest online events. Those users are still online and the
 *      bridge re-sends everyone present once the webhook recovers (onLostOnline).
 * Leaves are never dropped in step 2; repeated leaves of one user collapse into the newest in
 * step 1.
 */
export class EventBuffer {
  private items: PresenceEvent[] = [];
  shedSuperseded = 0;
  shedOnline = 0;

  constructor(private readonly options: BufferOptions) {}

  get size(): number {
    return this.items.length;
  }

  push(events: PresenceEvent[]): void {
    for (const e of events) this.items.push(e);
    if (this.items.length > this.options.maxEvents) this.shed();
  }

  /** Puts events taken by take() back in front (their send failed), then sheds if needed. */
  unshift(events: PresenceEvent[]): void {
    this.items = events.concat(this.items);
    if (this.items.length > this.options.maxEvents) this.shed();
  }

  /** Removes and returns the oldest events that fit one request. */
  take(maxEvents: number, maxBodyBytes: number): PresenceEvent[] {
    let bytes = EMPTY_BODY_BYTES;
    let n = 0;
    while (n < this.items.length && n < maxEvents) {
      const size = eventBytes(this.items[n]) + (n > 0 ? 1 : 0);
      if (bytes + size > maxBodyBytes && n > 0) break;
      bytes += size;
      n++;
    }
    return this.items.splice(0, n);
  }

  private shed(): void {
    const before = this.items.length;
    const newestSeen = new Set<string>();
    const leaveKept = new Set<string>();
    const kept: PresenceEvent[] = [];
    for (let i = this.items.length - 1; i >= 0; i--) {
      const e = this.items[i];
      const isLeave = e.status === "offline";
      const keep = !newestSeen.has(e.user_id) || (isLeave && !leaveKept.has(e.user_id));
      newestSeen.add(e.user_id);
      if (isLeave && keep) leaveKept.add(e.user_id);
      if (keep) kept.push(e);
    }
    kept.reverse();
    this.shedSuperseded += before - kept.length;
    let over = kept.length - this.options.maxEvents;
    let lost = 0;
    if (over > 0) {
      const rest: PresenceEvent[] = [];
      for (const e of kept) {
        if (over > 0 && e.status === "online") {
          over--;
          lost++;
        } else rest.push(e);
      }
      this.items = rest;
    } else {
      this.items = kept;
    }
    if (lost > 0) {
      this.shedOnline += lost;
      this.options.onLostOnline?.(lost);
    }
  }
}

const encoder = new TextEncoder();
const EMPTY_BODY_BYTES = encoder.encode('{"events":[]}').byteLength;

function eventBytes(e: PresenceEvent): number {
  return encoder.encode(JSON.stringify(e)).byteLength;
}
