// realtime.messages is partitioned by day on inserted_at, and Realtime itself keeps the
// partitions: when it connects to the tenant's database and whenever its janitor runs, it
// creates one per day from yesterday to three days ahead (lib/realtime/tenants.ex
// create_messages_partitions) and drops those whose day is before the day 72 hours ago
// (lib/realtime/messages.ex delete_old_messages; lib/realtime/tenants/janitor.ex runs both
// every JANITOR_SCHEDULE_TIMER_IN_MS, 4 hours, randomized). A row for a day without a
// partition fails with 23514 (no partition of relation "messages" found for row).
import postgres from "postgres";

const DAY_MS = 86_400_000;

/** `messages_2026_12_06` for the UTC day of `ms`. */
export function partitionName(ms: number): string {
  return `messages_${new Date(ms).toISOString().slice(0, 10).replaceAll("-", "_")}`;
}

function day(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Yesterday to three days ahead, created when missing (owned by supabase_realtime_admin). */
export async function createMessagesPartitions(sql: postgres.Sql, now = Date.now()) {
  for (let offset = -1; offset <= 3; offset++) {
    const start = now + offset * DAY_MS;
    const name = partitionName(start);
    await sql.unsafe(
      `create table if not exists realtime.${name} partition of realtime.messages
         for values from ('${day(start)}') to ('${day(start + DAY_MS)}');
       alter table realtime.${name} owner to supabase_realtime_admin`,
    );
  }
}

/** Drops the partitions of days before the day 72 hours ago; returns their names. */
export async function deleteOldMessages(sql: postgres.Sql, now = Date.now()): Promise<string[]> {
  const limit = partitionName(now - 3 * DAY_MS);
  const rows = await sql<{ name: string }[]>`
    select child.relname as name
    from pg_inherits
    join pg_class as parent on parent.oid = pg_inherits.inhparent
    join pg_class as child on child.oid = pg_inherits.inhrelid
    join pg_namespace as ns on ns.oid = child.relnamespace
    where parent.oid = 'realtime.messages'::regclass and ns.nspname = 'realtime'`;
  const old = rows.map((r) => r.name).filter((n) => /^messages_\d{4}_\d{2}_\d{2}$/.test(n))
    .filter((n) => n < limit);
  for (const name of old) await sql.unsafe(`drop table if exists realtime.${name}`);
  return old;
}
