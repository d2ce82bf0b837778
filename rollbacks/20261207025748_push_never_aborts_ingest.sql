-- Undo 20261207025748_push_never_aborts_ingest: back to the schema before it, keeping the data
-- (the failure log and the two settings it added go; inbox messages are no longer pruned).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

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
    'alerts', (
      select coalesce(jsonb_agg(to_jsonb(a)), '[]'::jsonb) from monitoring.check_alerts() as a
    )
  )
$$;

comment on function monitoring.metrics_snapshot() is
  'Every database-side figure of GET /functions/v1/metrics as one jsonb value: users_online, '
  'presence (monitoring.presence_pipeline), connections (monitoring.connections), '
  'slowest_query_p95_ms, cron_jobs and the alerts firing now (check_alerts).';

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
$$;

comment on function monitoring.check_alerts() is
  'The alerts that fire now, one row each (alert, severity, value, threshold, message): those '
  'of check_core_alerts(), and replica_lag and replica_disconnected (replication_status()). '
  'Thresholds in monitoring.settings.';

drop function monitoring.push_health();

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.unschedule(j.jobid)
    from cron.job as j
    where j.jobname = 'presence-inbox-prune';
  end if;
end
$$;

drop function private.prune_presence_inboxes();

drop function private.push_status_changes(jsonb);
alter function private.write_status_messages(jsonb) rename to push_status_changes;
grant execute on function private.push_status_changes(jsonb) to service_role;

comment on function private.push_status_changes(jsonb) is
  'Sends status changes [{user_id, is_online, last_seen_at}] to the inboxes of their online '
  'watchers (favorites and unexpired watch_presence lists): one message per watcher. Called by '
  'ingest_presence and expire_stale_presence in their transaction. Returns messages sent.';

delete from monitoring.settings
where name in ('push_failure_window_seconds', 'presence_inbox_retention_seconds');

drop table monitoring.push_failures;
