// RealtimeService: the app's one door to Supabase Realtime. One socket (the SupabaseClient's
// RealtimeClient), any number of subscriptions: subscriptions to the same topic share one
// channel (reference counted: the channel is joined on the first and left after the last
// unsubscribe), channels are rejoined after reconnects (realtime-js) and rebuilt if the server
// closes them (here), and presence is re-tracked after every rejoin.
//
//   const realtime = new RealtimeService(supabase);
//   const sub = realtime.onStatusChanges((changes) => render(changes));
//   const me = await realtime.trackPresence(userId, { lat, lng });
//   ...; await me.update({ lat, lng }); await sub.unsubscribe(); await realtime.close();

import type { RealtimeChannel, SupabaseClient } from "@supabase/supabase-js";
import type { Database } from "./database.types.ts";

/** Presence: signed-in users track themselves here (private; only the bridge reads it). */
export const PRESENCE_TOPIC = "online-users";
/** Status changes, one broadcast per presence flush (private; signed-in users receive it). */
export const STATUS_TOPIC = "presence:changes";
export const STATUS_EVENT = "status_changes";

export type ChannelStatus = "JOINING" | "SUBSCRIBED" | "TIMED_OUT" | "CLOSED" | "CHANNEL_ERROR";

/** One user's new status, as broadcast after a flush. Never a location. */
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

export interface PresenceTracking extends Subscription {
  /** Tracks a new location (or none), e.g. when the device moved. */
  update(location?: Location | null): Promise<void>;
}

export interface SubscribeOptions {
  /** Private channels are authorized by RLS on realtime.messages (default true). */
  private?: boolean;
  onStatus?: (status: ChannelStatus, error?: Error) => void;
}

export interface RealtimeServiceOptions {
  /** Delay before rebuilding a channel the server closed, by attempt (1, 2, ...). */
  resubscribeAfterMs?: (attempt: number) => number;
  /** trackPresence()/update() reject when not tracked within this long (default 15 s). */
  trackTimeoutMs?: number;
  log?: (msg: string, data?: unknown) => void;
}

type Handler = (payload: Record<string, unknown>, event: string) => void;

interface Listener {
  event: string;
  handler?: Handler;
  onStatus?: (status: ChannelStatus, error?: Error) => void;
}

interface Topic {
  name: string;
  isPrivate: boolean;
  presenceKey?: string;
  /** The presence payload to track after every (re)join, while someone tracks. */
  tracked?: Record<string, unknown>;
  channel?: RealtimeChannel;
  status: ChannelStatus;
  listeners: Set<Listener>;
  attempts: number;
  rebuildTimer?: ReturnType<typeof setTimeout>;
  /** Waiters for the next successful track. */
  trackWaiters: { resolve: () => void; reject: (e: Error) => void }[];
}

export class RealtimeService {
  private readonly topics = new Map<string, Topic>();
  /** Channels being left, by topic: a new channel for the topic waits for that. */
  private readonly leaving = new Map<string, Promise<unknown>>();
  private readonly resubscribeAfterMs: (attempt: number) => number;
  private readonly trackTimeoutMs: number;
  private readonly log: (msg: string, data?: unknown) => void;
  private closed = false;

  constructor(readonly supabase: SupabaseClient<Database>, options: RealtimeServiceOptions = {}) {
    this.resubscribeAfterMs = options.resubscribeAfterMs ??
      ((n) => [250, 1000, 2000, 5000][n - 1] ?? 10_000);
    this.trackTimeoutMs = options.trackTimeoutMs ?? 15_000;
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
   * Marks this device of `userId` present in the presence channel, with its location, until
   * stop()/unsubscribe(). Several devices of one user are fine (the bridge reports the user
   * offline when the last one leaves). The location goes to the presence bridge only: users
   * cannot read this channel's presence.
   */
  async trackPresence(userId: string, location?: Location | null): Promise<PresenceTracking> {
    const listener: Listener = { event: "" };
    const entry = this.attach(PRESENCE_TOPIC, listener, { isPrivate: true, presenceKey: userId });
    const tracked = () => this.setTracked(entry, { user_id: userId, ...(location ?? {}) });
    try {
      await tracked();
    } catch (e) {
      await this.detach(PRESENCE_TOPIC, listener);
      throw e;
    }
    return {
      topic: PRESENCE_TOPIC,
      update: (next) => {
        location = next;
        return tracked();
      },
      unsubscribe: async () => {
        const current = this.topics.get(PRESENCE_TOPIC);
        if (current?.listeners.has(listener)) {
          current.tracked = undefined;
          if (current.status === "SUBSCRIBED") {
            await current.channel?.untrack().catch(() => "error");
          }
        }
        await this.detach(PRESENCE_TOPIC, listener);
      },
    };
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
    const entries = [...this.topics.values()];
    this.topics.clear();
    for (const e of entries) clearTimeout(e.rebuildTimer);
    await Promise.all(entries.map((e) => e.channel && this.supabase.removeChannel(e.channel)));
    await Promise.all(this.leaving.values());
    await this.supabase.realtime.disconnect();
  }

  // ---- internals ----

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
        status: "JOINING",
        listeners: new Set(),
        attempts: 0,
        trackWaiters: [],
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
    const channel = entry.channel;
    entry.channel = undefined;
    for (const w of entry.trackWaiters.splice(0)) w.reject(new Error("unsubscribed"));
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

  private async open(entry: Topic): Promise<void> {
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
    channel.subscribe((status, error) => this.onStatus(entry, channel, status, error));
  }

  private onStatus(entry: Topic, channel: RealtimeChannel, status: string, error?: Error): void {
    if (entry.channel !== channel) return; // an old channel of this topic
    entry.status = status as ChannelStatus;
    this.log(`channel ${entry.name}: ${status}`, error);
    for (const l of entry.listeners) l.onStatus?.(entry.status, error);
    if (status === "SUBSCRIBED") {
      entry.attempts = 0;
      if (entry.tracked) void this.track(entry, channel);
    } else if (status === "CLOSED" && this.topics.get(entry.name) === entry) {
      // Closed by the server (e.g. an expired token) while still wanted: join a new channel.
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
        void this.open(entry).then(resolve);
      }, delayMs);
    });
  }

  private setTracked(entry: Topic, payload: Record<string, unknown>): Promise<void> {
    entry.tracked = payload;
    const done = new Promise<void>((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        entry.trackWaiters = entry.trackWaiters.filter((w) => w !== waiter);
        reject(new Error(`presence not tracked on ${entry.name} (channel ${entry.status})`));
      }, this.trackTimeoutMs);
      entry.trackWaiters.push(waiter);
    });
    if (entry.channel && entry.status === "SUBSCRIBED") void this.track(entry, entry.channel);
    return done;
  }

  private async track(entry: Topic, channel: RealtimeChannel): Promise<void> {
    if (!entry.tracked) return;
    const result = await channel.track(entry.tracked);
    if (entry.channel !== channel) return;
    if (result === "ok") {
      for (const w of entry.trackWaiters.splice(0)) w.resolve();
    } else {
      this.log(`presence track on ${entry.name}: ${result}`);
      // realtime-js rejoins on errors and we track again on SUBSCRIBED; waiters keep waiting.
    }
  }
}
