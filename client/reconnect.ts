// When to reconnect and rejoin: jittered, and spread wide enough that a whole population
// reconnecting at once (a Realtime restart drops every socket) stays under the plan's channel
// joins per second. docs/realtime.md, "Reconnect storms", has the arithmetic: 50,000 clients
// with two channels each are 100,000 joins; at Team's 2,500 joins/s they need 40 s.

export interface Backoff {
  baseMs: number;
  capMs: number;
}

/** Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))] (attempt counts from 1). */
export function jitteredBackoffMs(attempt: number, b: Backoff, random = Math.random): number {
  const ceiling = Math.min(b.capMs, b.baseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 30));
  return Math.round(ceiling * random());
}

export interface ReconnectOptions {
  /** The first reconnect after the server dropped us is uniform in [0, spreadMs]. */
  spreadMs?: number;
  /** Later attempts back off from here... */
  baseMs?: number;
  /** ...to at most this. */
  capMs?: number;
  random?: () => number;
}

/**
 * The socket's reconnect delays (realtime-js `reconnectAfterMs`). Two cases:
 *  - our own network failed (a heartbeat went unanswered): nobody else is affected, so the
 *    first attempts are quick (full jitter from 1 s);
 *  - the server closed or lost us: everyone may be reconnecting now, so the first attempt is
 *    spread over `spreadMs` (default 45 s) and later ones back off up to `capMs`.
 */
export class ReconnectPolicy {
  private ownNetwork = false;
  private readonly spreadMs: number;
  private readonly backoff: Backoff;
  private readonly random: () => number;

  constructor(o: ReconnectOptions = {}) {
    this.spreadMs = o.spreadMs ?? 45_000;
    this.backoff = { baseMs: o.baseMs ?? 1000, capMs: o.capMs ?? 60_000 };
    this.random = o.random ?? Math.random;
  }

  /** realtime-js heartbeatCallback: a timeout means our side of the network is down. */
  heartbeat(status: string): void {
    if (status === "timeout") this.ownNetwork = true;
    else if (status === "ok") this.ownNetwork = false;
  }

  delayMs(tries: number): number {
    if (this.ownNetwork) return jitteredBackoffMs(tries, this.backoff, this.random);
    if (tries <= 1) return Math.round(this.spreadMs * this.random());
    const ceiling = Math.max(
      this.spreadMs,
      Math.min(this.backoff.capMs, this.backoff.baseMs * 2 ** Math.min(tries - 1, 30)),
    );
    return Math.round(ceiling * this.random());
  }
}
