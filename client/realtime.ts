// RealtimeService: the app's one door to Supabase Realtime. One socket (the SupabaseClient's
// RealtimeClient), any number of subscriptions: subscriptions to the same topic share one
// channel (reference counted: joined on the first, left after the last unsubscribe), channels
// are rejoined after reconnects (realtime-js) and rebuilt, with jitter, if the server closes
// them (here).
//
// Presence stays within what hosted Realtime allows and proves who it is:
//  - it tracks only `{user_id, proof, lat?, lng?}`, where proof is a presence ticket
//    (functions/presence-ticket) renewed at two thirds of its lifetime;
//  - it never makes more than 5 presence calls per 30 s on a channel (the hosted per-client
//    limit closes the channel on the 6th): location updates wait for a free call and coalesce,
//    the newest wins;
//  - it re-tracks after every (re)join.
//
//   const realtime = new RealtimeService(supabase);
//   const me = await realtime.trackPresence(userId, { lat, lng });
//   await me.update({ lat, lng }); await me.unsubscribe(); await realtime.close();

import type { RealtimeChannel, SupabaseClient } from "@supabase/supabase-js";
import { type PresenceTicket, SltrApi } from "./api.ts";
import type { Database } from "./database.types.ts";
import { jitteredBackoffMs } from "./reconnect.ts";

/** Presence: signed-in users track themselves here, or on the shard online-users:<k> their
 * presence ticket names (private; only the bridges read them). */
export const PRESENCE_TOPIC = "online-users";
/** The old global topic: every change in the world, once a minute. Off by default
 * (sltr.presence_global_broadcast); watchStatus() replaces it. */
export const STATUS_TOPIC = "presence:changes";
export const STATUS_EVENT = "status_changes";

/** A signed-in user's private inbox: the status changes of the users they watch. */
export const inboxTopic = (userId: string) => `presence:user:${userId}`;

/** Screen lists expire 10 minutes after the last watch_presence call; renew well before. */
export const WATCH_RENEW_MS = 5 * 60_000;
/** watch_presence takes at most this many ids. */
export const MAX_WATCHED = 1000;

/** Hosted Realtime's per-channel client presence limit (track and untrack calls). */
export const HOSTED_PRESENCE_LIMIT = { maxCalls: 5, windowMs: 30_000 };

export type ChannelStatus = "JOINING" | "SUBSCRIBED" | "TIMED_OUT" | "CLOSED" | "CHANNEL_ERROR";

/** One user's new status. Never a location. */
export interface StatusChange {
  user_id: string;
  is_online: boolean;
  last_seen_at: string | null;
}

export interface Location {
  lat: number;
  lng: number;
}

export interface Subscription {
  readonly topic: string;
  unsubscribe(): Promise<void>;
}

/** A screen's list of users to watch (the nearby grid, a chat list, an open profile). */
export interface WatchHandle {
  /** Resolves with how many users the caller watches in all (screens and favorites). */
  readonly ready: Promise<number>;
  /** The screen now shows these users instead. */
  update(userIds: string[]): Promise<number>;
  /** The screen closed. */
  stop(): Promise<void>;
}

export interface PresenceTracking extends Subscription {
  /** Tracks a new location (or none), e.g. when the device moved. Resolves once the server
   * has it (this or a newer one); several updates in a burst are sent as the newest. */
  update(location?: Location | null): Promise<void>;
}

export interface SubscribeOptions {
  /** Private channels are authorized by RLS on realtime.messages (default true). */
  private?: boolean;
  onStatus?: (status: ChannelStatus, error?: Error) => void;
}

export interface RealtimeServiceOptions {
  /** Delay before rebuilding a channel the server closed, by attempt (1, 2, ...); default
   * full jitter from 1 s to 30 s. */
  resubscribeAfterMs?: (attempt: number) => number;
  /** trackPresence()/update() reject when not tracked within this long (default 15 s). */
  trackTimeoutMs?: number;
  /** A join not answered within this long is given up and made again later (default 20 s,
   * twice realtime-js's 10: in a reconnect storm the server answers late, not never). */
  joinTimeoutMs?: number;
  /** The server's presence limit to stay under (default: hosted's 5 calls per 30 s). */
  presenceLimit?: { maxCalls: number; windowMs: number };
  /** Where presence tickets come from (default: the presence-ticket function). */
  ticket?: () => Promise<PresenceTicket>;
  /** The user's favorites, watched always, for the re-read after a (re)join (default: the
   * favorites table through the API). */
  favorites?: () => Promise<string[]>;
  /** How often an open screen's watch list is renewed (default 5 minutes; it expires in 10). */
  watchRenewMs?: number;
  log?: (msg: string, data?: unknown) => void;
  random?: () => number;
}

type Handler = (payload: Record<string, unknown>, event: string) => void;

interface Listener {
  event: string;
  handler?: Handler;
  onStatus?: (status: ChannelStatus, error?: Error) => void;
}

/** Presence calls made on the current join, to stay under the server's window. A sliding
 * window of `maxCalls` per `windowMs` is never more than the server's fixed window allows. */
class PresenceCalls {
  private calls: number[] = [];

  constructor(private readonly limit: { maxCalls: number; windowMs: number }) {}

  /** A new join is a new channel on the server, with a new window. */
  reset(): void {
    this.calls = [];
  }

  /** How long until a call may be made (0: now). */
  waitMs(now: number): number {
    // A little slack for the server's clock and the frame's way there.
    const window = this.limit.windowMs + 500;
    this.calls = this.calls.filter((t) => t > now - window);
    if (this.calls.length < this.limit.maxCalls) return 0;
    return this.calls[0] + window - now;
  }

  record(now: number): void {
    this.calls.push(now);
  }
}

interface Presence {
  userId: string;
  location?: Location | null;
  /** Bumped by every update; `sent` is the newest the server acknowledged on this join. */
  version: number;
  sent: number;
  ticket?: { value: string; renewAt: number };
  /** Moves the presence to the topic a renewed ticket names. */
  moveTo?: (topic: string) => Promise<void>;
  inflight: boolean;
  timer?: ReturnType<typeof setTimeout>;
  failures: number;
  waiters: { version: number; resolve: () => void; reject: (e: Error) => void }[];
}

interface Topic {
  name: string;
  isPrivate: boolean;
  presenceKey?: string;
  presence?: Presence;
  calls: PresenceCalls;
  channel?: RealtimeChannel;
  status: ChannelStatus;
  listeners: Set<Listener>;
  attempts: number;
  rebuildTimer?: ReturnType<typeof setTimeout>;
}

export class RealtimeService {
  private readonly topics = new Map<string, Topic>();
  /** Channels being left, by topic: a new channel for the topic waits for that. */
  private readonly leaving = new Map<string, Promise<unknown>>();
  private readonly resubscribeAfterMs: (attempt: number) => number;
  private readonly trackTimeoutMs: number;
  private readonly joinTimeoutMs: number;
  private readonly presenceLimit: { maxCalls: number; windowMs: number };
  private readonly ticket: () => Promise<PresenceTicket>;
  private readonly favorites: () => Promise<string[]>;
  private readonly watchRenewMs: number;
  private readonly api: SltrApi;
  /** The open screens' watch lists (watch()). */
  private readonly screens = new Set<{ ids: string[] }>();
  private watchTimer?: ReturnType<typeof setTimeout>;
  private watchCall: Promise<number> = Promise.resolve(0);
  private readonly log: (msg: string, data?: unknown) => void;
  private readonly random: () => number;
  private authReady?: Promise<unknown>;
  private closed = false;

  constructor(readonly supabase: SupabaseClient<Database>, options: RealtimeServiceOptions = {}) {
    this.random = options.random ?? Math.random;
    this.resubscribeAfterMs = options.resubscribeAfterMs ??
      ((n) => Math.max(100, jitteredBackoffMs(n, { baseMs: 1000, capMs: 30_000 }, this.random)));
    this.trackTimeoutMs = options.trackTimeoutMs ?? 15_000;
    this.joinTimeoutMs = options.joinTimeoutMs ?? 20_000;
    this.presenceLimit = options.presenceLimit ?? HOSTED_PRESENCE_LIMIT;
    this.api = new SltrApi(supabase);
    this.ticket = options.ticket ?? (() => this.api.presenceTicket());
    this.favorites = options.favorites ?? (() => this.api.favoriteIds());
    this.watchRenewMs = options.watchRenewMs ?? WATCH_RENEW_MS;
    this.log = options.log ?? (() => {});
  }

  /**
   * Broadcasts on `topic` whose event is `event` ("*": every event). The first subscription to
   * a topic joins its channel; later ones share it.
   */
  subscribe(
    topic: string,
    event: string,
    handler: Handler,
    options: SubscribeOptions = {},
  ): Subscription {
    const listener: Listener = { event, handler, onStatus: options.onStatus };
    this.attach(topic, listener, { isPrivate: options.private ?? true });
    return { topic, unsubscribe: () => this.detach(topic, listener) };
  }

  /** Status changes of users, one call per flush batch. */
  onStatusChanges(
    handler: (changes: StatusChange[]) => void,
    options: SubscribeOptions = {},
  ): Subscription {
    return this.subscribe(STATUS_TOPIC, STATUS_EVENT, (payload) => {
      const changes = payload.changes;
      if (Array.isArray(changes)) handler(changes as StatusChange[]);
    }, options);
  }

  /**
   * The status changes of everyone the user watches (favorites and open screens), on their
   * private inbox, as they happen. After every (re)join the current status of everyone watched
   * is read once (get_online_users_batch) and delivered too, so nothing is missed across a
   * reconnect.
   */
  watchStatus(
    handler: (changes: StatusChange[]) => void,
    options: SubscribeOptions = {},
  ): Subscription {
    let cancelled = false;
    let inner: Subscription | undefined;
    const deliver = (changes: StatusChange[]) => {
      if (changes.length === 0 || cancelled) return;
      try {
        handler(changes);
      } catch (e) {
        this.log("a status handler threw", e);
      }
    };
    const ready = this.userId().then((me) => {
      if (cancelled) return;
      const topic = inboxTopic(me);
      const listener: Listener = {
        event: STATUS_EVENT,
        handler: (payload) => {
          if (Array.isArray(payload.changes)) deliver(payload.changes as StatusChange[]);
        },
        onStatus: (status, error) => {
          options.onStatus?.(status, error);
          if (status === "SUBSCRIBED") {
            void this.reread().then(deliver, (e) => this.log("re-read failed", e));
          }
        },
      };
      this.attach(topic, listener, { isPrivate: true });
      inner = { topic, unsubscribe: () => this.detach(topic, listener) };
    });
    return {
      get topic() {
        return inner?.topic ?? "";
      },
      unsubscribe: async () => {
        cancelled = true;
        await ready.catch(() => {});
        await inner?.unsubscribe();
      },
    };
  }

  /**
   * Watches the users a screen shows now. Every open screen's list goes to the server as one
   * list (watch_presence replaces the previous one), renewed every 5 minutes while any screen
   * is open, so the server stops pushing 10 minutes after the app vanished.
   */
  watch(userIds: string[]): WatchHandle {
    const screen = { ids: [...userIds] };
    this.screens.add(screen);
    return {
      ready: this.sendWatchList(),
      update: (next) => {
        screen.ids = [...next];
        return this.sendWatchList();
      },
      stop: async () => {
        if (this.screens.delete(screen)) await this.sendWatchList().catch(() => 0);
      },
    };
  }

  /** The ids on every open screen, each once. */
  private watched(): string[] {
    const all = new Set<string>();
    for (const s of this.screens) for (const id of s.ids) all.add(id);
    return [...all];
  }

  private sendWatchList(): Promise<number> {
    clearTimeout(this.watchTimer);
    const ids = this.watched();
    // One call at a time, in order: the last list sent is the one the server keeps.
    this.watchCall = this.watchCall.catch(() => 0).then(() => this.api.watchPresence(ids));
    if (this.screens.size > 0) {
      this.watchTimer = setTimeout(
        () => void this.sendWatchList().catch(() => 0),
        this.watchRenewMs,
      );
    }
    return this.watchCall;
  }

  /** The current status of everyone watched, as changes. */
  private async reread(): Promise<StatusChange[]> {
    const ids = new Set([...this.watched(), ...(await this.favorites().catch(() => []))]);
    if (ids.size === 0) return [];
    const statuses = await this.api.getOnlineUsersBatch([...ids]);
    return statuses.map((s) => ({
      user_id: s.user_id,
      is_online: s.is_online,
      last_seen_at: s.last_seen_at,
    }));
  }

  /** The signed-in user's id, from the token realtime-js joins with. */
  private async userId(): Promise<string> {
    await (this.authReady ??= this.supabase.realtime.setAuth().catch(() => {}));
    const token = this.supabase.realtime.accessTokenValue ?? "";
    try {
      const claims = JSON.parse(
        atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")),
      ) as { sub?: unknown; role?: unknown };
      if (typeof claims.sub === "string" && claims.role === "authenticated") return claims.sub;
    } catch { /* not a JWT */ }
    throw new Error("watchStatus needs a signed-in user");
  }

  /**
   * Marks this device of `userId` present on its presence topic, with its location, until
   * unsubscribe(). The topic is the one its presence ticket names (online-users, or the user's
   * shard online-users:<k> when presence is sharded); if a renewed ticket names another (the
   * project was resharded), the presence moves there: it leaves the old topic, then tracks on
   * the new one. Several devices of one user are fine (the bridge reports the user offline
   * when the last one leaves). The location goes to the presence bridge only: users cannot
   * read a presence topic's presence.
   */
  async trackPresence(userId: string, location?: Location | null): Promise<PresenceTracking> {
    const listener: Listener = { event: "" };
    const first = await this.firstTicket();
    let topic = first.topic ?? PRESENCE_TOPIC;
    const p: Presence = {
      userId,
      location,
      version: 1,
      sent: 0,
      ticket: this.held(first),
      inflight: false,
      failures: 0,
      waiters: [],
    };
    const current = () => {
      const entry = this.topics.get(topic);
      return entry?.presence === p ? entry : undefined;
    };
    p.moveTo = async (next: string) => {
      const old = current();
      if (!old) return;
      this.log(`presence moves from ${topic} to ${next}`);
      old.presence = undefined;
      clearTimeout(p.timer);
      p.sent = 0;
      // Leave first: a bridge holding the old topic reports the leave before another reports
      // the join, so the newest event (the one Postgres keeps) is the join.
      await this.untrackIfShared(old);
      await this.detach(topic, listener);
      topic = next;
      const entry = this.attach(next, listener, { isPrivate: true, presenceKey: userId });
      entry.presence = p;
      void this.pump(entry);
    };
    const entry = this.attach(topic, listener, { isPrivate: true, presenceKey: userId });
    entry.presence = p;
    const tracked = this.tracked(entry, 1);
    void this.pump(entry);
    try {
      await tracked;
    } catch (e) {
      await this.detach(topic, listener);
      throw e;
    }
    return {
      get topic() {
        return topic;
      },
      update: (next) => {
        const entry = current();
        if (!entry) return Promise.reject(new Error("presence is not tracked"));
        p.location = next;
        const done = this.tracked(entry, ++p.version);
        void this.pump(entry);
        return done;
      },
      unsubscribe: async () => {
        const entry = current();
        if (entry?.listeners.has(listener)) {
          this.stopPresence(entry, new Error("unsubscribed"));
          await this.untrackIfShared(entry);
        }
        await this.detach(topic, listener);
      },
    };
  }

  /** Leaving the channel ends a presence; an untrack is needed only when the channel stays for
   * another subscriber, and it counts against the limit like a track. */
  private async untrackIfShared(entry: Topic): Promise<void> {
    if (entry.listeners.size > 1 && entry.status === "SUBSCRIBED") {
      entry.calls.record(performance.now());
      await entry.channel?.untrack().catch(() => "error");
    }
  }

  /** The first ticket (it names the topic to join), retried as pump() retries a renewal
   * (jittered, from 1 s) until trackTimeoutMs is spent. */
  private async firstTicket(): Promise<PresenceTicket> {
    const deadline = performance.now() + this.trackTimeoutMs;
    for (let attempt = 1;; attempt++) {
      try {
        return await this.ticket();
      } catch (e) {
        const backoff = { baseMs: 1000, capMs: 30_000 };
        const waitMs = Math.max(250, jitteredBackoffMs(attempt, backoff, this.random));
        if (performance.now() + waitMs > deadline) throw e;
        this.log("presence ticket failed", e);
        await new Promise((resolve) => setTimeout(resolve, waitMs));
      }
    }
  }

  private held(t: PresenceTicket): Presence["ticket"] {
    return { value: t.ticket, renewAt: performance.now() + t.expires_in * 1000 * 2 / 3 };
  }

  /** The current status of a topic's channel (undefined: nobody subscribes to it). */
  status(topic: string): ChannelStatus | undefined {
    return this.topics.get(topic)?.status;
  }

  /** Topics with a channel now, for diagnostics. */
  get activeTopics(): string[] {
    return [...this.topics.keys()];
  }

  /** Leaves every channel and closes the socket. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.watchTimer);
    this.screens.clear();
    const entries = [...this.topics.values()];
    this.topics.clear();
    for (const e of entries) {
      clearTimeout(e.rebuildTimer);
      this.stopPresence(e, new Error("closed"));
    }
    await Promise.all(entries.map((e) => e.channel && this.supabase.removeChannel(e.channel)));
    await Promise.all(this.leaving.values());
    await this.supabase.realtime.disconnect();
  }

  // ---- channels ----

  private attach(
    name: string,
    listener: Listener,
    config: { isPrivate: boolean; presenceKey?: string },
  ): Topic {
    if (this.closed) throw new Error("RealtimeService is closed");
    let entry = this.topics.get(name);
    if (!entry) {
      entry = {
        name,
        isPrivate: config.isPrivate,
        presenceKey: config.presenceKey,
        calls: new PresenceCalls(this.presenceLimit),
        status: "JOINING",
        listeners: new Set(),
        attempts: 0,
      };
      this.topics.set(name, entry);
      entry.listeners.add(listener);
      void this.open(entry);
      return entry;
    }
    entry.listeners.add(listener);
    if (config.presenceKey && config.presenceKey !== entry.presenceKey) {
      // Presence needs the key in the join: the channel is joined again with it.
      entry.presenceKey = config.presenceKey;
      void this.rebuild(entry, 0);
    }
    return entry;
  }

  private async detach(name: string, listener: Listener): Promise<void> {
    const entry = this.topics.get(name);
    if (!entry || !entry.listeners.delete(listener)) return;
    if (entry.listeners.size > 0) return;
    // The last one: leave the channel.
    this.topics.delete(name);
    clearTimeout(entry.rebuildTimer);
    this.stopPresence(entry, new Error("unsubscribed"));
    const channel = entry.channel;
    entry.channel = undefined;
    if (channel) await this.remove(name, channel);
  }

  private remove(name: string, channel: RealtimeChannel): Promise<unknown> {
    const left = this.supabase.removeChannel(channel).catch(() => "error")
      .finally(() => {
        if (this.leaving.get(name) === left) this.leaving.delete(name);
      });
    this.leaving.set(name, left);
    return left;
  }

  /**
   * A fresh token from the client's token source before a join again: realtime-js joins with
   * the token it holds and refreshes only on heartbeats, so a channel the server closed at token
   * expiry would be joined again with the expired token (and refused) until the next one.
   */
  private async refreshToken(): Promise<void> {
    const rt = this.supabase.realtime as { accessToken?: unknown; setAuth(): Promise<void> };
    if (typeof rt.accessToken === "function") await rt.setAuth().catch(() => {});
  }

  private async open(entry: Topic): Promise<void> {
    // The first join must carry the user's token, not the anon key: realtime-js fetches it
    // asynchronously and would otherwise join before it has it (and be refused).
    await (this.authReady ??= this.supabase.realtime.setAuth().catch(() => {}));
    // realtime-js has one channel per topic: wait until an old one for this topic is gone.
    await this.leaving.get(entry.name);
    if (this.topics.get(entry.name) !== entry || entry.channel) return;
    const channel = this.supabase.channel(entry.name, {
      config: {
        private: entry.isPrivate,
        broadcast: { self: false, ack: false },
        presence: { key: entry.presenceKey ?? "", enabled: false },
      },
    });
    channel.on("broadcast", { event: "*" }, (message: { event: string; payload?: unknown }) => {
      if (entry.channel !== channel) return;
      const payload = (message.payload ?? {}) as Record<string, unknown>;
      for (const l of entry.listeners) {
        if (!l.handler || (l.event !== "*" && l.event !== message.event)) continue;
        try {
          l.handler(payload, message.event);
        } catch (e) {
          this.log("a broadcast handler threw", e);
        }
      }
    });
    entry.channel = channel;
    entry.status = "JOINING";
    channel.subscribe(
      (status, error) => this.onStatus(entry, channel, status, error),
      this.joinTimeoutMs,
    );
  }

  private onStatus(entry: Topic, channel: RealtimeChannel, status: string, error?: Error): void {
    if (entry.channel !== channel) return; // an old channel of this topic
    entry.status = status as ChannelStatus;
    this.log(`channel ${entry.name}: ${status}`, error);
    for (const l of entry.listeners) l.onStatus?.(entry.status, error);
    if (status === "SUBSCRIBED") {
      entry.attempts = 0;
      // A new join: a new presence on the server (nothing tracked yet) and a new call window.
      entry.calls.reset();
      if (entry.presence) {
        entry.presence.sent = 0;
        void this.pump(entry);
      }
    } else if (
      (status === "CLOSED" || status === "TIMED_OUT") && this.topics.get(entry.name) === entry
    ) {
      // Closed by the server (an expired token, the presence limit) while still wanted, or no
      // answer to the join in time: join a new channel after a jittered delay. On a timeout
      // realtime-js would join again by itself after 1, 2, 5, then every 10 s, all clients in
      // step, while the server is still working through their first joins (a storm that never
      // ends); the old channel is left first, so a late answer to it changes nothing.
      entry.attempts++;
      void this.rebuild(entry, this.resubscribeAfterMs(entry.attempts));
    }
  }

  private rebuild(entry: Topic, delayMs: number): Promise<void> {
    clearTimeout(entry.rebuildTimer);
    const old = entry.channel;
    entry.channel = undefined;
    entry.status = "JOINING";
    if (old) void this.remove(entry.name, old);
    return new Promise((resolve) => {
      entry.rebuildTimer = setTimeout(() => {
        entry.rebuildTimer = undefined;
        void this.refreshToken().then(() => this.open(entry)).then(resolve);
      }, delayMs);
    });
  }

  // ---- presence ----

  /** Resolves once the server acknowledged a track of `version` or newer. */
  private tracked(entry: Topic, version: number): Promise<void> {
    const p = entry.presence!;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        p.waiters = p.waiters.filter((w) => w !== waiter);
        reject(new Error(`presence not tracked on ${entry.name} (channel ${entry.status})`));
      }, this.trackTimeoutMs);
      const waiter = {
        version,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      p.waiters.push(waiter);
    });
  }

  private stopPresence(entry: Topic, reason: Error): void {
    const p = entry.presence;
    if (!p) return;
    entry.presence = undefined;
    clearTimeout(p.timer);
    for (const w of p.waiters.splice(0)) w.reject(reason);
  }

  private schedule(entry: Topic, p: Presence, delayMs: number): void {
    clearTimeout(p.timer);
    p.timer = setTimeout(() => void this.pump(entry), Math.max(0, delayMs));
  }

  /**
   * Sends the newest wanted presence when the channel is joined and the limit has room, with a
   * valid ticket; one call at a time. Re-runs itself when the limit frees a call, when the
   * ticket is due for renewal, and after a failure (jittered backoff).
   */
  private async pump(entry: Topic): Promise<void> {
    const p = entry.presence;
    const channel = entry.channel;
    if (!p || p.inflight || !channel || entry.status !== "SUBSCRIBED") return;
    const now = performance.now();
    // (A timer may fire a little early: within 50 ms of the renewal counts as due.)
    const renew = !p.ticket || now >= p.ticket.renewAt - 50;
    if (p.sent >= p.version && !renew) {
      this.schedule(entry, p, p.ticket!.renewAt - now);
      return;
    }
    const wait = entry.calls.waitMs(now);
    if (wait > 0) {
      this.schedule(entry, p, wait);
      return;
    }
    p.inflight = true;
    let retryMs: number | undefined;
    try {
      if (renew) {
        const t = await this.ticket();
        p.ticket = this.held(t);
        const topic = t.topic ?? PRESENCE_TOPIC;
        if (topic !== entry.name && entry.presence === p) {
          void p.moveTo?.(topic);
          return;
        }
      }
      if (entry.presence !== p || entry.channel !== channel || entry.status !== "SUBSCRIBED") {
        return;
      }
      const version = p.version;
      const payload = { user_id: p.userId, proof: p.ticket!.value, ...(p.location ?? {}) };
      entry.calls.record(performance.now());
      const result = await channel.track(payload);
      if (entry.presence !== p || entry.channel !== channel) return;
      if (result === "ok") {
        p.failures = 0;
        p.sent = version;
        for (const w of p.waiters.filter((w) => w.version <= version)) w.resolve();
        p.waiters = p.waiters.filter((w) => w.version > version);
      } else {
        this.log(`presence track on ${entry.name}: ${result}`);
        retryMs = jitteredBackoffMs(++p.failures, { baseMs: 1000, capMs: 30_000 }, this.random);
      }
    } catch (e) {
      this.log("presence ticket or track failed", e);
      retryMs = jitteredBackoffMs(++p.failures, { baseMs: 1000, capMs: 30_000 }, this.random);
    } finally {
      p.inflight = false;
    }
    if (entry.presence !== p) return;
    if (retryMs !== undefined) this.schedule(entry, p, Math.max(250, retryMs));
    else if (p.sent < p.version) void this.pump(entry);
    else if (p.ticket) this.schedule(entry, p, p.ticket.renewAt - performance.now());
  }
}
