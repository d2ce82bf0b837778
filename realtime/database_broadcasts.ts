// Database broadcasts: every row committed to realtime.messages (realtime.send() and
// realtime.broadcast_changes() write them) reaches the topic's members. Hosted Realtime streams
// them by logical replication (supabase/realtime lib/realtime/tenants/replication_connection.ex):
// it ensures the publication supabase_realtime_messages_publication FOR TABLE
// realtime.messages, creates a TEMPORARY pgoutput slot and fans each insert out. So do we, with
// postgres.js's replication client: no polling, no trigger, and rows committed while no slot
// exists are never delivered, as hosted.
import postgres from "postgres";

export const PUBLICATION = "supabase_realtime_messages_publication";

export interface DatabaseMessage {
  id: string;
  topic: string;
  event: string;
  private: boolean;
  payload: unknown;
  /** When the row was inserted (the server's clock), for the latency metric. */
  insertedAt?: Date;
}

export type Log = (level: "info" | "warn" | "error", msg: string, data?: object) => void;

/**
 * Keeps one replication stream open and hands every broadcast row to `deliver`. postgres.js
 * reconnects a stream that drops, once; when that fails (the database is down for longer) a
 * watchdog notices the stream has had no backend for a few seconds and starts a new one (a new
 * temporary slot), with capped backoff.
 */
export class DatabaseBroadcasts {
  private sql?: postgres.Sql;
  private stopped = false;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private watchdog?: ReturnType<typeof setInterval>;
  private pruner?: ReturnType<typeof setInterval>;
  private attempt = 0;
  /** The stream's backend (postgres.js clears pid while the stream is down). */
  private stream?: { pid?: number };
  private downSince?: number;
  received = 0;
  restarts = 0;

  get connected(): boolean {
    return this.stream?.pid !== undefined;
  }

  constructor(
    private readonly url: string,
    private readonly deliver: (m: DatabaseMessage) => void,
    private readonly log: Log,
    private readonly retentionMinutes = 10,
  ) {}

  start(): void {
    void this.connect();
    this.watchdog ??= setInterval(() => this.check(), 1000);
    this.pruner ??= setInterval(() => void this.prune(), 60_000);
  }

  /** Hosted Realtime keeps realtime.messages in daily partitions and drops old ones; the
   * local table is not partitioned, so old rows are deleted instead, keeping the last
   * `retentionMinutes` (REALTIME_MESSAGES_RETENTION_MINUTES). */
  private async prune(): Promise<void> {
    const admin = postgres(this.url, { max: 1, onnotice: () => {}, connect_timeout: 5 });
    try {
      await admin`delete from realtime.messages
                  where inserted_at < now() - make_interval(mins => ${this.retentionMinutes})`;
    } catch (e) {
      this.log("warn", "database broadcasts: pruning realtime.messages failed", {
        error: String(e),
      });
    } finally {
      await admin.end({ timeout: 1 });
    }
  }

  private check(): void {
    if (this.stopped || !this.stream || this.stream.pid !== undefined) {
      this.downSince = undefined;
      return;
    }
    this.downSince ??= performance.now();
    if (performance.now() - this.downSince < 4000) return;
    this.downSince = undefined;
    this.restarts++;
    this.log("warn", "database broadcasts: replication stream lost, starting a new one");
    const old = this.sql;
    this.sql = this.stream = undefined;
    void old?.end({ timeout: 0 }).catch(() => {});
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.ensurePublication();
      const sql = postgres(this.url, {
        publications: PUBLICATION,
        onnotice: () => {},
        connect_timeout: 5,
        connection: { application_name: "sltr-realtime-replication" },
      });
      this.sql = sql;
      const handle = await sql.subscribe(
        "insert:realtime.messages",
        (row) => this.onRow(row),
        () => {
          this.attempt = 0;
        },
      );
      // At run time the handle also carries the stream's state (pid while connected).
      this.stream = (handle as unknown as { state: { pid?: number } }).state;
      this.log("info", "database broadcasts: replication started", { publication: PUBLICATION });
    } catch (e) {
      const sql = this.sql;
      this.sql = this.stream = undefined;
      await sql?.end({ timeout: 0 }).catch(() => {});
      const delay = Math.min(10_000, 250 * 2 ** this.attempt++);
      this.log("warn", "database broadcasts: replication unavailable, retrying", {
        error: String((e as Error)?.message ?? e),
        retry_ms: delay,
      });
      this.retryTimer = setTimeout(() => void this.connect(), delay);
    }
  }

  /** Hosted Realtime creates the publication when it first connects (connect.ex). */
  private async ensurePublication(): Promise<void> {
    const admin = postgres(this.url, { max: 1, onnotice: () => {}, connect_timeout: 5 });
    try {
      await admin.unsafe(`do $$ begin
        if not exists (select from pg_publication where pubname = '${PUBLICATION}') then
          create publication ${PUBLICATION} for table realtime.messages;
        end if;
      end $$`);
    } finally {
      await admin.end({ timeout: 1 });
    }
  }

  private onRow(row: postgres.Row | null): void {
    if (!row) return;
    const { id, topic, event, payload, extension } = row;
    // Only broadcasts that carry what a message needs (replication_connection.ex).
    if (extension !== "broadcast" || typeof topic !== "string" || typeof event !== "string") return;
    if (typeof id !== "string" || payload === null || payload === undefined) return;
    this.received++;
    const inserted = row.inserted_at;
    this.deliver({
      id,
      topic,
      event,
      private: row.private === true,
      payload,
      insertedAt: inserted instanceof Date ? inserted : undefined,
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.watchdog);
    clearInterval(this.pruner);
    await this.sql?.end({ timeout: 1 }).catch(() => {});
  }
}
