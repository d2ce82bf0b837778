// The local Realtime endpoint: Supabase Realtime's WebSocket protocol and broadcast REST API
// at /realtime/v1, for the local stack what hosted Realtime is in production (as
// functions/_serve stands in for the Edge Runtime). One tenant, one node. docs/realtime.md
// says what it reproduces, from which source file, and what it leaves out.
//
//   const realtime = new RealtimeServer(realtimeConfig());
//   realtime.start();
//   Deno.serve((req) => realtime.handles(req) ? realtime.handle(req) : other(req));
import postgres from "postgres";
import type { Channel } from "./channel.ts";
import type { Limits, RealtimeConfig } from "./config.ts";
import { Authorizer } from "./authorization.ts";
import { DatabaseBroadcasts, type DatabaseMessage, type Log } from "./database_broadcasts.ts";
import { tokenConnectError, TokenVerifier } from "./jwt.ts";
import { type Diff, PresenceRegistry } from "./presence.ts";
import { RateCounter } from "./rate_counter.ts";
import { handleRest } from "./rest.ts";
import { type Broadcast, encodeBroadcast, encodeMessage, type Vsn } from "./serializer.ts";
import { Socket } from "./socket.ts";

export const PREFIX = "/realtime/v1";
/** Asks the endpoint whether a connection would be admitted, without opening it (upgrade()). */
export const ADMISSION_HEADER = "x-sltr-admission-check";

const jsonLog: Log = (level, msg, data = {}) => {
  const line = JSON.stringify({ level, msg, service: "realtime", ...data });
  if (level === "error" || level === "warn") console.error(line);
  else if (Deno.env.get("REALTIME_LOG_LEVEL") === "info") console.log(line);
};

export class RealtimeServer {
  readonly presence = new PresenceRegistry();
  readonly tokens: TokenVerifier;
  readonly authorizer: Authorizer;
  readonly joins: RateCounter;
  readonly events: RateCounter;
  readonly presenceEvents: RateCounter;
  /** Monotonic counters for the metrics (sltr_realtime_*). */
  readonly counts = {
    connections: 0,
    connectionsRefused: 0,
    joins: 0,
    joinsRefused: 0,
    /** Of those, joins whose token had expired (a client rejoining with a stale token). */
    joinsRefusedExpiredToken: 0,
    framesIn: 0,
    framesOut: 0,
    bytesOut: 0,
    malformedFrames: 0,
    presenceLimited: 0,
    databaseBroadcasts: 0,
    /** Rows of realtime.messages dropped at the source: the tenant was over its rate. */
    databaseBroadcastsDropped: 0,
    restBroadcasts: 0,
  };
  private readonly topics = new Map<string, Set<Channel>>();
  private readonly sockets = new Set<Socket>();
  private readonly sql: postgres.Sql;
  private readonly databaseBroadcasts?: DatabaseBroadcasts;
  private ticker?: ReturnType<typeof setInterval>;
  private authTicker?: ReturnType<typeof setInterval>;
  private sweeper?: ReturnType<typeof setInterval>;

  constructor(readonly config: RealtimeConfig, readonly log: Log = jsonLog) {
    const l: Limits = config.limits;
    this.tokens = new TokenVerifier(config.jwtSecret);
    this.joins = new RateCounter(l.maxJoinsPerSecond);
    this.events = new RateCounter(l.maxEventsPerSecond);
    this.presenceEvents = new RateCounter(l.maxPresenceEventsPerSecond);
    this.sql = postgres(config.dbUrl, {
      prepare: false, // the pooler, in transaction mode
      max: config.dbPool,
      idle_timeout: 30,
      connect_timeout: 3,
      fetch_types: false,
      onnotice: () => {},
      connection: { application_name: "sltr-realtime" },
    });
    this.authorizer = new Authorizer(this.sql, config.dbPool, config.dbQueueTargetMs);
    if (config.replicationUrl) {
      this.databaseBroadcasts = new DatabaseBroadcasts(
        config.replicationUrl,
        (m) => this.deliverDatabaseMessage(m),
        log,
        config.janitorIntervalMs,
      );
    }
  }

  start(): void {
    this.ticker ??= setInterval(() => {
      this.joins.tick();
      this.events.tick();
      this.presenceEvents.tick();
    }, 5000);
    this.authTicker ??= setInterval(() => this.authorizer.errors.tick(), 1000);
    const every = Math.max(50, Math.min(1000, this.config.idleTimeoutMs / 10));
    this.sweeper ??= setInterval(() => this.closeIdleSockets(), every);
    this.databaseBroadcasts?.start();
  }

  /** Whether a request is for this endpoint. */
  handles(req: Request): boolean {
    return new URL(req.url).pathname.startsWith(PREFIX + "/");
  }

  async handle(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname.slice(PREFIX.length);
    if (path === "/websocket" || path === "/websocket/") return await this.upgrade(req);
    if (path.startsWith("/api/")) return await handleRest(this, req, path.slice(4));
    return Response.json({ message: "Not Found" }, { status: 404 });
  }

  /** The upgrade (user_socket.ex connect/3): a token that verifies, or an HTTP error after
   * CONNECT_ERROR_BACKOFF_MS. A request with ADMISSION_HEADER and no upgrade is only asked
   * whether it would be let in (204, or the refusal): the gateway relaying sockets from
   * another process asks first, so that a refused client still gets its HTTP status. */
  private async upgrade(req: Request): Promise<Response> {
    const admission = await this.admit(req);
    if (admission instanceof Response) return admission;
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      if (req.headers.has(ADMISSION_HEADER)) return new Response(null, { status: 204 });
      return new Response("WebSocket upgrade expected", { status: 400 });
    }
    const headers: Record<string, string> = {};
    for (const [name, value] of req.headers) if (name.startsWith("x-")) headers[name] = value;
    const { socket: ws, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    this.counts.connections++;
    this.sockets.add(new Socket(this, ws, admission.vsn, admission.token, headers));
    return response;
  }

  /** Whether a connection may open: its vsn, its token, the tenant's limits. */
  private async admit(req: Request): Promise<Response | { vsn: Vsn; token: string }> {
    const url = new URL(req.url);
    const rawVsn = url.searchParams.get("vsn") ?? "1.0.0";
    const vsn: Vsn | undefined = /^1\.0(\.\d+)?$/.test(rawVsn)
      ? "1.0.0"
      : /^2\.0(\.\d+)?$/.test(rawVsn)
      ? "2.0.0"
      : undefined;
    if (!vsn) return new Response(`unsupported vsn ${rawVsn}`, { status: 403 });
    const token = req.headers.get("x-api-key") ?? url.searchParams.get("apikey");
    const refuse = async (status: number, message: string) => {
      this.counts.connectionsRefused++;
      await new Promise((r) => setTimeout(r, this.config.connectErrorBackoffMs));
      return Response.json({ error: message }, { status });
    };
    const verified = await this.tokens.verify(token ?? undefined);
    if (!verified.ok) {
      const { status, message } = tokenConnectError(verified.error);
      return await refuse(status, message);
    }
    if (this.users >= this.config.limits.maxConcurrentUsers) {
      return await refuse(429, "Too many connected users");
    }
    if (this.joins.triggered) return await refuse(429, "Too many joins per second");
    return { vsn, token: token! };
  }

  /** Sockets counted as connected users: from their first join until they close
   * (UsersCounter). */
  users = 0;

  countUser(socket: Socket): void {
    if (socket.counted) return;
    socket.counted = true;
    this.users++;
  }

  dropSocket(socket: Socket): void {
    if (this.sockets.delete(socket) && socket.counted) this.users--;
  }

  private closeIdleSockets(): void {
    const cutoff = performance.now() - this.config.idleTimeoutMs;
    for (const s of this.sockets) {
      if (s.lastReceivedAt >= cutoff) continue;
      this.log("info", "idle timeout", {
        silent_ms: Math.round(performance.now() - s.lastReceivedAt),
      });
      s.close(1000, "idle timeout");
    }
  }

  subscribe(channel: Channel): void {
    let set = this.topics.get(channel.tenantTopic);
    if (!set) this.topics.set(channel.tenantTopic, set = new Set());
    set.add(channel);
  }

  unsubscribe(channel: Channel): void {
    const set = this.topics.get(channel.tenantTopic);
    if (!set) return;
    set.delete(channel);
    if (set.size === 0) this.topics.delete(channel.tenantTopic);
  }

  /** Members of a topic now (`private:<name>` or `public:<name>`). */
  members(tenantTopic: string): ReadonlySet<Channel> {
    return this.topics.get(tenantTopic) ?? new Set();
  }

  /**
   * A broadcast to every member that may read it, `except` the sender when it did not ask for
   * its own messages. Encoded once per serializer (MessageDispatcher's cache); every delivery
   * counts toward the tenant's messages per second, and once that limit is triggered each
   * receiving channel closes with "Too many messages per second" (handle_info
   * :update_rate_counter).
   */
  fanout(tenantTopic: string, broadcast: Broadcast, except?: Channel): number {
    const members = this.topics.get(tenantTopic);
    if (!members) return 0;
    const encoded = new Map<Vsn, string | Uint8Array | undefined>();
    let delivered = 0;
    for (const channel of [...members]) {
      if (channel === except || !channel.canReadBroadcast()) continue;
      const vsn = channel.socketVsn;
      if (!encoded.has(vsn)) encoded.set(vsn, encodeBroadcast(vsn, channel.topic, broadcast));
      const frame = encoded.get(vsn);
      if (frame === undefined) continue;
      channel.sendFrame(frame);
      delivered++;
      this.events.add();
      if (this.events.triggered) channel.shutdown("Too many messages per second");
    }
    return delivered;
  }

  /** A presence diff to every member that may read presence, the tracker included. */
  fanoutPresenceDiff(tenantTopic: string, diff: Diff): void {
    const members = this.topics.get(tenantTopic);
    if (!members) return;
    const encoded = new Map<string, string>();
    let delivered = 0;
    for (const channel of [...members]) {
      if (!channel.canReadPresence()) continue;
      // The frame carries the member's join ref, so it is encoded per member.
      const key = `${channel.socketVsn}|${channel.joinRef}`;
      let frame = encoded.get(key);
      if (frame === undefined) {
        frame = encodeMessage(channel.socketVsn, {
          joinRef: channel.joinRef,
          ref: null,
          topic: channel.topic,
          event: "presence_diff",
          payload: diff,
        });
        encoded.set(key, frame);
      }
      channel.sendFrame(frame);
      delivered++;
    }
    this.presenceEvents.add(delivered);
  }

  /** The tenant's presence rate (limit_presence_event/1): counts this event when allowed. */
  presenceAllowed(): boolean {
    if (this.presenceEvents.avg > this.config.limits.maxPresenceEventsPerSecond) return false;
    this.presenceEvents.add();
    return true;
  }

  /** check_rate_limit/3 of batch_broadcast.ex: why a batch of `n` broadcasts is refused (the
   * tenant's average messages per second, and the batch on top), or undefined. */
  batchRefusal(n: number): string | undefined {
    const max = this.config.limits.maxEventsPerSecond;
    const avg = this.events.avg;
    return avg > max
      ? "You have exceeded your rate limit"
      : n + avg > max
      ? "Too many messages to broadcast, please reduce the batch size"
      : undefined;
  }

  /** A row of realtime.messages, as replication_connection.ex hands it to BatchBroadcast: one
   * message, refused while the tenant is over its rate (dropped: hosted logs nothing, as its
   * `with` matches no 3-tuple error), else counted once at the source and once per delivery. */
  private deliverDatabaseMessage(m: DatabaseMessage): void {
    if (this.batchRefusal(1)) {
      this.counts.databaseBroadcastsDropped++;
      return;
    }
    this.events.add();
    this.counts.databaseBroadcasts++;
    const bytes = new TextEncoder().encode(JSON.stringify(m.payload));
    this.fanout(`${m.private ? "private" : "public"}:${m.topic}`, {
      kind: "user",
      event: m.event,
      encoding: "json",
      bytes,
      meta: { id: m.id },
    });
  }

  /** Live figures for the metrics. */
  stats() {
    let channels = 0;
    for (const set of this.topics.values()) channels += set.size;
    return {
      sockets: this.sockets.size,
      users: this.users,
      channels,
      topics: this.topics.size,
      presences: this.presence.size,
      joinsPerSecond: this.joins.avg,
      eventsPerSecond: this.events.avg,
      presenceEventsPerSecond: this.presenceEvents.avg,
      replicationConnected: this.databaseBroadcasts?.connected ?? false,
      authorizationRefusing: this.authorizer.errors.triggered,
      authorizationPoolTimeouts: this.authorizer.counts.poolTimeouts,
      ...this.counts,
    };
  }

  async close(): Promise<void> {
    clearInterval(this.ticker);
    clearInterval(this.authTicker);
    clearInterval(this.sweeper);
    for (const s of [...this.sockets]) s.close(1001, "server shutting down");
    await this.databaseBroadcasts?.stop();
    await this.sql.end({ timeout: 1 });
  }
}
