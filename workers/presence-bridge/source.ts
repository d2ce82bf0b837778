// The Realtime side of the bridge: the presence channel, joined with supabase-js.
import type { RealtimeChannel, SupabaseClient } from "@supabase/supabase-js";
import { jsonLogger, type Logger } from "./log.ts";
import type { PresenceMeta, PresenceTracker } from "./tracker.ts";

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
        .on("presence", { event: "leave" }, ({ key, leftPresences }) => {
          this.tracker.leave(key, leftPresences as PresenceMeta[]);
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
