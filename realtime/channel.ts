// One joined topic of one socket: RealtimeWeb.RealtimeChannel's behaviour (supabase/realtime
// lib/realtime_web/channels/realtime_channel.ex and realtime_channel/*_handler.ex, at 833cf36c).
// The join order, the refusal texts, the authorization gates, the presence client limit, token
// refresh and expiry are theirs; docs/realtime.md lists each point with its source.
import type { AuthorizationContext, Policies } from "./authorization.ts";
import { emptyPolicies, PoolTimeoutError, RlsPolicyError } from "./authorization.ts";
import type { Claims } from "./jwt.ts";
import { tokenJoinReason, tokenMessage } from "./jwt.ts";
import type { Grouped } from "./presence.ts";
import {
  type Broadcast,
  type Message,
  payloadBytes,
  type UserBroadcastPush,
} from "./serializer.ts";
import type { Socket } from "./socket.ts";

export type JoinResult =
  | { ok: true; response: Record<string, unknown> }
  | { ok: false; reason: string; dropSocket?: boolean };

/** FlexibleBoolean: true, "true" (and false, "false"); anything else is the default. */
function flag(value: unknown, fallback = false): boolean {
  if (value === true || value === "true") return true;
  if (value === false || value === "false") return false;
  return fallback;
}

const isMap = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

let channelIds = 0;

export class Channel {
  readonly id = ++channelIds;
  readonly subTopic: string;
  isPrivate = false;
  tenantTopic = "";
  presenceKey = "";
  presenceEnabled = false;
  selfBroadcast = false;
  ackBroadcast = false;
  policies: Policies | undefined;
  joined = false;
  private accessToken: unknown;
  private claims: Claims | undefined;
  private context: AuthorizationContext | undefined;
  private tracked: Record<string, unknown> | undefined;
  private presenceWindow = { counter: 0, resetAt: 0 };
  private confirmTimer?: ReturnType<typeof setTimeout>;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    readonly topic: string,
    readonly joinRef: string | null,
    private readonly params: Record<string, unknown>,
  ) {
    this.subTopic = topic.slice("realtime:".length);
  }

  private get server() {
    return this.socket.server;
  }

  // ---- join -----------------------------------------------------------------------------

  async join(): Promise<JoinResult> {
    const { limits, privateOnly } = this.server.config;
    if (this.subTopic === "") {
      return this.refuse("TopicNameRequired: You must provide a topic name");
    }
    const config = isMap(this.params.config) ? this.params.config : {};
    const broadcast = isMap(config.broadcast) ? config.broadcast : {};
    const presence = isMap(config.presence) ? config.presence : {};
    this.isPrivate = flag(config.private);
    this.presenceEnabled = flag(presence.enabled);
    this.selfBroadcast = flag(broadcast.self);
    this.ackBroadcast = flag(broadcast.ack);
    // An empty key gets a generated one for this join (payloads/join.ex presence_key/1).
    this.presenceKey = typeof presence.key === "string" && presence.key !== ""
      ? presence.key
      : crypto.randomUUID();
    this.accessToken = this.chooseToken();
    this.tenantTopic = `${this.isPrivate ? "private" : "public"}:${this.subTopic}`;

    if (privateOnly && !this.isPrivate) {
      return this.refuse("PrivateOnly: This project only allows private channels");
    }
    if (!this.socket.counted && this.server.users >= limits.maxConcurrentUsers) {
      return this.refuse("ConnectionRateLimitReached: Too many connected users");
    }
    if (this.server.joins.triggered) {
      return this.refuse("ClientJoinRateLimitReached: Too many joins per second", true);
    }
    this.server.joins.add();
    if (this.socket.channels.size >= limits.maxChannelsPerClient) {
      return this.refuse("ChannelRateLimitReached: Too many channels");
    }
    const verified = await this.server.tokens.verify(this.accessToken);
    if (!verified.ok) return this.refuse(tokenJoinReason(verified.error));
    this.setClaims(verified.claims);

    if (this.isPrivate) {
      const denied = await this.authorizeRead();
      if (denied) return this.refuse(denied);
    }
    const postgresChanges = Array.isArray(config.postgres_changes)
      ? config.postgres_changes.filter(isMap).map((p, i) => ({ ...p, id: 1000 + i }))
      : [];
    this.joined = true;
    this.server.subscribe(this);
    this.server.countUser(this.socket);
    return { ok: true, response: { postgres_changes: postgresChanges } };
  }

  /** What happens right after the ok reply: the presence state, and the honest answer about
   * postgres_changes, which this stand-in does not serve (the project does not use it). */
  afterJoin(): void {
    if (this.presenceEnabled) this.syncPresence();
    const config = isMap(this.params.config) ? this.params.config : {};
    if (Array.isArray(config.postgres_changes) && config.postgres_changes.length > 0) {
      this.systemPush(
        "postgres_changes",
        "error",
        "postgres_changes is not served by the local Realtime endpoint (docs/realtime.md)",
      );
    }
  }

  private chooseToken(): unknown {
    const token = this.params.access_token ?? this.params.user_token;
    if (typeof token === "string" && token.startsWith("sb_")) return this.socket.token;
    return typeof token === "string" ? token : this.socket.token;
  }

  private setClaims(claims: Claims): void {
    this.claims = claims;
    this.context = {
      topic: this.subTopic,
      claims,
      role: claims.role,
      sub: typeof claims.sub === "string" ? claims.sub : undefined,
      headers: this.socket.headers,
    };
    clearTimeout(this.confirmTimer);
    const expiresInMs = (claims.exp - Date.now() / 1000) * 1000;
    const delay = Math.max(0, Math.min(this.server.config.confirmTokenIntervalMs, expiresInMs));
    this.confirmTimer = setTimeout(() => void this.confirmToken(), delay);
  }

  /** Read policies for the join (and every token refresh); a reason when refused. */
  private async authorizeRead(): Promise<string | undefined> {
    const message = `You do not have permissions to read from this Channel topic: ${this.subTopic}`;
    try {
      this.policies = await this.server.authorizer.read(
        this.context!,
        this.policies ?? emptyPolicies(),
        this.presenceEnabled,
      );
    } catch (e) {
      if (e instanceof RlsPolicyError) {
        this.server.log("warn", "RlsPolicyError", { topic: this.subTopic, error: e.message });
        return `Unauthorized: ${message}`;
      }
      if (e instanceof PoolTimeoutError) {
        this.server.log("error", "IncreaseConnectionPool", { error: e.message });
        return "IncreaseConnectionPool: Please increase your connection pool size";
      }
      this.server.log("error", "UnableToConnectToProject", { error: String(e) });
      return "UnableToConnectToProject: Realtime was unable to connect to the project database";
    }
    const { broadcast, presence } = this.policies;
    return broadcast.read || presence.read ? undefined : `Unauthorized: ${message}`;
  }

  private async refuse(reason: string, dropSocket = false): Promise<JoinResult> {
    // Every refused join is answered this late (CHANNEL_ERROR_BACKOFF_MS, join_error/1).
    await new Promise((r) => setTimeout(r, this.server.config.joinErrorBackoffMs));
    clearTimeout(this.confirmTimer);
    return { ok: false, reason, dropSocket };
  }

  // ---- messages from the client ---------------------------------------------------------

  async handleIn(m: Message): Promise<void> {
    switch (m.event) {
      case "phx_leave":
        this.reply(m.ref, "ok", {});
        this.close();
        return;
      case "broadcast":
        return await this.handleBroadcast(m);
      case "presence":
        return await this.handlePresence(m);
      case "access_token":
        return await this.handleAccessToken(m.payload);
      default:
        // Counted and dropped without a reply (handle_in/3's catch-all).
        this.server.events.add();
    }
  }

  private async handleBroadcast(m: Message): Promise<void> {
    if (this.isPrivate) {
      if (this.policies?.broadcast.write === undefined) {
        try {
          this.policies = await this.server.authorizer.write(
            this.context!,
            this.policies ?? emptyPolicies(),
          );
        } catch (e) {
          this.server.log("warn", "UnableToSetPolicies", { error: String(e) });
          return;
        }
      }
      // Denied: dropped silently, no reply even with ack.
      if (!this.policies.broadcast.write) return;
    }
    this.server.events.add();
    const limit = this.server.config.limits.maxPayloadKb * 1000 + 500;
    if (payloadBytes(m.payload) > limit) {
      if (this.ackBroadcast) this.reply(m.ref, "error", "payload_size_exceeded");
      return;
    }
    const payload = m.payload as UserBroadcastPush | Record<string, unknown>;
    const broadcast: Broadcast = "kind" in payload && payload.kind === "user_broadcast_push"
      ? {
        kind: "user",
        event: (payload as UserBroadcastPush).userEvent,
        encoding: (payload as UserBroadcastPush).encoding,
        bytes: (payload as UserBroadcastPush).bytes,
      }
      : { kind: "map", payload: isMap(payload) ? payload : {} };
    this.server.fanout(this.tenantTopic, broadcast, this.selfBroadcast ? undefined : this);
    if (this.ackBroadcast) this.reply(m.ref, "ok", {});
  }

  private async handlePresence(m: Message): Promise<void> {
    const payload = isMap(m.payload) ? m.payload : {};
    if (typeof payload.event !== "string") {
      this.reply(m.ref, "ok", {});
      return;
    }
    // The per-channel client limit: a fixed window from the first call (presence_handler.ex
    // limit_client_presence_event/1). The call past it gets no reply: the channel closes.
    const now = performance.now();
    const { clientPresenceMaxCalls, clientPresenceWindowMs } = this.server.config.limits;
    const w = this.presenceWindow;
    if (w.resetAt === 0 || now > w.resetAt) {
      w.counter = 1;
      w.resetAt = now + clientPresenceWindowMs;
    } else if (w.counter >= clientPresenceMaxCalls) {
      this.server.counts.presenceLimited++;
      this.shutdown("Client presence rate limit exceeded");
      return;
    } else {
      w.counter++;
    }
    const event = payload.event.toLowerCase();
    if (event === "track") return await this.track(m.ref, payload.payload);
    if (event === "untrack") {
      this.untrack();
      this.reply(m.ref, "ok", {});
      return;
    }
    this.reply(m.ref, "error", {});
  }

  private async track(ref: string | null, tracked: unknown): Promise<void> {
    if (this.isPrivate && this.policies?.presence.write === undefined) {
      try {
        let policies = this.policies ?? emptyPolicies();
        if (policies.presence.read === undefined) {
          policies = await this.server.authorizer.read(this.context!, policies, true);
        }
        this.policies = await this.server.authorizer.write(this.context!, policies);
      } catch (e) {
        this.server.log("warn", "UnableToSetPolicies", { error: String(e) });
        this.reply(ref, "error", {});
        return;
      }
    }
    if (this.isPrivate && !this.policies?.presence.write) {
      this.reply(ref, "error", {});
      return;
    }
    const payload = tracked === undefined ? {} : tracked;
    if (!isMap(payload)) {
      this.reply(ref, "error", { reason: "Presence track payload must be a map" });
      return;
    }
    if (this.tracked && JSON.stringify(this.tracked) === JSON.stringify(payload)) {
      this.reply(ref, "ok", {}); // no change: a no-op
      return;
    }
    if (payloadBytes(payload) > this.server.config.limits.maxPayloadKb * 1000 + 500) {
      this.shutdown("Track message size exceeded");
      return;
    }
    if (!this.server.presenceAllowed()) {
      this.shutdown("Too many presence messages per second");
      return;
    }
    const diff = this.server.presence.track(this.tenantTopic, this.presenceKey, this.id, payload);
    this.presenceEnabled = true;
    this.tracked = payload;
    this.server.fanoutPresenceDiff(this.tenantTopic, diff);
    this.reply(ref, "ok", {});
  }

  private untrack(): void {
    const diff = this.server.presence.untrack(this.tenantTopic, this.presenceKey, this.id);
    this.tracked = undefined;
    if (diff) this.server.fanoutPresenceDiff(this.tenantTopic, diff);
  }

  private async handleAccessToken(payload: unknown): Promise<void> {
    const token = isMap(payload) ? payload.access_token : undefined;
    if (typeof token !== "string" || token.startsWith("sb_") || token === this.accessToken) return;
    const previous = this.policies;
    this.accessToken = token;
    this.policies = undefined;
    const verified = await this.server.tokens.verify(token);
    if (!verified.ok) {
      // Unexpected errors are shown as Elixir inspects them (shutdown_response(inspect(error))).
      const e = verified.error;
      const inspected = { signer: ":error_generating_signer", signature: ":signature_error" };
      this.shutdown(
        e.kind in inspected ? inspected[e.kind as keyof typeof inspected] : tokenMessage(e),
      );
      return;
    }
    this.setClaims(verified.claims);
    if (!this.isPrivate) return;
    const denied = await this.authorizeRead();
    if (denied) {
      this.shutdown(denied.replace(/^[A-Za-z]+: /, ""));
      return;
    }
    const revoked = (before?: boolean, after?: boolean) => before === true && after === false;
    if (
      previous && (revoked(previous.broadcast.read, this.policies!.broadcast.read) ||
        revoked(previous.presence.read, this.policies!.presence.read))
    ) {
      this.shutdown(
        `You no longer have permission to read from this Channel topic: ${this.subTopic}`,
      );
    }
  }

  /** The expiry watchdog (handle_info(:confirm_token)): re-verifies the current token. */
  private async confirmToken(): Promise<void> {
    if (this.closed) return;
    const verified = await this.server.tokens.verify(this.accessToken);
    if (verified.ok) this.setClaims(verified.claims);
    else this.shutdown(tokenMessage(verified.error));
  }

  // ---- messages to the client -----------------------------------------------------------

  /** presence_state to this member, if it may read presence (presence_handler.ex sync/1). */
  private syncPresence(): void {
    if (!this.canReadPresence()) return;
    if (!this.server.presenceAllowed()) {
      this.shutdown("Too many presence messages per second");
      return;
    }
    this.push("presence_state", this.server.presence.state(this.tenantTopic));
  }

  /** Public channels: everyone; private: only members granted presence read. */
  canReadPresence(): boolean {
    return !this.isPrivate || this.policies?.presence.read === true;
  }

  canReadBroadcast(): boolean {
    return !this.isPrivate || this.policies?.broadcast.read === true;
  }

  deliverPresenceDiff(diff: { joins: Grouped; leaves: Grouped }): void {
    this.push("presence_diff", diff);
  }

  get socketVsn() {
    return this.socket.vsn;
  }

  /** A frame encoded once for many members (broadcasts, presence diffs). */
  sendFrame(frame: string | Uint8Array): void {
    if (!this.closed) this.socket.send(frame);
  }

  push(event: string, payload: unknown): void {
    if (this.closed) return;
    this.socket.sendMessage({
      joinRef: this.joinRef,
      ref: null,
      topic: this.topic,
      event,
      payload,
    });
  }

  private reply(ref: string | null, status: "ok" | "error", response: unknown): void {
    this.socket.sendMessage({
      joinRef: this.joinRef,
      ref,
      topic: this.topic,
      event: "phx_reply",
      payload: { status, response },
    });
  }

  private systemPush(extension: string, status: "ok" | "error", message: string): void {
    this.push("system", { extension, status, message, channel: this.subTopic });
  }

  /** shutdown_response/2: a system error, then phx_close; the client does not rejoin. */
  shutdown(message: string): void {
    if (this.closed) return;
    this.server.log("info", "ChannelShutdown", { topic: this.subTopic, message });
    this.systemPush("system", "error", message);
    this.close();
  }

  /** Ends the channel: phx_close (ref = join ref, as Phoenix sends it), presence leave. */
  close(notify = true): void {
    if (this.closed) return;
    if (notify) {
      this.socket.sendMessage({
        joinRef: this.joinRef,
        ref: this.joinRef,
        topic: this.topic,
        event: "phx_close",
        payload: {},
      });
    }
    this.terminate();
  }

  /** The channel process ends (socket gone, left, closed): no frame is sent. */
  terminate(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.confirmTimer);
    if (this.joined) {
      this.untrack();
      this.server.unsubscribe(this);
    }
    this.socket.forget(this);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get role(): string | undefined {
    return this.claims?.role;
  }
}
