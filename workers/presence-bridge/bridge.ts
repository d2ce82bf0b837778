// The presence bridge: Supabase Realtime presence (who is in the channel online-users, and
// where) in, signed batches to functions/presence-webhook out. Every piece is a plain class
// with its clock, randomness and transport injected, so tests drive it without a Realtime
// server; main.ts wires them to supabase-js and the environment.
//
//   PresenceTracker  realtime-js presence join/leave/sync → {user_id, status, at, lat?, lng?}
//   EventBuffer      pending events, in order; under pressure coalesces per user, never a leave
//   WebhookSender    one signed POST, and what to do with its answer
//   PresenceBridge   flushes every 250 ms or 500 events, retries with capped jittered backoff
//   RealtimePresenceSource  joins the channel with supabase-js and feeds the tracker

import type { RealtimeChannel, SupabaseClient } from "@supabase/supabase-js";

export interface PresenceEvent {
  user_id: string;
  status: "online" | "offline";
  /** When the bridge saw it (RFC 3339, UTC). */
  at: string;
  lat?: number;
  lng?: number;
}

export type Logger = (
  level: "debug" | "info" | "warn" | "error",
  msg: string,
  data?: object,
) => void;

/** JSON lines on stdout/stderr, what container platforms collect. */
export const jsonLogger: Logger = (level, msg, data = {}) => {
  const line = JSON.stringify({
    level,
    msg,
    service: "presence-bridge",
    time: new Date().toISOString(),
    ...data,
  });
  if (level === "error" || level === "warn") console.error(line);
  else if (level !== "debug") console.log(line);
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ---------------------------------------------------------------------------------------------
// Presence → events

/** One device's presence as realtime-js reports it (the payload the client tracked). */
export interface PresenceMeta {
  presence_ref?: string;
  user_id?: unknown;
  lat?: unknown;
  lng?: unknown;
  [key: string]: unknown;
}

function location(meta: PresenceMeta | undefined): { lat: number; lng: number } | undefined {
  const lat = meta?.lat;
  const lng = meta?.lng;
  if (typeof lat !== "number" || typeof lng !== "number") return undefined;
  if (!Number.isFinite(lat) || !Number.isFinite(lng)) return undefined;
  if (lat < -90 || lat > 90 || lng < -180 || lng > 180) return undefined;
  return { lat, lng };
}

/**
 * Turns presence callbacks into events. The presence key is the user id (clients track with
 * `config.presence.key = user id`); a user with several devices has several metas under one
 * key: online when the first arrives (and again, with the new location, whenever one is
 * tracked anew), offline only when the last one leaves. Keys that are not uuids, or whose
 * payload names another user, are ignored: they cannot be anyone's presence.
 */
export class PresenceTracker {
  /** Users present now, with their newest location. */
  readonly online = new Map<string, { lat: number; lng: number } | undefined>();
  ignored = 0;

  constructor(
    private readonly emit: (event: PresenceEvent) => void,
    private readonly now: () => Date = () => new Date(),
  ) {}

  private userId(key: string, metas: PresenceMeta[]): string | undefined {
    if (!UUID.test(key)) return undefined;
    const id = key.toLowerCase();
    for (const m of metas) {
      if (typeof m.user_id === "string" && m.user_id.toLowerCase() !== id) return undefined;
    }
    return id;
  }

  join(key: string, newPresences: PresenceMeta[]): void {
    const id = this.userId(key, newPresences);
    if (!id) {
      this.ignored++;
      return;
    }
    const where = location(newPresences[newPresences.length - 1]) ?? this.online.get(id);
    this.online.set(id, where);
    this.emit({ user_id: id, status: "online", at: this.now().toISOString(), ...where });
  }

  leave(key: string, currentPresences: PresenceMeta[]): void {
    if (currentPresences.length > 0) return; // another device of the same user is still here
    const id = UUID.test(key) ? key.toLowerCase() : undefined;
    if (!id || !this.online.has(id)) return;
    this.online.delete(id);
    this.emit({ user_id: id, status: "offline", at: this.now().toISOString() });
  }

  /** Everyone present, as fresh online events: the periodic refresh and the resync. */
  snapshot(): PresenceEvent[] {
    const at = this.now().toISOString();
    return [...this.online.keys()].map((user_id) => ({ user_id, status: "online", at }));
  }
}

// ---------------------------------------------------------------------------------------------
// The buffer

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

// ---------------------------------------------------------------------------------------------
// Signing and sending

/** `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, what the webhook verifies. */
export async function signature(secret: string, body: string, nowSeconds: number): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(
    await crypto.subtle.sign("HMAC", key, encoder.encode(`${nowSeconds}.${body}`)),
  );
  const hex = Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
  return `t=${nowSeconds},v1=${hex}`;
}

/** What to do with a batch after one attempt. */
export type Outcome =
  | { kind: "sent"; accepted: number; ignored: number }
  /** Try the same events again later (after retryAfterMs when the server said so). */
  | { kind: "retry"; reason: string; retryAfterMs?: number }
  /** The webhook refuses this batch as a whole (400, 413): split it to find what it refuses. */
  | { kind: "split"; reason: string };

export interface SenderOptions {
  url: string;
  secret: string;
  fetch?: typeof fetch;
  nowMs?: () => number;
  timeoutMs?: number;
}

/** Parses Retry-After (seconds or an HTTP date) into milliseconds from now. */
export function retryAfterMs(value: string | null, nowMs: number): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - nowMs);
}

export class WebhookSender {
  private readonly fetch: typeof fetch;
  private readonly nowMs: () => number;

  constructor(private readonly options: SenderOptions) {
    this.fetch = options.fetch ?? fetch;
    this.nowMs = options.nowMs ?? Date.now;
  }

  /** One attempt. Signs at send time, so a retry is never refused as a stale signature. */
  async send(events: PresenceEvent[]): Promise<Outcome> {
    const body = JSON.stringify({ events });
    const header = await signature(this.options.secret, body, Math.floor(this.nowMs() / 1000));
    let res: Response;
    try {
      res = await this.fetch(this.options.url, {
        method: "POST",
        headers: { "content-type": "application/json", "x-sltr-signature": header },
        body,
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 10_000),
      });
    } catch (e) {
      return { kind: "retry", reason: `network: ${(e as Error)?.message ?? String(e)}` };
    }
    const text = await res.text().catch(() => "");
    if (res.status >= 200 && res.status < 300) {
      let result: { accepted?: unknown; ignored?: unknown } = {};
      try {
        result = JSON.parse(text);
      } catch { /* a 2xx is a 2xx */ }
      return {
        kind: "sent",
        accepted: typeof result.accepted === "number" ? result.accepted : events.length,
        ignored: typeof result.ignored === "number" ? result.ignored : 0,
      };
    }
    const reason = `${res.status} ${text.slice(0, 300)}`;
    // 400: something in the batch is refused; 413: too large. Retrying it whole cannot help.
    if (res.status === 400 || res.status === 413) return { kind: "split", reason };
    // Everything else is retried: 5xx/503 and 429 (with Retry-After), 408, and 401/403/404,
    // which are deployment problems (secret, clock, function not deployed) an operator fixes;
    // meanwhile nothing is dropped.
    return {
      kind: "retry",
      reason,
      retryAfterMs: retryAfterMs(res.headers.get("retry-after"), this.nowMs()),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The bridge

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

/** Exponential backoff with full jitter, capped: uniform in [0, min(max, base * 2^attempt)]. */
export function backoffMs(attempt: number, o: BackoffOptions, random = Math.random): number {
  const ceiling = Math.min(o.maxMs, o.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling * random());
}

export interface BridgeOptions {
  sender: Pick<WebhookSender, "send">;
  log?: Logger;
  /** Flush at least this often (ms). */
  flushIntervalMs?: number;
  /** Flush as soon as this many events are pending. */
  flushAtEvents?: number;
  /** Per request, as the webhook accepts: 1,000 events, 256 KiB. */
  maxBatchEvents?: number;
  maxBatchBytes?: number;
  /** Pending events kept during an outage before shedding (see EventBuffer). */
  maxBufferedEvents?: number;
  backoff?: BackoffOptions;
  /** A Retry-After longer than this is capped (a broken header must not stall us for hours). */
  maxRetryAfterMs?: number;
  /** Re-send everyone present this often, so expire_stale_presence never expires them. */
  refreshIntervalMs?: number;
  random?: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export interface BridgeStats {
  received: number;
  sent: number;
  accepted: number;
  ignored: number;
  requests: number;
  retries: number;
  dropped: number;
  shedSuperseded: number;
  shedOnline: number;
  pending: number;
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}

/**
 * Buffers events and delivers them in order, one request at a time: every flushIntervalMs, or
 * as soon as flushAtEvents are pending. A failed request is retried (the same events, re-signed)
 * after a capped, jittered exponential backoff, or after the server's Retry-After; meanwhile new
 * events wait in the buffer. stop() delivers what is pending before it resolves.
 */
export class PresenceBridge {
  readonly buffer: EventBuffer;
  readonly tracker: PresenceTracker;
  private readonly o: Required<Omit<BridgeOptions, "log" | "sender">>;
  private readonly log: Logger;
  private flushTimer?: ReturnType<typeof setInterval>;
  private refreshTimer?: ReturnType<typeof setInterval>;
  private pumping?: Promise<void>;
  private attempt = 0;
  /** Events per request: maxBatchEvents, smaller only while isolating a refused event. */
  private batchLimit: number;
  private resyncWanted = false;
  /** Aborted to cut a backoff short when stop() gives up waiting. */
  private readonly abort = new AbortController();
  private readonly counts = {
    received: 0,
    sent: 0,
    accepted: 0,
    ignored: 0,
    requests: 0,
    retries: 0,
    dropped: 0,
  };

  constructor(private readonly options: BridgeOptions, now: () => Date = () => new Date()) {
    this.o = {
      flushIntervalMs: options.flushIntervalMs ?? 250,
      flushAtEvents: options.flushAtEvents ?? 500,
      maxBatchEvents: options.maxBatchEvents ?? 1000,
      maxBatchBytes: options.maxBatchBytes ?? 256 * 1024,
      maxBufferedEvents: options.maxBufferedEvents ?? 200_000,
      backoff: options.backoff ?? { baseMs: 250, maxMs: 30_000 },
      maxRetryAfterMs: options.maxRetryAfterMs ?? 60_000,
      refreshIntervalMs: options.refreshIntervalMs ?? 60_000,
      random: options.random ?? Math.random,
      sleep: options.sleep ?? abortableSleep,
    };
    this.batchLimit = this.o.maxBatchEvents;
    this.log = options.log ?? jsonLogger;
    this.buffer = new EventBuffer({
      maxEvents: this.o.maxBufferedEvents,
      onLostOnline: (count) => {
        this.resyncWanted = true;
        this.log("warn", "buffer full: dropped online events, will resync when delivered", {
          count,
        });
      },
    });
    this.tracker = new PresenceTracker((e) => this.enqueue([e]), now);
  }

  start(): void {
    this.flushTimer ??= setInterval(() => this.flush(), this.o.flushIntervalMs);
    if (this.o.refreshIntervalMs > 0) {
      this.refreshTimer ??= setInterval(() => this.refresh(), this.o.refreshIntervalMs);
    }
  }

  enqueue(events: PresenceEvent[]): void {
    // Late callbacks during shutdown still count: they are delivered with the rest.
    this.counts.received += events.length;
    this.buffer.push(events);
    if (this.buffer.size >= this.o.flushAtEvents) void this.flush();
  }

  /** Re-sends everyone present (they are still online: last_seen_at moves on). */
  refresh(): void {
    const events = this.tracker.snapshot();
    if (events.length) this.enqueue(events);
  }

  /** Starts delivering what is pending unless a delivery is running; resolves when it ends. */
  flush(): Promise<void> {
    this.pumping ??= this.pump().finally(() => {
      this.pumping = undefined;
    });
    return this.pumping;
  }

  private async pump(): Promise<void> {
    while (this.buffer.size > 0 && !this.abort.signal.aborted) {
      const batch = this.buffer.take(this.batchLimit, this.o.maxBatchBytes);
      this.counts.requests++;
      const outcome = await this.options.sender.send(batch);
      if (outcome.kind === "sent") {
        this.attempt = 0;
        this.batchLimit = this.o.maxBatchEvents;
        this.counts.sent += batch.length;
        this.counts.accepted += outcome.accepted;
        this.counts.ignored += outcome.ignored;
        this.log("debug", "batch delivered", {
          events: batch.length,
          accepted: outcome.accepted,
          ignored: outcome.ignored,
        });
        if (this.resyncWanted) {
          this.resyncWanted = false;
          this.refresh();
        }
        continue;
      }
      if (outcome.kind === "split") {
        if (batch.length > 1) {
          // Halve until the refused event is alone; the others go through meanwhile.
          this.buffer.unshift(batch);
          this.batchLimit = Math.ceil(batch.length / 2);
          this.log("warn", "webhook refused a batch; splitting it", {
            events: batch.length,
            reason: outcome.reason,
          });
        } else {
          this.counts.dropped++;
          this.log("error", "webhook refused an event; dropped", {
            event: batch[0],
            reason: outcome.reason,
          });
        }
        continue;
      }
      // Retry: the same events go back in front, and we wait.
      this.buffer.unshift(batch);
      this.counts.retries++;
      const jittered = backoffMs(this.attempt++, this.o.backoff, this.o.random);
      const delay = outcome.retryAfterMs !== undefined
        ? Math.min(this.o.maxRetryAfterMs, Math.max(outcome.retryAfterMs, jittered))
        : jittered;
      this.log("warn", "delivery failed; retrying", {
        reason: outcome.reason,
        attempt: this.attempt,
        delay_ms: delay,
        pending: this.buffer.size,
      });
      await this.o.sleep(delay, this.abort.signal);
    }
  }

  /**
   * Graceful shutdown: no new timers, then everything pending is delivered (retrying as
   * usual) for up to graceMs; whatever is left then is logged with its count.
   */
  async stop(graceMs = 10_000): Promise<void> {
    clearInterval(this.flushTimer);
    clearInterval(this.refreshTimer);
    this.flushTimer = this.refreshTimer = undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), graceMs);
    });
    const drained = (async () => {
      while ((this.buffer.size > 0 || this.pumping) && !this.abort.signal.aborted) {
        await this.flush();
      }
      return "done" as const;
    })();
    const result = await Promise.race([drained, deadline]);
    clearTimeout(timer);
    if (result === "late") {
      this.abort.abort();
      await this.pumping;
      this.log("error", "shutdown: undelivered events", { pending: this.buffer.size });
    }
  }

  stats(): BridgeStats {
    return {
      ...this.counts,
      shedSuperseded: this.buffer.shedSuperseded,
      shedOnline: this.buffer.shedOnline,
      pending: this.buffer.size,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The Realtime side

/**
 * Joins the presence channel as service_role (which Realtime Authorization lets see presence,
 * unlike signed-in users) and feeds join/leave into the tracker. realtime-js reconnects and
 * rejoins by itself; after a rejoin Realtime sends the full presence state again, and
 * realtime-js turns the difference into join/leave callbacks, so users who left while the
 * bridge was away are reported offline then.
 */
export class RealtimePresenceSource {
  channel?: RealtimeChannel;
  private subscribed?: Promise<void>;

  constructor(
    private readonly client: SupabaseClient,
    private readonly topic: string,
    private readonly tracker: PresenceTracker,
    private readonly log: Logger = jsonLogger,
  ) {}

  /** Resolves once the channel is joined the first time. */
  start(): Promise<void> {
    this.subscribed ??= this.join();
    return this.subscribed;
  }

  private async join(): Promise<void> {
    // The join then carries the service key as its access token (not only the socket's apikey).
    await this.client.realtime.setAuth();
    await new Promise<void>((resolve) => {
      const channel = this.client.channel(this.topic, {
        config: { private: true, presence: { enabled: true } },
      });
      channel
        .on("presence", { event: "join" }, ({ key, newPresences }) => {
          this.tracker.join(key, newPresences as PresenceMeta[]);
        })
        .on("presence", { event: "leave" }, ({ key, currentPresences }) => {
          this.tracker.leave(key, currentPresences as PresenceMeta[]);
        })
        .on("presence", { event: "sync" }, () => {
          this.log("debug", "presence synced", { online: this.tracker.online.size });
        })
        .subscribe((status, err) => {
          const level = status === "SUBSCRIBED" ? "info" : "warn";
          this.log(level, `channel ${this.topic}: ${status}`, err ? { error: err.message } : {});
          if (status === "SUBSCRIBED") resolve();
        });
      this.channel = channel;
    });
  }

  /**
   * Leaves the channel without reporting anyone offline: they are still online, and another
   * bridge (or this one, restarted) takes over.
   */
  async stop(): Promise<void> {
    if (this.channel) await this.client.removeChannel(this.channel);
    this.channel = undefined;
  }
}
