-- Read replicas, seen from the primary (docs/replica.md): monitoring.replication_status() has
-- one row per physical replication slot or standby (its state and replay lag, in time and in
-- bytes), and monitoring.check_alerts() gains two alerts: replica_lag (a standby replaying
-- more than replica_lag_alert_seconds behind: reads leave it, and status would reach readers
-- late) and replica_disconnected (a physical slot nobody streams from, holding back WAL).
-- The alerts that were already there stay in one function, renamed check_core_alerts;
-- check_alerts is now both, so that functions/metrics and every caller are unchanged. The
-- functions measure the same lag from the replica's side (sltr_db_replica_lag_seconds).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

insert into monitoring.settings (name, value, description) values
  ('replica_lag_alert_seconds', 1,
    'replica_lag fires when a standby replays more than this many seconds behind the primary.');

create function monitoring.replication_status()
returns table (
  slot_name text,
  application_name text,
  state text,
  active boolean,
  replay_lag_seconds double precision,
  replay_lag_bytes numeric,
  retained_bytes numeric
)
language sql stable security definer set search_path = ''
as $$
  -- Physical slots with whoever streams from them, and standbys streaming without a slot.
  select s.slot_name::text, r.application_name::text, coalesce(r.state, 'disconnected'), s.active,
         extract(epoch from r.replay_lag)::double precision,
         pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.replay_lsn),
         pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)
  from pg_catalog.pg_replication_slots as s
  left join pg_catalog.pg_stat_replication as r on r.pid = s.active_pid
  where s.slot_type = 'physical'
  union all
  select null, r.application_name::text, r.state, true,
         extract(epoch from r.replay_lag)::double precision,
         pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.replay_lsn), null
  from pg_catalog.pg_stat_replication as r
  -- a logical walsender (Realtime's) always streams from a slot, so these are physical
  where not exists (select from pg_catalog.pg_replication_slots as s where s.active_pid = r.pid)
$$;

comment on function monitoring.replication_status() is
  'One row per physical replication slot or standby streaming from this primary: state '
  '(streaming, catchup, disconnected), replay lag in seconds (null once caught up and idle) '
  'and bytes, and the WAL the slot retains. Service role only.';

revoke execute on function monitoring.replication_status() from public;
grant execute on function monitoring.replication_status() to service_role;

alter function monitoring.check_alerts() rename to check_core_alerts;

comment on function monitoring.check_core_alerts() is
  'The alerts of the pooler, the statements, the presence pipeline and pg_cron (see '
  'check_alerts): server_connections_high, slow_query (p95 estimated as mean + 2 * stddev), '
  'flush_lag, buffer_depth, flush_job_inactive, cron_job_failed. Thresholds in monitoring.settings.';

create function monitoring.check_alerts()
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

revoke execute on function monitoring.check_alerts() from public;
grant execute on function monitoring.check_alerts() to service_role;
