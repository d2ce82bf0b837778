// The Realtime side of the bridge: the presence channel, joined with supabase-js.
import type { RealtimeChannel, SupabaseClient } from "@supabase/supabase-js";
import { backoffMs, type BackoffOptions } from "./bridge.ts";
import { jsonLogger, type Logger } from "./log.ts";
import type { PresenceMeta, PresenceTracker } from "./tracker.ts";

/**
 * Joins the presence channel as service_role (which Realtime Authorization lets see presence,
 * unlike signed-in users) and feeds join/leave into the tracker.
 *
 * realtime-js rejoins by itself after a lost socket, a channel error or a join that timed out;
 * after such a rejoin Realtime sends the full presence state again and realtime-js turns the
 * difference into join/leave callbacks. It does not rejoin a channel the server closed
 * (`phx_close`: "Too many messages per second", an expired token, a shutdown), and presence
 * would stop for good: this source then joins a new channel after a capped, jittered backoff
 * (under the plan's joins per second even when many bridges rejoin at once), and resyncs the
 * tracker with the new channel's first full state, so that whoever left meanwhile goes offline
 * and nobody still present flaps. In between, the bridge keeps re-sending who it knew to be
 * present (its refresh), so nobody reads as offline for the outage.
 *
 * Every join after the first (realtime-js's own rejoins included) holds the topic's leaves for
 * `rejoinGraceMs` (PresenceTracker.holdLeaves): the first state after a Realtime restart holds
 * only the clients already back, and the others are on their way (spread over 45 s by the
 * client module's ReconnectPolicy), not gone.
 */
export class RealtimePresenceSource {
  channel?: RealtimeChannel;
  /** New channels joined after the server closed one. */
  rejoins = 0;
  private subscribed?: Promise<void>;
  private stopping = false;
  private attempt = 0;
  private rejoinTimer?: ReturnType<typeof setTimeout>;
  private graceTimer?: ReturnType<typeof setTimeout>;
  private joinedOnce = false;

  constructor(
    private readonly client: SupabaseClient,
    readonly topic: string,
    private readonly tracker: PresenceTracker,
    private readonly log: Logger = jsonLogger,
    private readonly rejoinGraceMs = 60_000,
    private readonly backoff: BackoffOptions = { baseMs: 1000, maxMs: 30_000 },
    private readonly random: () => number = Math.random,
  ) {}

  /** Resolves once the channel is joined the first time. */
  start(): Promise<void> {
    this.subscribed ??= this.join(false);
    return this.subscribed;
  }

  private async join(resync: boolean): Promise<void> {
    // The join then carries the service key as its access token (not only the socket's apikey).
    await this.client.realtime.setAuth();
    await new Promise<void>((resolve) => {
      const channel = this.client.channel(this.topic, {
        config: { private: true, presence: { enabled: true } },
      });
      let resyncing = resync;
      channel
        .on("presence", { event: "join" }, ({ key, newPresences }) => {
          this.tracker.join(key, newPresences as PresenceMeta[], this.topic);
        })
        .on("presence", { event: "leave" }, ({ key, leftPresences }) => {
          this.tracker.leave(key, leftPresences as PresenceMeta[], this.topic);
        })
        .on("presence", { event: "sync" }, () => {
          if (resyncing) {
            resyncing = false;
            const state = channel.presenceState() as Record<string, PresenceMeta[]>;
            this.tracker.resync(state, this.topic);
            this.log("info", "presence resynced after a rejoin", {
              topic: this.topic,
              online: this.tracker.online.size,
            });
          } else this.log("debug", "presence synced", { online: this.tracker.online.size });
        })
        .subscribe((status, err) => {
          const level = status === "SUBSCRIBED" ? "info" : "warn";
          this.log(level, `channel ${this.topic}: ${status}`, err ? { error: err.message } : {});
          if (status === "SUBSCRIBED") {
            this.attempt = 0;
            if (this.joinedOnce) this.holdLeaves();
            this.joinedOnce = true;
            resolve();
          }
          if (status === "CLOSED" && !this.stopping && this.channel === channel) {
            this.rejoinLater(channel);
          }
        });
      this.channel = channel;
    });
  }

  /** Leaves on this topic wait rejoinGraceMs (a second rejoin within it extends nothing: the
   * clients' spread started at the first). */
  private holdLeaves(): void {
    if (this.rejoinGraceMs <= 0 || !this.tracker.holdLeaves(this.topic)) return;
    this.log("info", "holding leaves after a rejoin", {
      topic: this.topic,
      graceMs: this.rejoinGraceMs,
    });
    this.graceTimer = setTimeout(() => {
      const offline = this.tracker.releaseLeaves(this.topic);
      this.log("info", "rejoin grace over", { topic: this.topic, offline });
    }, this.rejoinGraceMs);
  }

  /** A new channel in place of one the server closed, after a jittered backoff. */
  private rejoinLater(closed: RealtimeChannel): void {
    this.channel = undefined; // removing it below reports CLOSED again: not a second rejoin
    const delayMs = backoffMs(this.attempt++, this.backoff, this.random);
    this.log("warn", "the server closed the presence channel: joining again", { delayMs });
    clearTimeout(this.rejoinTimer);
    this.rejoinTimer = setTimeout(async () => {
      if (this.stopping) return;
      await this.client.removeChannel(closed).catch(() => "gone");
      this.rejoins++;
      await this.join(true).catch((e) =>
        this.log("warn", "joining the presence channel again failed", { error: String(e) })
      );
    }, delayMs);
  }

  /**
   * Leaves the channel without reporting anyone offline: they are still online, and another
   * bridge (or this one, restarted) takes over.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.rejoinTimer);
    clearTimeout(this.graceTimer);
    if (this.channel) await this.client.removeChannel(this.channel);
    this.channel = undefined;
  }
}
