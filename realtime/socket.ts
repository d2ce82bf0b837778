// One WebSocket: the Phoenix socket's rules (Phoenix.Socket as Supabase's fork runs it, and
// RealtimeWeb.Socket's rescue of malformed frames). Frames are handled one at a time, in
// order, as the socket process does: a join (with its database check, or the 5 s a refusal
// waits) holds the frames behind it.
import { Channel } from "./channel.ts";
import { decodeBinary, decodeText, encodeMessage, type Message, type Vsn } from "./serializer.ts";
import type { RealtimeServer } from "./server.ts";

const isMap = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

export class Socket {
  /** Joined channels by topic (`realtime:<name>`). */
  readonly channels = new Map<string, Channel>();
  /** Counted as a connected user (after its first join, until it closes). */
  counted = false;
  lastReceivedAt = performance.now();
  private queue: Promise<void> = Promise.resolve();
  private open = true;

  constructor(
    readonly server: RealtimeServer,
    private readonly ws: WebSocket,
    readonly vsn: Vsn,
    /** The socket's token (the apikey), used by joins that bring none of their own. */
    readonly token: string,
    /** The x-* headers of the upgrade request (request.headers in policies). */
    readonly headers: Record<string, string>,
  ) {
    ws.binaryType = "arraybuffer";
    ws.onmessage = (e) => this.onFrame(e.data);
    ws.onclose = () => this.onClose();
    ws.onerror = () => {};
  }

  private onFrame(data: unknown): void {
    this.lastReceivedAt = performance.now();
    const size = typeof data === "string" ? data.length : (data as ArrayBuffer).byteLength;
    this.server.counts.framesIn++;
    if (size > this.server.config.maxFrameBytes) {
      this.close(1009, "frame too large");
      return;
    }
    this.queue = this.queue.then(() => this.handleFrame(data)).catch((e) => {
      this.server.log("error", "UnknownErrorOnWebSocketMessage", { error: String(e?.stack ?? e) });
    });
  }

  private async handleFrame(data: unknown): Promise<void> {
    if (!this.open) return;
    let m: Message;
    try {
      m = typeof data === "string"
        ? decodeText(this.vsn, data)
        : decodeBinary(new Uint8Array(data as ArrayBuffer));
    } catch (e) {
      this.server.counts.malformedFrames++;
      this.server.log("info", "MalformedWebSocketMessage", { error: (e as Error).message });
      return;
    }
    if (m.topic === "phoenix" && m.event === "heartbeat") {
      this.sendMessage({
        joinRef: null,
        ref: m.ref,
        topic: "phoenix",
        event: "phx_reply",
        payload: { status: "ok", response: {} },
      });
      return;
    }
    const channel = this.channels.get(m.topic);
    if (m.event === "phx_join") {
      // A second join closes the old channel first (Phoenix: "Duplicate channel join").
      channel?.close();
      await this.join(m);
      return;
    }
    if (!channel) {
      this.sendMessage({
        joinRef: m.joinRef,
        ref: m.ref,
        topic: m.topic,
        event: "phx_reply",
        payload: m.event === "phx_leave"
          ? { status: "ok", response: {} }
          : { status: "error", response: { reason: "unmatched topic" } },
      });
      return;
    }
    await channel.handleIn(m);
  }

  private async join(m: Message): Promise<void> {
    const reply = (status: "ok" | "error", response: unknown) =>
      this.sendMessage({
        joinRef: m.joinRef,
        ref: m.ref,
        topic: m.topic,
        event: "phx_reply",
        payload: { status, response },
      });
    if (!m.topic.startsWith("realtime:")) {
      reply("error", { reason: "unmatched topic" });
      return;
    }
    const channel = new Channel(
      this,
      m.topic,
      m.joinRef ?? m.ref,
      isMap(m.payload) ? m.payload : {},
    );
    const result = await channel.join();
    if (!this.open) {
      channel.terminate();
      return;
    }
    if (!result.ok) {
      this.server.counts.joinsRefused++;
      if (result.reason.startsWith("InvalidJWTToken: Token has expired")) {
        this.server.counts.joinsRefusedExpiredToken++;
      }
      reply("error", { reason: result.reason });
      // "Too many joins per second" also drops the socket (realtime_channel.ex join/3).
      if (result.dropSocket) this.close(1000, "too many joins");
      return;
    }
    this.server.counts.joins++;
    this.channels.set(m.topic, channel);
    reply("ok", result.response);
    channel.afterJoin();
  }

  /** A channel ended: it is no longer routed (unless a newer channel took its topic). */
  forget(channel: Channel): void {
    if (this.channels.get(channel.topic) === channel) this.channels.delete(channel.topic);
  }

  sendMessage(m: Message): void {
    this.send(encodeMessage(this.vsn, m));
  }

  send(frame: string | Uint8Array): void {
    if (!this.open || this.ws.readyState !== WebSocket.OPEN) return;
    this.server.counts.framesOut++;
    this.server.counts.bytesOut += typeof frame === "string" ? frame.length : frame.byteLength;
    this.ws.send(frame);
  }

  close(code = 1000, reason = ""): void {
    if (!this.open) return;
    try {
      this.ws.close(code, reason);
    } catch { /* already closing */ }
    this.onClose();
  }

  private onClose(): void {
    if (!this.open) return;
    this.open = false;
    for (const channel of [...this.channels.values()]) channel.terminate();
    this.server.dropSocket(this);
  }
}
