-- A failed push never costs presence, and the inboxes stay small (docs/realtime.md).
--
-- private.push_status_changes writes the inbox messages in the transaction of ingest_presence
-- and expire_stale_presence. On hosted Supabase realtime.messages is partitioned by day and
-- Realtime creates the partitions only from yesterday to three days ahead, when it connects
-- and when its janitor runs: a day without a partition makes the insert fail (23514), and with
-- it the whole ingest. The push now runs in its own subtransaction: when it fails, the
-- presence write commits, a warning is logged (as realtime.send logs
-- ErrorSendingBroadcastMessage), and the failure is recorded in monitoring.push_failures,
-- which the push_failed alert and the metrics read. A cancel (statement_timeout) still aborts.
--
-- Inbox rows are needed only until Realtime has streamed them from the WAL (hosted never
-- replays them), but hosted keeps each day's partition for 72 hours: at 50k online that is
-- about 150 GB a day. presence-inbox-prune (pg_cron, every minute) deletes the inbox messages
-- older than presence_inbox_retention_seconds (monitoring.settings, 60), so the table holds
-- two minutes of them. Hosted grants postgres delete on realtime.messages for this.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create table monitoring.push_failures (
  id bigint generated always as identity primary key,
  failed_at timestamptz not null default pg_catalog.now(),
  sqlstate text not null,
  error text not null,
  changes bigint not null
);

comment on table monitoring.push_failures is
  'One row per call of private.push_status_changes that failed and sent nothing (its presence '
  'write committed): when, the SQLSTATE and message, and how many status changes were not '
  'pushed. Read by the push_failed alert and metrics_snapshot; rows older than 7 days go.';
comment on column monitoring.push_failures.failed_at is 'When the push failed.';
comment on column monitoring.push_failures.sqlstate is 'The error''s SQLSTATE, e.g. 23514 (no partition of realtime.messages for the row).';
comment on column monitoring.push_failures.error is 'The error message.';
comment on column monitoring.push_failures.changes is 'Status changes of the call that reached no inbox.';

create index push_failures_failed_at_idx on monitoring.push_failures (failed_at);

revoke all on monitoring.push_failures from public;
grant select on monitoring.push_failures to service_role;

insert into monitoring.settings (name, value, description) values
  ('push_failure_window_seconds', 900,
    'push_failed fires while a push failed within this many seconds.'),
  ('presence_inbox_retention_seconds', 60,
    'presence-inbox-prune deletes inbox messages (presence:user:*) older than this many seconds.');

-- The insert itself, unchanged, under a new name; push_status_changes wraps it.
alter function private.push_status_changes(jsonb) rename to write_status_messages;
revoke execute on function private.write_status_messages(jsonb) from service_role;

comment on function private.write_status_messages(jsonb) is
  'Writes status changes [{user_id, is_online, last_seen_at}] to the inboxes of their online '
  'watchers (favorites and unexpired watch_presence lists): one message per watcher, one '
  'insert. Returns messages sent. Called only by push_status_changes.';

create function private.push_status_changes(changes jsonb)
returns integer
language plpgsql volatile security definer set search_path = ''
as $$
declare
  failed_state text;
  failed_message text;
begin
  return private.write_status_messages(changes);
exception when others then
  get stacked diagnostics failed_state = returned_sqlstate, failed_message = message_text;
  raise warning 'ErrorSendingStatusChanges: %', failed_message;
  delete from monitoring.push_failures
  where failed_at < pg_catalog.now() - interval '7 days';
  insert into monitoring.push_failures (sqlstate, error, changes)
  values (failed_state, failed_message, coalesce(jsonb_array_length(changes), 0));
  return 0;
end
$$;

comment on function private.push_status_changes(jsonb) is
  'Sends status changes [{user_id, is_online, last_seen_at}] to the inboxes of their online '
  'watchers (write_status_messages), in its own subtransaction. Called by ingest_presence and '
  'expire_stale_presence in their transaction. Returns messages sent; a failure (e.g. no '
  'realtime.messages partition) sends none, returns 0, is recorded in monitoring.push_failures '
  'and leaves the caller''s transaction intact.';

revoke execute on function private.push_status_changes(jsonb) from public, anon, authenticated;
grant execute on function private.push_status_changes(jsonb) to service_role;

create function private.prune_presence_inboxes()
returns integer
language sql volatile security definer set search_path = ''
as $$
  with pruned as (
    delete from realtime.messages as m
    where m.topic like 'presence:user:%'
      and m.extension = 'broadcast'
      and m.private
      and m.inserted_at < (pg_catalog.now() at time zone 'utc')
        - make_interval(secs => coalesce(monitoring.setting('presence_inbox_retention_seconds'), 60))
    returning 1
  )
  select count(*)::integer from pruned
$$;

comment on function private.prune_presence_inboxes() is
  'Deletes inbox messages (topics presence:user:*) older than presence_inbox_retention_seconds: '
  'Realtime has streamed them from the WAL by then and never reads them again. Run every minute '
  'by the pg_cron job presence-inbox-prune. Returns rows deleted.';

revoke execute on function private.prune_presence_inboxes() from public, anon, authenticated;

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.schedule('presence-inbox-prune', '* * * * *',
      'select private.prune_presence_inboxes()');
  end if;
end
$$;

create function monitoring.push_health()
returns table (failures bigint, changes_lost bigint, seconds_since_last_failure double precision,
  last_sqlstate text, last_error text)
language sql stable security definer set search_path = ''
as $$
  select count(*), coalesce(sum(f.changes), 0),
         extract(epoch from pg_catalog.now() - max(f.failed_at))::double precision,
         (array_agg(f.sqlstate order by f.failed_at desc))[1],
         (array_agg(f.error order by f.failed_at desc))[1]
  from monitoring.push_failures as f
  where f.failed_at > pg_catalog.now()
    - make_interval(secs => coalesce(monitoring.setting('push_failure_window_seconds'), 900))
$$;

comment on function monitoring.push_health() is
  'Failed pushes within push_failure_window_seconds: how many, the status changes they did not '
  'push, seconds since the last one and its SQLSTATE and message. Service role only.';

revoke execute on function monitoring.push_health() from public;
grant execute on function monitoring.push_health() to service_role;

create or replace function monitoring.check_alerts()
returns table (alert text, severity text, value double precision, threshold double precision, message text)
language sql stable security definer set search_path = ''
as $$
  select * from monitoring.check_core_alerts()
  union all
  select 'replica_lag', 'warning', r.replay_lag_seconds, t.limit_value,
    format('Standby %s replays %s s (%s bytes) behind the primary, above %s s: reads leave it '
      '(SLTR_REPLICA_MAX_LAG_MS) and go to the primary. See monitoring.replication_status().',
      coalesce(r.slot_name, r.application_name), round(r.replay_lag_seconds::numeric, 2),
      r.replay_lag_bytes, t.limit_value)
  from monitoring.replication_status() as r,
       (select monitoring.setting('replica_lag_alert_seconds') as limit_value) as t
  where r.replay_lag_seconds > t.limit_value
  union all
  select 'replica_disconnected', 'critical', r.retained_bytes::double precision, 0::double precision,
    format('Nobody streams from replication slot %s: its replica is down or cut off (reads go to '
      'the primary), and the slot holds back %s bytes of WAL (max_slot_wal_keep_size bounds it).',
      r.slot_name, r.retained_bytes)
  from monitoring.replication_status() as r
  where r.slot_name is not null and not r.active
  union all
  select 'push_failed', 'critical', p.failures::double precision, 0::double precision,
    format('%s pushes failed in the last %s s (%s status changes reached no inbox; presence was '
      'recorded). Last: %s %s. 23514 means realtime.messages has no partition for today: Realtime '
      'creates them when it connects and every 4 hours (docs/realtime.md). See '
      'monitoring.push_failures.', p.failures,
      coalesce(monitoring.setting('push_failure_window_seconds'), 900), p.changes_lost,
      p.last_sqlstate, p.last_error)
  from monitoring.push_health() as p
  where p.failures > 0
$$;

comment on function monitoring.check_alerts() is
  'The alerts that fire now, one row each (alert, severity, value, threshold, message): those '
  'of check_core_alerts(), replica_lag and replica_disconnected (replication_status()), and '
  'push_failed (push_health()). Thresholds in monitoring.settings.';

create or replace function monitoring.metrics_snapshot()
returns jsonb
language sql stable security definer set search_path = ''
as $$
  select jsonb_build_object(
    'users_online', monitoring.users_online(),
    'presence', (select to_jsonb(p) from monitoring.presence_pipeline as p),
    'connections', (select to_jsonb(c) from monitoring.connections as c),
    'slowest_query_p95_ms', (
      select max(q.p95_ms)
      from monitoring.statement_stats(false) as q,
           (select coalesce(monitoring.setting('query_min_calls'), 1) as min_calls) as t
      where q.calls >= t.min_calls
    ),
    'cron_jobs', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'jobname', coalesce(c.jobname, c.jobid::text),
        'is_active', c.is_active,
        'failures_in_window', c.failures_in_window,
        'seconds_since_last_success', extract(epoch from pg_catalog.now() - c.last_success_at),
        'last_success_seconds', c.last_success_seconds
      ) order by c.jobid), '[]'::jsonb)
      from monitoring.cron_jobs as c
    ),
    'push', (select to_jsonb(p) from monitoring.push_health() as p),
    'alerts', (
      select coalesce(jsonb_agg(to_jsonb(a)), '[]'::jsonb) from monitoring.check_alerts() as a
    )
  )
$$;

comment on function monitoring.metrics_snapshot() is
  'Every database-side figure of GET /functions/v1/metrics as one jsonb value: users_online, '
  'presence (monitoring.presence_pipeline), connections (monitoring.connections), '
  'slowest_query_p95_ms, cron_jobs, push (push_health) and the alerts firing now (check_alerts).';
