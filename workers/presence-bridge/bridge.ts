// The presence bridge: Supabase Realtime presence (who is in the channel online-users, and
// where) in, signed batches to functions/presence-webhook out. Its parts, each a plain class
// with its clock, randomness and transport injected (main.ts wires them):
//
//   tracker.ts  PresenceTracker  presence join/leave → {user_id, status, at, lat?, lng?}, only
//                                for presences that carry a valid ticket for their key
//   buffer.ts   EventBuffer      pending events, in order; under pressure coalesces per user
//   sender.ts   WebhookSender    one signed POST, and what to do with its answer
//   bridge.ts   PresenceBridge   flushes every 250 ms or 500 events, retries with capped
//                                jittered backoff, re-sends everyone present every minute
//   source.ts   RealtimePresenceSource  joins the channel with supabase-js, feeds the tracker
import type { PresenceEvent } from "../../functions/_shared/presence.ts";
import { EventBuffer } from "./buffer.ts";
import { jsonLogger, type Logger } from "./log.ts";
import type { WebhookSender } from "./sender.ts";
import { PresenceTracker, type VerifyProof } from "./tracker.ts";

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
  /** Checks a presence's proof (verifyTicket with the webhook secrets). */
  verifyProof: VerifyProof;
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
  /** Presence metas ignored, by reason (forged, expired or missing proofs). */
  rejected: Record<string, number>;
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
  private readonly o: Required<Omit<BridgeOptions, "log" | "sender" | "verifyProof">>;
  private readonly log: Logger;
  private flushTimer?: ReturnType<typeof setInterval>;
  private refreshTimer?: ReturnType<typeof setInterval>;
  private pumping?: Promise<void>;
  private attempt = 0;
  private lastRequestAt = -Infinity;
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
    this.tracker = new PresenceTracker((e) => this.enqueue([e]), options.verifyProof, now);
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

  /** Re-sends everyone present (they are still online: last_seen_at moves on), after
   * dropping presences whose ticket expired. */
  refresh(): void {
    this.tracker.expire();
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
      // Requests start at least flushIntervalMs apart, so a status push (one per watcher per
      // batch) reaches each watcher at most once per interval; only a backlog of more than a
      // full batch (catching up after an outage) is sent back to back.
      const wait = this.lastRequestAt + this.o.flushIntervalMs - performance.now();
      if (wait > 0 && this.buffer.size <= this.o.maxBatchEvents) {
        await abortableSleep(wait, this.abort.signal);
        continue;
      }
      const startedAt = performance.now();
      const batch = this.buffer.take(this.batchLimit, this.o.maxBatchBytes);
      this.counts.requests++;
      const outcome = await this.options.sender.send(batch);
      // Only delivered batches push; retries follow their own backoff.
      this.lastRequestAt = outcome.kind === "sent" ? startedAt : -Infinity;
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
          // Never the event itself: its coordinates have no place in a log line.
          const { user_id, status, at, lat } = batch[0];
          this.log("error", "webhook refused an event; dropped", {
            event: { user_id, status, at, located: lat !== undefined },
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
      rejected: { ...this.tracker.rejected },
      ...this.counts,
      shedSuperseded: this.buffer.shedSuperseded,
      shedOnline: this.buffer.shedOnline,
      pending: this.buffer.size,
    };
  }
}
