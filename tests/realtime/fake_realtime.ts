// A stand-in for the Supabase Realtime server, at the very edge: realtime-js (inside
// supabase-js) talks to it through a WebSocket-like transport (`realtime: { transport }` in
// createClient's options), frame by frame, in the Phoenix protocol it speaks to the real
// server (vsn 2.0.0: [join_ref, ref, topic, event, payload] JSON frames). Everything above the
// socket (supabase-js, realtime-js, phoenix.js, our code) runs unchanged.
//
// It does what the tests need: heartbeats, phx_join with replies (ok, or an error when
// `authorize` refuses), presence (track/untrack from clients, plus presences the test adds
// itself, as presence_state and presence_diff to presence-enabled members), broadcasts, a
// server-side phx_close, and dropping every connection to test reconnects.

type Frame = [string | null, string | null, string, string, Record<string, unknown>];

interface Meta {
  phx_ref: string;
  [key: string]: unknown;
}

interface Member {
  conn: FakeSocket;
  topic: string;
  joinRef: string;
  config: {
    private?: boolean;
    presence?: { key?: string; enabled?: boolean };
    broadcast?: { self?: boolean };
  };
  accessToken?: string;
  presenceKey: string;
  presenceRef?: string;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** The client side of one connection, what realtime-js sees as its WebSocket. */
export class FakeSocket {
  readonly CONNECTING = CONNECTING;
  readonly OPEN = OPEN;
  readonly CLOSING = CLOSING;
  readonly CLOSED = CLOSED;
  readyState = CONNECTING;
  readonly protocol = "";
  binaryType = "arraybuffer";
  bufferedAmount = 0;
  timeout = 0;
  onopen: ((ev: Event) => unknown) | null = null;
  onmessage: ((ev: MessageEvent) => unknown) | null = null;
  onclose: ((ev: CloseEvent) => unknown) | null = null;
  onerror: ((ev: Event) => unknown) | null = null;

  constructor(readonly url: string, private readonly server: FakeRealtime) {
    setTimeout(() => {
      if (this.readyState !== CONNECTING) return;
      if (server.refusing) {
        this.readyState = CLOSED;
        this.onerror?.(new Event("error"));
        this.onclose?.(new CloseEvent("close", { code: 1006, reason: "refused", wasClean: false }));
        return;
      }
      this.readyState = OPEN;
      server.accept(this);
      this.onopen?.(new Event("open"));
    }, 1);
  }

  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
    if (this.readyState !== OPEN) throw new Error("send on a socket that is not open");
    if (typeof data !== "string") return; // binary broadcast pushes: not used by these tests
    const frame = JSON.parse(data) as Frame;
    queueMicrotask(() => this.server.receive(this, frame));
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.server.disconnect(this);
    setTimeout(() => this.onclose?.(new CloseEvent("close", { code, reason, wasClean: true })), 1);
  }

  /** The server end goes away without a close handshake (network loss). */
  drop(): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.server.disconnect(this);
    this.onclose?.(new CloseEvent("close", { code: 1006, reason: "dropped", wasClean: false }));
  }

  deliver(frame: Frame): void {
    if (this.readyState !== OPEN) return;
    this.onmessage?.(new MessageEvent("message", { data: JSON.stringify(frame) }));
  }

  addEventListener(): void {}
  removeEventListener(): void {}
}

export class FakeRealtime {
  /** Every frame clients sent, in order, for assertions. */
  readonly received: { conn: FakeSocket; frame: Frame }[] = [];
  readonly sockets: FakeSocket[] = [];
  readonly urls: string[] = [];
  /** While true, new connections fail (the server is unreachable). */
  refusing = false;
  /** Returns a refusal reason to reject a join, like Realtime Authorization does. */
  authorize?: (topic: string, config: Member["config"], accessToken?: string) => string | undefined;

  private members: Member[] = [];
  /** topic → presence key → metas (from clients' track, or added by the test). */
  private presences = new Map<string, Map<string, Meta[]>>();
  private refs = 0;

  /** The transport class to hand to createClient({ realtime: { transport } }). */
  readonly transport = ((server: FakeRealtime) =>
    class extends FakeSocket {
      constructor(url: string | URL) {
        super(String(url), server);
        server.urls.push(String(url));
      }
    })(this);

  get openSockets(): FakeSocket[] {
    return this.sockets.filter((s) => s.readyState === OPEN);
  }

  accept(conn: FakeSocket): void {
    this.sockets.push(conn);
  }

  /** Frames of one event (phx_join, presence, ...) on one topic ("realtime:" added). */
  frames(event: string, topic?: string): Frame[] {
    return this.received.map((r) => r.frame).filter((f) =>
      f[3] === event && (topic === undefined || f[2] === `realtime:${topic}`)
    );
  }

  /** Members joined to a topic now. */
  joined(topic: string): Member[] {
    return this.members.filter((m) => m.topic === `realtime:${topic}`);
  }

  receive(conn: FakeSocket, frame: Frame): void {
    this.received.push({ conn, frame });
    const [joinRef, ref, topic, event, payload] = frame;
    const reply = (status: "ok" | "error", response: Record<string, unknown> = {}) =>
      conn.deliver([joinRef, ref, topic, "phx_reply", { status, response }]);
    if (topic === "phoenix") {
      if (event === "heartbeat") reply("ok");
      return;
    }
    const member = this.members.find((m) => m.conn === conn && m.topic === topic);
    switch (event) {
      case "phx_join": {
        if (member) this.removeMember(member);
        const config = (payload.config ?? {}) as Member["config"];
        const token = payload.access_token as string | undefined;
        const refusal = this.authorize?.(topic.replace(/^realtime:/, ""), config, token);
        if (refusal) return reply("error", { reason: refusal });
        const m: Member = {
          conn,
          topic,
          joinRef: joinRef!,
          config,
          accessToken: token,
          presenceKey: config.presence?.key || crypto.randomUUID(),
        };
        this.members.push(m);
        reply("ok", { postgres_changes: [] });
        if (config.presence?.enabled) {
          conn.deliver([m.joinRef, null, topic, "presence_state", this.state(topic)]);
        }
        return;
      }
      case "phx_leave":
        if (member) this.removeMember(member);
        return reply("ok");
      case "access_token":
        if (member) member.accessToken = payload.access_token as string;
        return;
      case "presence": {
        if (!member) return reply("error", { reason: "not joined" });
        const inner = payload as { event?: string; payload?: Record<string, unknown> };
        if (inner.event === "track") {
          const previous = member.presenceRef;
          member.presenceRef = this.ref();
          const meta = { ...(inner.payload ?? {}), phx_ref: member.presenceRef };
          const old = previous ? this.removeMeta(topic, member.presenceKey, previous) : undefined;
          this.addMeta(topic, member.presenceKey, meta);
          this.diff(
            topic,
            { [member.presenceKey]: { metas: [meta] } },
            old ? { [member.presenceKey]: { metas: [old] } } : {},
          );
        } else if (inner.event === "untrack") {
          this.untrack(member);
        }
        return reply("ok");
      }
      case "broadcast": {
        if (!member) return;
        for (const m of this.members) {
          if (m.topic !== topic || (m === member && !member.config.broadcast?.self)) continue;
          m.conn.deliver([null, null, topic, "broadcast", payload]);
        }
        return reply("ok");
      }
      default:
        return reply("ok");
    }
  }

  disconnect(conn: FakeSocket): void {
    for (const m of this.members.filter((m) => m.conn === conn)) this.removeMember(m);
  }

  // --- what tests do to the "other side" ---

  /** Another client (not one under test) tracks presence; returns its phx_ref. */
  presenceJoin(topic: string, key: string, payload: Record<string, unknown> = {}): string {
    const t = `realtime:${topic}`;
    const meta = { ...payload, phx_ref: this.ref() };
    this.addMeta(t, key, meta);
    this.diff(t, { [key]: { metas: [meta] } }, {});
    return meta.phx_ref;
  }

  /** That client leaves (one device, by ref, or every device of the key). */
  presenceLeave(topic: string, key: string, ref?: string): void {
    const t = `realtime:${topic}`;
    const metas = (this.presences.get(t)?.get(key) ?? []).filter((m) => !ref || m.phx_ref === ref);
    for (const m of metas) this.removeMeta(t, key, m.phx_ref);
    if (metas.length) this.diff(t, {}, { [key]: { metas } });
  }

  /** A broadcast as Realtime delivers realtime.send() rows or REST broadcasts. */
  broadcast(topic: string, event: string, payload: Record<string, unknown>): void {
    const t = `realtime:${topic}`;
    for (const m of this.members.filter((m) => m.topic === t)) {
      m.conn.deliver([null, null, t, "broadcast", { type: "broadcast", event, payload }]);
    }
  }

  /** The server closes a channel (as Realtime does when a token expires). */
  closeChannel(topic: string): void {
    const t = `realtime:${topic}`;
    for (const m of this.members.filter((m) => m.topic === t)) {
      this.removeMember(m);
      m.conn.deliver([m.joinRef, null, t, "phx_close", {}]);
    }
  }

  /** Every connection is lost at once. */
  dropAll(): void {
    for (const s of this.openSockets) s.drop();
  }

  // --- internals ---

  private ref(): string {
    return `srv-${++this.refs}`;
  }

  private state(topic: string): Record<string, { metas: Meta[] }> {
    const out: Record<string, { metas: Meta[] }> = {};
    for (const [key, metas] of this.presences.get(topic) ?? []) out[key] = { metas: [...metas] };
    return out;
  }

  private addMeta(topic: string, key: string, meta: Meta): void {
    let byKey = this.presences.get(topic);
    if (!byKey) this.presences.set(topic, byKey = new Map());
    byKey.set(key, [...(byKey.get(key) ?? []), meta]);
  }

  private removeMeta(topic: string, key: string, ref: string): Meta | undefined {
    const byKey = this.presences.get(topic);
    const metas = byKey?.get(key) ?? [];
    const found = metas.find((m) => m.phx_ref === ref);
    const rest = metas.filter((m) => m.phx_ref !== ref);
    if (rest.length) byKey!.set(key, rest);
    else byKey?.delete(key);
    return found;
  }

  private untrack(member: Member): void {
    if (!member.presenceRef) return;
    const old = this.removeMeta(member.topic, member.presenceKey, member.presenceRef);
    member.presenceRef = undefined;
    if (old) this.diff(member.topic, {}, { [member.presenceKey]: { metas: [old] } });
  }

  private removeMember(member: Member): void {
    this.members = this.members.filter((m) => m !== member);
    this.untrack(member);
  }

  private diff(
    topic: string,
    joins: Record<string, { metas: Meta[] }>,
    leaves: Record<string, { metas: Meta[] }>,
  ): void {
    for (const m of this.members) {
      if (m.topic !== topic || !m.config.presence?.enabled) continue;
      m.conn.deliver([m.joinRef, null, topic, "presence_diff", { joins, leaves }]);
    }
  }
}

/** Polls until `check` holds (or throws after `timeoutMs`). */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
