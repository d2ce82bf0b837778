// realtime.messages partitions kept as hosted Realtime keeps them (realtime/partitions.ts): one
// per day from yesterday to three days ahead, and days before (now - 72 h) dropped. Run in
// 2020, so that the stack's own partitions are never touched.
import assert from "node:assert/strict";
import { createMessagesPartitions, deleteOldMessages } from "../../realtime/partitions.ts";
import { test } from "../_lib/harness.ts";
import { database } from "./_helpers.ts";

test("partitions_span_yesterday_to_three_days_ahead_and_go_after_72_hours", async () => {
  const sql = database();
  const days = async () =>
    (await sql<{ name: string }[]>`
      select c.relname as name from pg_inherits as i join pg_class as c on c.oid = i.inhrelid
      where i.inhparent = 'realtime.messages'::regclass and c.relname like 'messages_2020_%'
      order by 1`).map((r) => r.name);
  try {
    const now = Date.UTC(2020, 0, 10, 23, 30);
    await createMessagesPartitions(sql, now);
    await createMessagesPartitions(sql, now); // twice: nothing new
    assert.deepEqual(await days(), [
      "messages_2020_01_09",
      "messages_2020_01_10",
      "messages_2020_01_11",
      "messages_2020_01_12",
      "messages_2020_01_13",
    ]);
    const [owner] = await sql<{ owner: string }[]>`
      select pg_get_userbyid(relowner) as owner from pg_class
      where oid = 'realtime.messages_2020_01_11'::regclass`;
    assert.equal(owner.owner, "supabase_realtime_admin");
    const [row] = await sql<{ partition: string }[]>`
      with sent as (
        insert into realtime.messages (topic, extension, private, inserted_at)
        values ('partition-probe', 'broadcast', true, '2020-01-11 12:00')
        returning tableoid::regclass::text as partition
      ) select partition from sent`;
    assert.equal(row.partition, "realtime.messages_2020_01_11", "a row goes to its day");

    // 72 hours after 2020-01-13 01:00 is 2020-01-10: the 9th goes, the 10th stays.
    const dropped = await deleteOldMessages(sql, Date.UTC(2020, 0, 13, 1));
    assert.deepEqual(dropped, ["messages_2020_01_09"]);
    assert.equal((await days())[0], "messages_2020_01_10");
    assert.ok(
      (await deleteOldMessages(sql, Date.now())).every((n) => n.startsWith("messages_2020_")),
      "today's janitor drops only what is past retention",
    );
    const today = `realtime.messages_${new Date().toISOString().slice(0, 10).replaceAll("-", "_")}`;
    const [kept] = await sql<{ oid: string | null }[]>`select to_regclass(${today})::text as oid`;
    assert.equal(kept.oid, today, "today's partition is kept");
  } finally {
    await deleteOldMessages(sql, Date.UTC(2020, 0, 31));
    await sql.end();
  }
});
