// Presence in, status events out, believing only presences that prove who they are.
//
// Clients track `{user_id, proof, lat?, lng?}` under their user id as presence key, where proof
// is a presence ticket (functions/_shared/presence_ticket.ts). A Realtime client picks its own
// key, so every meta (one per device and channel) is checked on arrival: its key a uuid, its
// user_id that key, its proof a ticket signed for that user and not expired. A user is online
// while at least one of their metas is believed; metas that are not are ignored (and counted,
// by reason), so a forged presence neither brings anyone online nor keeps them there after
// their real leave. A believed meta stops counting when its ticket expires (checked on every
// refresh): clients renew it by tracking again with a new one.
//
// One tracker serves every presence topic its bridge joins. A ticket names its user's topic
// (presence_ticket.ts, presenceTopic): a meta on another topic is not believed (wrong_topic),
// so a user's devices are all on one topic, and a resync of one topic leaves the others alone.
//
// After a topic's channel is joined again (a lost socket, a Realtime restart, a channel the
// server closed), its first presence state holds only the clients already back; realtime-js
// reports everyone else as left. Those leaves are held for a grace period (holdLeaves): the
// clients reconnect spread over tens of seconds (client/reconnect.ts), and one that is back
// within it never reads offline; one that is not goes offline when it ends.
import type { PresenceEvent } from "../../functions/_shared/presence.ts";
import {
  PRESENCE_TOPIC,
  type TicketCheck,
  type TicketRejection,
} from "../../functions/_shared/presence_ticket.ts";

/** One device's presence as realtime-js reports it (the payload it tracked). */
export interface PresenceMeta {
  presence_ref?: string;
  user_id?: unknown;
  proof?: unknown;
  lat?: unknown;
  lng?: unknown;
  [key: string]: unknown;
}

export type Rejection = TicketRejection | "wrong_user" | "bad_key" | "wrong_topic";
export const REJECTIONS: readonly Rejection[] = [
  "bad_key",
  "wrong_user",
  "wrong_topic",
  "missing_proof",
  "invalid_proof",
  "expired_proof",
];

type Location = { lat: number; lng: number };

interface Tracked {
  topic: string;
  /** Arrival order: the newest believed meta gives the location. */
  seq: number;
  /** Ticket expiry (unix seconds) when believed. */
  exp?: number;
  location?: Location;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function location(meta: PresenceMeta): Location | undefined {
  const { lat, lng } = meta;
  if (typeof lat !== "number" || typeof lng !== "number") return undefined;
  if (!Number.isFinite(lat) || !Number.isFinite(lng)) return undefined;
  if (lat < -90 || lat > 90 || lng < -180 || lng > 180) return undefined;
  return { lat, lng };
}

export type VerifyProof = (proof: unknown, nowSeconds: number) => TicketCheck;

export class PresenceTracker {
  /** Users present now (at least one believed meta), with their newest location. */
  readonly online = new Map<string, Location | undefined>();
  /** Metas ignored, by reason. */
  readonly rejected: Record<Rejection, number> = Object.fromEntries(
    REJECTIONS.map((r) => [r, 0]),
  ) as Record<Rejection, number>;
  /** key → "<topic> <presence_ref>" → meta as judged. */
  private readonly metas = new Map<string, Map<string, Tracked>>();
  private seq = 0;
  /** Topics whose leaves are held (holdLeaves), with what left meanwhile: key → refs. */
  private readonly held = new Map<string, Map<string, Set<string>>>();

  constructor(
    private readonly emit: (event: PresenceEvent) => void,
    private readonly verify: VerifyProof,
    private readonly now: () => Date = () => new Date(),
  ) {}

  get ignored(): number {
    return REJECTIONS.reduce((n, r) => n + this.rejected[r], 0);
  }

  /** Metas that joined under `key` on `topic` (a first track, a re-track, a resync). */
  join(key: string, newPresences: PresenceMeta[], topic = PRESENCE_TOPIC): void {
    let metas = this.metas.get(key);
    if (!metas) this.metas.set(key, metas = new Map());
    const nowSeconds = this.now().getTime() / 1000;
    for (const meta of newPresences) {
      const ref = `${topic} ${meta.presence_ref ?? `seq:${this.seq}`}`;
      metas.set(ref, this.judge(key, meta, nowSeconds, topic));
    }
    this.settle(key);
  }

  /** Metas that left `key` on `topic` (untrack, channel closed, socket gone). */
  leave(key: string, leftPresences: PresenceMeta[], topic = PRESENCE_TOPIC): void {
    this.drop(key, leftPresences.map((m) => `${topic} ${m.presence_ref}`), topic);
  }

  /** The whole presence state of `topic`'s channel joined anew (after the server closed the
   * old one, whose departures the bridge never heard): metas it holds that we know are kept as
   * judged, new ones are judged, and metas (and users) it no longer holds leave. Nobody still
   * present goes offline, not even for a moment; other topics' metas are not touched. */
  resync(state: Record<string, PresenceMeta[]>, topic = PRESENCE_TOPIC): void {
    const refOf = (m: PresenceMeta) => `${topic} ${m.presence_ref}`;
    for (const [key, metas] of [...this.metas]) {
      const present = new Set((state[key] ?? []).map(refOf));
      const gone = [...metas].filter(([ref, t]) => t.topic === topic && !present.has(ref));
      if (gone.length) this.drop(key, gone.map(([ref]) => ref), topic);
    }
    for (const [key, presences] of Object.entries(state)) {
      const known = this.metas.get(key);
      const fresh = presences.filter((m) => !known?.has(refOf(m)));
      if (fresh.length) this.join(key, fresh, topic);
    }
  }

  /** From now until releaseLeaves(topic), leaves on `topic` are held: the metas keep counting
   * (a ticket that expires still ends one). Returns false if they already were. */
  holdLeaves(topic: string): boolean {
    if (this.held.has(topic)) return false;
    this.held.set(topic, new Map());
    return true;
  }

  /** Applies the leaves held on `topic` and stops holding; returns how many users that took
   * offline (those not back on another meta meanwhile). */
  releaseLeaves(topic: string): number {
    const held = this.held.get(topic);
    this.held.delete(topic);
    const before = this.online.size;
    for (const [key, refs] of held ?? []) this.drop(key, [...refs], topic);
    return before - this.online.size;
  }

  /** Leaves held now, on every topic. */
  get heldLeaves(): number {
    let n = 0;
    for (const keys of this.held.values()) for (const refs of keys.values()) n += refs.size;
    return n;
  }

  private drop(key: string, refs: string[], topic: string): void {
    const held = this.held.get(topic);
    if (held) {
      let mine = held.get(key);
      if (!mine) held.set(key, mine = new Set());
      for (const ref of refs) mine.add(ref);
      return;
    }
    const metas = this.metas.get(key);
    if (!metas) return;
    for (const ref of refs) metas.delete(ref);
    this.settle(key);
  }

  /** Drops believed metas whose ticket has expired; their users go offline unless another
   * device still proves them present. Returns how many metas expired. */
  expire(): number {
    const nowSeconds = this.now().getTime() / 1000;
    let expired = 0;
    for (const [key, metas] of this.metas) {
      let changed = false;
      for (const t of metas.values()) {
        if (t.exp !== undefined && t.exp <= nowSeconds) {
          t.exp = undefined;
          this.rejected.expired_proof++;
          expired++;
          changed = true;
        }
      }
      if (changed) this.settle(key);
    }
    return expired;
  }

  /** Everyone present, as fresh online events: the periodic refresh and the resync. */
  snapshot(): PresenceEvent[] {
    const at = this.now().toISOString();
    return [...this.online.keys()].map((user_id) => ({ user_id, status: "online", at }));
  }

  private judge(key: string, meta: PresenceMeta, nowSeconds: number, topic: string): Tracked {
    const tracked: Tracked = { topic, seq: ++this.seq };
    const reject = (reason: Rejection) => {
      this.rejected[reason]++;
      return tracked;
    };
    if (!UUID.test(key)) return reject("bad_key");
    const id = key.toLowerCase();
    if (typeof meta.user_id !== "string" || meta.user_id.toLowerCase() !== id) {
      return reject("wrong_user");
    }
    const check = this.verify(meta.proof, nowSeconds);
    if (!check.ok) return reject(check.reason);
    if (check.sub !== id) return reject("wrong_user");
    if (check.topic !== topic) return reject("wrong_topic");
    tracked.exp = check.exp;
    tracked.location = location(meta);
    return tracked;
  }

  /** Re-derives one key's status from its believed metas and emits what changed: online
   * (first believed meta, or a new location), offline (none left). */
  private settle(key: string): void {
    const metas = this.metas.get(key);
    const id = key.toLowerCase();
    let newest: Tracked | undefined;
    for (const t of metas?.values() ?? []) {
      if (t.exp !== undefined && (!newest || t.seq > newest.seq)) newest = t;
    }
    if (metas && metas.size === 0) this.metas.delete(key);
    const at = this.now().toISOString();
    if (!newest) {
      if (this.online.delete(id)) this.emit({ user_id: id, status: "offline", at });
      return;
    }
    const was = this.online.get(id);
    const where = newest.location ?? was;
    const moved = where !== undefined && (was?.lat !== where.lat || was?.lng !== where.lng);
    if (this.online.has(id) && !moved) return;
    this.online.set(id, where);
    this.emit({ user_id: id, status: "online", at, ...where });
  }
}
