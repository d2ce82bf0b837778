-- Issue 6, monitoring: so that on-call can see, in one place and from SQL alone, whether the
-- presence pipeline keeps up and whether Postgres is healthy. A `monitoring` schema, readable by
-- service_role only (never exposed to anon or authenticated), with:
--   * settings: the alert thresholds (one table, changed with a plain update);
--   * views over pg_stat_statements (query_stats, slow_queries), pg_stat_activity (activity,
--     connections), pg_cron (cron_jobs) and the presence buffer (presence_pipeline);
--   * check_alerts(): the alerts that fire now; metrics_snapshot(): every database figure the
--     metrics function exports, in one call.
--
-- Every view reads through a security definer function: pg_stat_activity and
-- pg_stat_statements hide other roles' query text from a plain service_role caller, and the
-- cron tables belong to their owner. The functions also guard what may be absent: pg_cron (not
-- installed in scratch databases, e.g. tests/migrations.sh), pg_stat_statements (installed in
-- schema extensions by the platform, but not everywhere) and the presence buffer; the
-- schema is the same everywhere and an absent source reads as no rows.
--
-- pg_stat_statements keeps no percentiles. The p95 used here is an estimate, mean + 2 *
-- stddev of the execution time (the 97.7th percentile of a normal distribution, so on the
-- safe side for the usual right-skewed latencies; a single very slow outlier inflates it).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create schema monitoring;

comment on schema monitoring is
  'Health of the database and the presence pipeline: views over pg_stat_statements, '
  'pg_stat_activity, pg_cron and the presence buffer, and check_alerts(). For service_role and '
  'on-call only; not exposed through the API.';

revoke all on schema monitoring from public;
grant usage on schema monitoring to service_role;

-- Thresholds. `value` null means "derived" (flush_interval_seconds: from the presence-flush
-- cron schedule).
create table monitoring.settings (
  name text primary key,
  value numeric,
  description text not null
);

comment on table monitoring.settings is
  'Alert thresholds and monitoring settings, one row each; change them with an update. Read by '
  'check_alerts() and metrics_snapshot().';
comment on column monitoring.settings.name is 'Setting name, e.g. pool_max_server_connections.';
comment on column monitoring.settings.value is 'Its value; null means derived (see description).';
comment on column monitoring.settings.description is 'What the setting means, with its unit.';

revoke all on monitoring.settings from public;
grant select on monitoring.settings to service_role;

insert into monitoring.settings (name, value, description) values
  ('pool_max_server_connections', 100,
    'The pooler cap on server connections (PgBouncer max_db_connections, Supavisor pool size).'),
  ('server_connections_alert_ratio', 0.8,
    'server_connections_high fires above this share of pool_max_server_connections.'),
  ('query_p95_alert_ms', 500,
    'slow_query fires for a statement whose estimated p95 (mean + 2 * stddev) exceeds this, in ms.'),
  ('query_min_calls', 10,
    'slow_query ignores statements called fewer times than this (one-off DDL, maintenance).'),
  ('flush_interval_seconds', null,
    'The presence flush interval in seconds; null derives it from the presence-flush cron schedule (default 60).'),
  ('flush_lag_alert_intervals', 2,
    'flush_lag fires when the oldest buffered event is older than this many flush intervals.'),
  ('buffer_depth_alert', 100000,
    'buffer_depth fires when the presence buffer holds more rows than this.'),
  ('cron_failure_window_seconds', 900,
    'cron_job_failed fires for a job with a failed run that started within this many seconds.');

-- A setting's value (null when unknown or derived).
create function monitoring.setting(setting_name text)
returns numeric
language sql stable security definer set search_path = ''
as $$
  select s.value from monitoring.settings as s where s.name = setting_name
$$;

comment on function monitoring.setting(text) is 'The value of one monitoring.settings row (null if absent).';

revoke execute on function monitoring.setting(text) from public;
grant execute on function monitoring.setting(text) to service_role;

-- The flush interval: the setting, else parsed from the presence-flush cron schedule.
create function monitoring.flush_interval_seconds()
returns double precision
language plpgsql stable security definer set search_path = ''
as $$
declare
  configured numeric := monitoring.setting('flush_interval_seconds');
  job_schedule text;
  parts text[];
begin
  if configured is not null then
    return configured;
  end if;
  if to_regclass('cron.job') is not null then
    select j.schedule into job_schedule
    from cron.job as j
    where j.jobname = 'presence-flush'
    order by j.jobid
    limit 1;
  end if;
  job_schedule := btrim(coalesce(job_schedule, ''));
  if job_schedule = '* * * * *' then
    return 60;
  end if;
  parts := regexp_match(job_schedule, '^\*/([0-9]+) \* \* \* \*$');
  if parts is not null then
    return parts[1]::double precision * 60;
  end if;
  parts := regexp_match(job_schedule, '^([0-9]+) seconds?$');
  if parts is not null then
    return parts[1]::double precision;
  end if;
  return 60;
end
$$;

comment on function monitoring.flush_interval_seconds() is
  'The presence flush interval in seconds: monitoring.settings flush_interval_seconds if set, else '
  'the presence-flush cron schedule (''* * * * *'' = 60, ''*/N * * * *'' = N * 60, ''N seconds'' = '
  'N), else 60.';

revoke execute on function monitoring.flush_interval_seconds() from public;
grant execute on function monitoring.flush_interval_seconds() to service_role;

-- pg_stat_statements with role and database names and the p95 estimate; empty without it.
-- with_text = false skips reading the query texts (a file read of every text): what the
-- alert check and the metrics scrape use.
create function monitoring.statement_stats(with_text boolean default true)
returns table (
  queryid bigint,
  role_name name,
  database_name name,
  calls bigint,
  total_ms double precision,
  mean_ms double precision,
  stddev_ms double precision,
  p95_ms double precision,
  max_ms double precision,
  rows bigint,
  query text
)
language plpgsql stable security definer set search_path = ''
as $$
begin
  if to_regprocedure('extensions.pg_stat_statements(boolean)') is null then
    return;
  end if;
  return query
    select s.queryid, r.rolname, d.datname, s.calls, s.total_exec_time, s.mean_exec_time,
           s.stddev_exec_time, s.mean_exec_time + 2 * s.stddev_exec_time, s.max_exec_time,
           s.rows, s.query
    from extensions.pg_stat_statements(with_text) as s
    left join pg_catalog.pg_roles as r on r.oid = s.userid
    left join pg_catalog.pg_database as d on d.oid = s.dbid;
exception
  -- Installed but not in shared_preload_libraries: no statistics to read.
  when object_not_in_prerequisite_state then
    return;
end
$$;

comment on function monitoring.statement_stats(boolean) is
  'Rows of extensions.pg_stat_statements with names and p95_ms = mean + 2 * stddev (an estimate: '
  'pg_stat_statements keeps no percentiles); query is null when with_text is false. Empty where '
  'the extension is absent or not loaded.';

revoke execute on function monitoring.statement_stats(boolean) from public;
grant execute on function monitoring.statement_stats(boolean) to service_role;

create view monitoring.query_stats as
  select * from monitoring.statement_stats(true);

comment on view monitoring.query_stats is
  'Every statement pg_stat_statements tracks, with total, mean, stddev, max and the p95 estimate '
  '(mean + 2 * stddev) in milliseconds.';

grant select on monitoring.query_stats to service_role;

create view monitoring.slow_queries as
  select q.*
  from monitoring.query_stats as q
  cross join (
    select coalesce(monitoring.setting('query_min_calls'), 1) as min_calls,
           monitoring.setting('query_p95_alert_ms') as p95_alert_ms
  ) as t
  where q.calls >= t.min_calls
    and q.p95_ms > t.p95_alert_ms
  order by q.p95_ms desc;

comment on view monitoring.slow_queries is
  'Statements called at least query_min_calls times whose p95 estimate exceeds query_p95_alert_ms, '
  'slowest first: what the slow_query alert reports.';

grant select on monitoring.slow_queries to service_role;

-- Sessions, with full query text for service_role (security definer).
create function monitoring.session_activity()
returns table (
  pid integer,
  backend_type text,
  role_name name,
  database_name name,
  application_name text,
  client_addr inet,
  state text,
  wait_event_type text,
  wait_event text,
  backend_started_at timestamptz,
  transaction_seconds double precision,
  query_seconds double precision,
  query text
)
language sql stable security definer set search_path = ''
as $$
  select a.pid, a.backend_type, a.usename, a.datname, a.application_name, a.client_addr, a.state,
         a.wait_event_type, a.wait_event, a.backend_start,
         extract(epoch from pg_catalog.now() - a.xact_start)::double precision,
         extract(epoch from pg_catalog.now() - a.query_start)::double precision,
         a.query
  from pg_catalog.pg_stat_activity as a
  where a.backend_type in ('client backend', 'pg_cron', 'pg_cron launcher')
$$;

comment on function monitoring.session_activity() is
  'pg_stat_activity for client backends and pg_cron workers, with query text visible to service_role.';

revoke execute on function monitoring.session_activity() from public;
grant execute on function monitoring.session_activity() to service_role;

create view monitoring.activity as
  select * from monitoring.session_activity();

comment on view monitoring.activity is
  'Current sessions (client backends, pg_cron workers): state, waits, transaction and query age in '
  'seconds, query text. Long transaction_seconds and Lock waits are what to look at first.';

grant select on monitoring.activity to service_role;

create view monitoring.connections as
  select count(*) filter (where a.backend_type = 'client backend') as server_connections,
         count(*) filter (where a.backend_type = 'client backend' and a.state = 'active') as active,
         count(*) filter (where a.backend_type = 'client backend' and a.state = 'idle') as idle,
         count(*) filter (where a.backend_type = 'client backend' and a.state like 'idle in transaction%') as idle_in_transaction,
         count(*) filter (where a.backend_type = 'client backend' and a.wait_event_type = 'Lock') as waiting_on_lock,
         monitoring.setting('pool_max_server_connections') as pool_cap,
         pg_catalog.current_setting('max_connections')::integer as max_connections
  from monitoring.activity as a;

comment on view monitoring.connections is
  'Server connections (client backends of the cluster: the pooler''s plus direct ones) by state, '
  'against the pooler cap (monitoring.settings pool_max_server_connections) and max_connections.';

grant select on monitoring.connections to service_role;

-- pg_cron jobs and their recent runs; empty without pg_cron.
create function monitoring.cron_job_status()
returns table (
  jobid bigint,
  jobname text,
  schedule text,
  is_active boolean,
  last_status text,
  last_started_at timestamptz,
  last_success_at timestamptz,
  last_success_seconds double precision,
  failures_in_window bigint,
  last_failure_at timestamptz,
  last_failure_message text
)
language plpgsql stable security definer set search_path = ''
as $$
declare
  window_start timestamptz :=
    pg_catalog.now() - make_interval(secs => coalesce(monitoring.setting('cron_failure_window_seconds'), 900)::double precision);
begin
  if to_regclass('cron.job') is null or to_regclass('cron.job_run_details') is null then
    return;
  end if;
  return query
    select j.jobid, j.jobname::text, j.schedule::text, j.active,
           last_run.status::text, last_run.start_time,
           last_success.end_time,
           extract(epoch from last_success.end_time - last_success.start_time)::double precision,
           coalesce(failures.n, 0),
           failures.last_at,
           failures.last_message
    from cron.job as j
    left join lateral (
      select d.status, d.start_time
      from cron.job_run_details as d
      where d.jobid = j.jobid
      order by d.start_time desc nulls last
      limit 1
    ) as last_run on true
    left join lateral (
      select d.start_time, d.end_time
      from cron.job_run_details as d
      where d.jobid = j.jobid and d.status = 'succeeded'
      order by d.end_time desc nulls last
      limit 1
    ) as last_success on true
    left join lateral (
      select count(*) as n,
             max(d.start_time) as last_at,
             (array_agg(d.return_message::text order by d.start_time desc))[1] as last_message
      from cron.job_run_details as d
      where d.jobid = j.jobid and d.status = 'failed' and d.start_time >= window_start
    ) as failures on true;
end
$$;

comment on function monitoring.cron_job_status() is
  'Every pg_cron job with its last run, last success (and its duration) and failed runs within '
  'cron_failure_window_seconds. Empty where pg_cron is not installed.';

revoke execute on function monitoring.cron_job_status() from public;
grant execute on function monitoring.cron_job_status() to service_role;

create view monitoring.cron_jobs as
  select * from monitoring.cron_job_status();

comment on view monitoring.cron_jobs is
  'pg_cron jobs: schedule, active, last run status, last success and its duration in seconds, '
  'recent failures with the last error message.';

grant select on monitoring.cron_jobs to service_role;

-- The presence pipeline in one row: buffer depth, flush lag, last flush. The buffer keeps a
-- heartbeat row per online user (an event that changes nothing stays as the user's last-seen
-- time, see 20261102000000_presence_buffer), so its oldest row says nothing about the flush.
-- The lag is the age of the oldest *pending* row: one the next flush_presence() would claim.
-- The predicate below mirrors flush_presence's claim; keep the two in step.
create function monitoring.presence_pipeline_status()
returns table (
  buffer_depth bigint,
  pending_rows bigint,
  oldest_pending_received_at timestamptz,
  flush_lag_seconds double precision,
  flush_interval_seconds double precision,
  flush_job_active boolean,
  last_flush_at timestamptz,
  last_flush_duration_seconds double precision,
  seconds_since_last_flush double precision,
  flush_failures_in_window bigint
)
language plpgsql stable security definer set search_path = ''
as $$
declare
  depth bigint;
  pending bigint;
  oldest timestamptz;
  job record;
begin
  if to_regclass('public.presence_buffer') is not null then
    select count(*), count(*) filter (where t.is_pending), min(t.received_at) filter (where t.is_pending)
    into depth, pending, oldest
    from (
      select b.received_at,
             p.last_seen_at is null
               or b.event_at <= p.last_seen_at
               or b.is_online <> p.is_online
               or not b.is_online
               or (b.latitude is not null
                 and (b.latitude, b.longitude) is distinct from (p.latitude, p.longitude)) as is_pending
      from public.presence_buffer as b
      join public.profiles as p on p.id = b.user_id
    ) as t;
  end if;
  select c.is_active, c.last_success_at, c.last_success_seconds, c.failures_in_window into job
  from monitoring.cron_job_status() as c
  where c.jobname = 'presence-flush'
  order by c.jobid
  limit 1;
  return query select
    depth,
    pending,
    oldest,
    case when depth is not null then coalesce(extract(epoch from pg_catalog.now() - oldest)::double precision, 0) end,
    monitoring.flush_interval_seconds(),
    job.is_active,
    job.last_success_at,
    job.last_success_seconds,
    extract(epoch from pg_catalog.now() - job.last_success_at)::double precision,
    job.failures_in_window;
end
$$;

comment on function monitoring.presence_pipeline_status() is
  'One row: presence_buffer depth (heartbeat rows included), pending rows (what the next '
  'flush_presence() applies) and the age of the oldest one (the flush lag, 0 when none), the '
  'flush interval, and the presence-flush cron job''s state, last success, its duration and '
  'recent failures (null without pg_cron or without the job).';

revoke execute on function monitoring.presence_pipeline_status() from public;
grant execute on function monitoring.presence_pipeline_status() to service_role;

create view monitoring.presence_pipeline as
  select * from monitoring.presence_pipeline_status();

comment on view monitoring.presence_pipeline is
  'The presence pipeline at a glance: buffer depth, pending rows, flush lag and interval in '
  'seconds, last successful presence-flush run and its duration, failures.';

grant select on monitoring.presence_pipeline to service_role;

-- Users online in real time: flushed online profiles without a newer offline event, plus
-- buffered online events newer than what was flushed. Both arms use indexes.
create function monitoring.users_online()
returns bigint
language plpgsql stable security definer set search_path = ''
as $$
begin
  if to_regclass('public.presence_buffer') is null then
    return (select count(*) from public.profiles as p where p.is_online);
  end if;
  return (
    select count(*)
    from public.profiles as p
    where p.is_online
      and not exists (
        select from public.presence_buffer as b
        where b.user_id = p.id and not b.is_online
          and (p.last_seen_at is null or b.event_at > p.last_seen_at)
      )
  ) + (
    select count(*)
    from public.presence_buffer as b
    join public.profiles as p on p.id = b.user_id
    where b.is_online and not p.is_online
      and (p.last_seen_at is null or b.event_at > p.last_seen_at)
  );
end
$$;

comment on function monitoring.users_online() is
  'How many users are online now, counting presence events not flushed yet (as get_online_users_batch does).';

revoke execute on function monitoring.users_online() from public;
grant execute on function monitoring.users_online() to service_role;

-- The alerts that fire now. One row per firing alert; nothing when all is well.
create function monitoring.check_alerts()
returns table (alert text, severity text, value double precision, threshold double precision, message text)
language plpgsql stable security definer set search_path = ''
as $$
declare
  conn record;
  pipe record;
  limit_value double precision;
  min_calls double precision;
begin
  select * into conn from monitoring.connections;
  limit_value := conn.pool_cap * coalesce(monitoring.setting('server_connections_alert_ratio'), 0.8);
  if conn.server_connections > limit_value then
    return query select 'server_connections_high', 'critical', conn.server_connections::double precision, limit_value,
      format('%s server connections, above %s%% of the pool cap of %s: requests will soon queue '
        'in the pooler. See monitoring.activity (long transactions, lock waits).',
        conn.server_connections, round(limit_value / conn.pool_cap * 100), conn.pool_cap);
  end if;

  -- Without query texts first (cheap); the texts are read only when something is slow.
  limit_value := monitoring.setting('query_p95_alert_ms');
  min_calls := coalesce(monitoring.setting('query_min_calls'), 1);
  if exists (
    select from monitoring.statement_stats(false) as q
    where q.calls >= min_calls and q.p95_ms > limit_value
  ) then
    return query
      select 'slow_query', 'warning', q.p95_ms, limit_value,
        format('queryid %s (%s on %s): p95 ~ %s ms (mean + 2 stddev) over %s calls: %s',
          q.queryid, q.role_name, q.database_name, round(q.p95_ms::numeric, 1), q.calls,
          left(regexp_replace(q.query, '\s+', ' ', 'g'), 200))
      from monitoring.statement_stats(true) as q
      where q.calls >= min_calls and q.p95_ms > limit_value
      order by q.p95_ms desc
      limit 5;
  end if;

  select * into pipe from monitoring.presence_pipeline;
  limit_value := pipe.flush_interval_seconds * coalesce(monitoring.setting('flush_lag_alert_intervals'), 2);
  if pipe.flush_lag_seconds > limit_value then
    return query select 'flush_lag', 'critical', pipe.flush_lag_seconds, limit_value,
      format('The oldest pending presence event was received %s s ago (%s rows pending, flush '
        'interval %s s): the flush is not keeping up or not running. See monitoring.cron_jobs.',
        round(pipe.flush_lag_seconds::numeric), pipe.pending_rows, pipe.flush_interval_seconds);
  end if;

  limit_value := monitoring.setting('buffer_depth_alert');
  if pipe.buffer_depth > limit_value then
    return query select 'buffer_depth', 'warning', pipe.buffer_depth::double precision, limit_value,
      format('The presence buffer holds %s rows (threshold %s).', pipe.buffer_depth, limit_value);
  end if;

  if to_regclass('public.presence_buffer') is not null and to_regclass('cron.job') is not null
    and pipe.flush_job_active is distinct from true then
    return query select 'flush_job_inactive', 'critical', 0::double precision, 1::double precision,
      case when pipe.flush_job_active is null
        then 'No pg_cron job named presence-flush: buffered presence is never applied to profiles.'
        else 'The presence-flush pg_cron job is inactive: buffered presence is not applied to profiles.'
      end;
  end if;

  return query
    select 'cron_job_failed', 'critical', c.failures_in_window::double precision, 0::double precision,
      format('pg_cron job %s failed %s time(s) in the last %s s (last at %s, last run %s): %s',
        coalesce(c.jobname, c.jobid::text), c.failures_in_window,
        coalesce(monitoring.setting('cron_failure_window_seconds'), 900), c.last_failure_at,
        coalesce(c.last_status, 'unknown'), left(coalesce(c.last_failure_message, ''), 200))
    from monitoring.cron_jobs as c
    where c.failures_in_window > 0
    order by c.jobid;
end
$$;

comment on function monitoring.check_alerts() is
  'The alerts that fire now, one row each (alert, severity, value, threshold, message): '
  'server_connections_high, slow_query (p95 estimated as mean + 2 * stddev), flush_lag, '
  'buffer_depth, flush_job_inactive, cron_job_failed. Thresholds in monitoring.settings.';

revoke execute on function monitoring.check_alerts() from public;
grant execute on function monitoring.check_alerts() to service_role;

-- Everything functions/metrics exports from the database, in one round trip.
create function monitoring.metrics_snapshot()
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

revoke execute on function monitoring.metrics_snapshot() from public;
grant execute on function monitoring.metrics_snapshot() to service_role;
