// Database broadcasts: every row committed to realtime.messages (realtime.send() and
// realtime.broadcast_changes() write them) reaches the topic's members. Hosted Realtime streams
// them by logical replication (supabase/realtime lib/realtime/tenants/replication_connection.ex):
// it ensures the publication supabase_realtime_messages_publication FOR TABLE
// realtime.messages, creates a TEMPORARY pgoutput slot and fans each insert out. So do we, with
// postgres.js's replication client: no polling, no trigger, and rows committed while no slot
// exists are never delivered, as hosted.
//
// realtime.messages is partitioned by day (supabase/bootstrap.sql, as hosted); this connection
// keeps its partitions as hosted Realtime does: created from yesterday to three days ahead when
// it connects (lib/realtime/tenants/migrations.ex create_partitions) and by the janitor, which
// also drops the days past retention (lib/realtime/tenants/janitor.ex: every
// JANITOR_SCHEDULE_TIMER_IN_MS, 4 hours, plus 1 to 59 random minutes).
import postgres from "postgres";
import { createMessagesPartitions, deleteOldMessages } from "./partitions.ts";

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
  private janitor?: ReturnType<typeof setTimeout>;
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
    /** The janitor's period (JANITOR_SCHEDULE_TIMER_IN_MS); 1 to 59 random minutes are added. */
    private readonly janitorIntervalMs = 4 * 3_600_000,
  ) {}

  start(): void {
    void this.connect();
    this.watchdog ??= setInterval(() => this.check(), 1000);
    this.scheduleJanitor();
  }

  private scheduleJanitor(): void {
    if (this.stopped) return;
    const jitter = (1 + Math.floor(Math.random() * 59)) * 60_000;
    this.janitor = setTimeout(async () => {
      await this.admin(async (sql) => {
        const dropped = await deleteOldMessages(sql);
        await createMessagesPartitions(sql);
        this.log("info", "janitor: realtime.messages partitions kept", { dropped });
      }).catch((e) =>
        this.log("error", "JanitorFailedToDeleteOldMessages", { error: String(e?.message ?? e) })
      );
      this.scheduleJanitor();
    }, this.janitorIntervalMs + jitter);
  }

  private async admin(work: (sql: postgres.Sql) => Promise<void>): Promise<void> {
    const sql = postgres(this.url, { max: 1, onnotice: () => {}, connect_timeout: 5 });
    try {
      await work(sql);
    } finally {
      await sql.end({ timeout: 1 });
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
      await this.admin(async (sql) => {
        await createMessagesPartitions(sql);
        await ensurePublication(sql);
      });
      const sql = postgres(this.url, {
        publications: PUBLICATION,
        onnotice: () => {},
        connect_timeout: 5,
        connection: { application_name: "sltr-realtime-replication" },
      });
      this.sql = sql;
      // The stream names the partition a row went to (realtime.messages_2026_12_07), not the
      // parent, so every insert is taken and the partitions picked by name, as hosted does
      // (replication_connection.ex: schema realtime, table starting with "messages").
      const handle = await sql.subscribe(
        "insert",
        (row, info) => {
          const { schema, table } = (info as unknown as { relation: Relation }).relation;
          if (schema === "realtime" && table.startsWith("messages")) this.onRow(row);
        },
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
    clearTimeout(this.janitor);
    await this.sql?.end({ timeout: 1 }).catch(() => {});
  }
}

interface Relation {
  schema: string;
  table: string;
}

/** Hosted Realtime creates the publication when it connects and recreates it when it does not
 * publish realtime.messages (replication_connection.ex); converting the table to partitions
 * (supabase/bootstrap.sql) drops it from the publication. */
async function ensurePublication(sql: postgres.Sql): Promise<void> {
  await sql.unsafe(`do $$ begin
    if not exists (
      select from pg_publication_rel as rel
      join pg_publication as pub on pub.oid = rel.prpubid
      where pub.pubname = '${PUBLICATION}' and rel.prrelid = 'realtime.messages'::regclass
    ) then
      drop publication if exists ${PUBLICATION};
      create publication ${PUBLICATION} for table realtime.messages;
    end if;
  end $$`);
}
