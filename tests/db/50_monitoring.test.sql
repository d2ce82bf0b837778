-- Monitoring: the schema is for service_role only, and each alert of monitoring.check_alerts()
-- fires when its condition holds and stays quiet when it does not. Thresholds are lowered or
-- raised through monitoring.settings inside this transaction; cron failures are rows inserted
-- into cron.job_run_details (pg_cron runs once a minute, far too slow to wait for); everything
-- is rolled back. Repeatable read: the shared database is live (pg_cron, other suites), and
-- one snapshot keeps before/after counts exact.
begin;
set transaction isolation level repeatable read;
select plan(47);

-- Shape and privileges.
select has_schema('monitoring');
select tables_are('monitoring', array['push_failures', 'settings'],
  'monitoring has two tables, its settings and the failed pushes');
select views_are('monitoring',
  array['activity', 'connections', 'cron_jobs', 'presence_pipeline', 'query_stats', 'slow_queries'],
  'monitoring has the pg_stat_statements, pg_stat_activity, pg_cron and presence views');
select functions_are('monitoring',
  array['check_alerts', 'check_core_alerts', 'cron_job_status', 'flush_interval_seconds',
        'metrics_snapshot', 'presence_pipeline_status', 'push_health', 'replication_status',
        'session_activity',
        'setting', 'statement_stats', 'users_online'],
  'monitoring has its functions');
select is(pg_get_function_result('monitoring.check_alerts()'::regprocedure),
  'TABLE(alert text, severity text, value double precision, threshold double precision, message text)',
  'check_alerts returns alert, severity, value, threshold, message');
select is_empty($$
  select p.proname from pg_proc as p
  where p.pronamespace = 'monitoring'::regnamespace
    and not (p.prosecdef and 'search_path=""' = any (coalesce(p.proconfig, '{}')))$$,
  'every monitoring function is security definer with search_path = ''''');
select schema_privs_are('monitoring', 'anon', array[]::text[], 'anon has no access to monitoring');
select schema_privs_are('monitoring', 'authenticated', array[]::text[], 'authenticated has no access to monitoring');
select schema_privs_are('monitoring', 'service_role', array['USAGE'], 'service_role may use monitoring');

select tests.authenticate_as_anon();
select throws_ok('select * from monitoring.check_alerts()', '42501', null, 'anon cannot check alerts');
select tests.clear_authentication();
select tests.create_supabase_user('curious', 'curious@monitoring.test');
select tests.authenticate_as('curious');
select throws_ok('select * from monitoring.connections', '42501', null, 'a signed-in user cannot read monitoring views');
select throws_ok('select * from monitoring.settings', '42501', null, 'a signed-in user cannot read the thresholds');
select tests.clear_authentication();

select tests.authenticate_as_service_role();
select lives_ok('select * from monitoring.check_alerts()', 'service_role checks alerts');
select lives_ok('select * from monitoring.activity, monitoring.connections', 'service_role reads activity and connections');
select lives_ok('select * from monitoring.query_stats limit 1', 'service_role reads query_stats');
select lives_ok('select * from monitoring.cron_jobs, monitoring.presence_pipeline', 'service_role reads cron_jobs and presence_pipeline');
select is((select count(*)::int from monitoring.activity where query = '<insufficient privilege>'), 0,
  'service_role sees every session''s query text');
select ok((select monitoring.metrics_snapshot() ?& array['users_online', 'presence', 'connections',
  'slowest_query_p95_ms', 'cron_jobs', 'alerts']), 'metrics_snapshot holds every figure the metrics function exports');
select tests.clear_authentication();

-- server_connections_high: above server_connections_alert_ratio of the pool cap.
update monitoring.settings set value = 1000000 where name = 'pool_max_server_connections';
select is_empty($$select from monitoring.check_alerts() where alert = 'server_connections_high'$$,
  'server_connections_high is quiet well below the cap');
update monitoring.settings set value = 1 where name = 'pool_max_server_connections';
select results_eq(
  $$select alert, severity, threshold from monitoring.check_alerts() where alert = 'server_connections_high'$$,
  $$values ('server_connections_high', 'critical', 0.8::double precision)$$,
  'server_connections_high fires above 80% of the cap (this session alone is 100% of a cap of 1)');
update monitoring.settings set value = 100 where name = 'pool_max_server_connections';

-- slow_query: p95 estimated as mean + 2 * stddev.
select is_empty($$select from monitoring.query_stats where p95_ms is distinct from mean_ms + 2 * stddev_ms$$,
  'query_stats estimates p95 as mean + 2 * stddev');
select pg_sleep(0.002) from generate_series(1, 3);
update monitoring.settings set value = 1e12 where name = 'query_p95_alert_ms';
select is_empty($$select from monitoring.check_alerts() where alert = 'slow_query'$$,
  'slow_query is quiet when no statement is that slow');
update monitoring.settings set value = 0 where name = 'query_p95_alert_ms';
update monitoring.settings set value = 1 where name = 'query_min_calls';
select isnt_empty($$select from monitoring.check_alerts() where alert = 'slow_query' and severity = 'warning'$$,
  'slow_query fires for statements whose p95 exceeds the threshold');
select cmp_ok((select count(*)::int from monitoring.check_alerts() where alert = 'slow_query'), '<=', 5,
  'slow_query reports the five slowest statements at most');
select isnt_empty($$select from monitoring.slow_queries$$, 'slow_queries lists them');
update monitoring.settings set value = 500 where name = 'query_p95_alert_ms';
update monitoring.settings set value = 10 where name = 'query_min_calls';

-- The presence pipeline: a pending buffered event received an hour ago.
select monitoring.users_online() as online_before \gset
select tests.create_supabase_user('lagging', 'lagging@monitoring.test');
insert into public.presence_buffer (user_id, is_online, event_at, received_at)
values (tests.get_supabase_uid('lagging'), true, now() - interval '1 hour', now() - interval '1 hour');
select ok((select pending_rows >= 1 and flush_lag_seconds >= 3600 from monitoring.presence_pipeline),
  'presence_pipeline reports the pending row and its age as the flush lag');
select is(monitoring.users_online(), :online_before + 1::bigint,
  'users_online counts a buffered online event before it is flushed');

-- A heartbeat row (same status as the profile, nothing to apply) is not lag.
select tests.create_supabase_user('steady', 'steady@monitoring.test', is_online => true);
update public.profiles set last_seen_at = now() - interval '3 hours' where id = tests.get_supabase_uid('steady');
select pending_rows as pending_before from monitoring.presence_pipeline \gset
insert into public.presence_buffer (user_id, is_online, event_at, received_at)
values (tests.get_supabase_uid('steady'), true, now() - interval '2 hours', now() - interval '2 hours');
select is((select pending_rows from monitoring.presence_pipeline), :pending_before::bigint,
  'a heartbeat row that changes nothing is not pending');

-- A newer offline event takes a flushed-online user out of the count.
select tests.create_supabase_user('leaving', 'leaving@monitoring.test', is_online => true);
update public.profiles set last_seen_at = now() - interval '10 minutes' where id = tests.get_supabase_uid('leaving');
select monitoring.users_online() as online_mid \gset
insert into public.presence_buffer (user_id, is_online, event_at)
values (tests.get_supabase_uid('leaving'), false, now() - interval '1 minute');
select is(monitoring.users_online(), :online_mid - 1::bigint, 'users_online applies a buffered offline event');

-- flush_lag: more than flush_lag_alert_intervals flush intervals behind.
update monitoring.settings set value = 60 where name = 'flush_interval_seconds';
select results_eq(
  $$select alert, severity, threshold from monitoring.check_alerts() where alert = 'flush_lag'$$,
  $$values ('flush_lag', 'critical', 120::double precision)$$,
  'flush_lag fires when a pending event waits more than 2 intervals');
update monitoring.settings set value = 3600 where name = 'flush_interval_seconds';
select is_empty($$select from monitoring.check_alerts() where alert = 'flush_lag'$$,
  'flush_lag is quiet while the oldest pending event is within 2 intervals');

-- The interval is derived from the presence-flush schedule when not set.
update monitoring.settings set value = null where name = 'flush_interval_seconds';
update cron.job set schedule = '*/5 * * * *' where jobname = 'presence-flush';
select is(monitoring.flush_interval_seconds(), 300::double precision,
  'the flush interval follows the presence-flush cron schedule (*/5 * * * * = 300 s)');
update cron.job set schedule = '* * * * *' where jobname = 'presence-flush';
select is(monitoring.flush_interval_seconds(), 60::double precision, '* * * * * is 60 s');

-- buffer_depth.
update monitoring.settings set value = 1000000000 where name = 'buffer_depth_alert';
select is_empty($$select from monitoring.check_alerts() where alert = 'buffer_depth'$$,
  'buffer_depth is quiet below its threshold');
update monitoring.settings set value = 0 where name = 'buffer_depth_alert';
select results_eq(
  $$select alert, severity, threshold from monitoring.check_alerts() where alert = 'buffer_depth'$$,
  $$values ('buffer_depth', 'warning', 0::double precision)$$,
  'buffer_depth fires above its threshold');

-- flush_job_inactive.
select is_empty($$select from monitoring.check_alerts() where alert = 'flush_job_inactive'$$,
  'flush_job_inactive is quiet while presence-flush is scheduled and active');
update cron.job set active = false where jobname = 'presence-flush';
select results_eq(
  $$select alert, severity from monitoring.check_alerts() where alert = 'flush_job_inactive'$$,
  $$values ('flush_job_inactive', 'critical')$$,
  'flush_job_inactive fires when presence-flush is switched off');
update cron.job set active = true where jobname = 'presence-flush';

-- cron_job_failed: failed runs within the window, from cron.job_run_details.
select cron.schedule('monitoring-test-failing', '0 0 1 1 *', 'select 1') as failing_job \gset
select cron.schedule('monitoring-test-long-ago', '0 0 1 1 *', 'select 1') as old_job \gset
insert into cron.job_run_details (jobid, job_pid, database, username, command, status, return_message, start_time, end_time)
values
  (:failing_job, 1, 'postgres', 'postgres', 'select 1', 'failed',
    'ERROR:  canceling statement due to lock timeout', now() - interval '1 minute', now() - interval '1 minute'),
  (:old_job, 1, 'postgres', 'postgres', 'select 1', 'failed',
    'ERROR:  long ago', now() - interval '1 day', now() - interval '1 day'),
  (:old_job, 1, 'postgres', 'postgres', 'select 1', 'succeeded', '1 row', now() - interval '2 minutes', now() - interval '2 minutes');
select results_eq(
  $$select alert, severity, value from monitoring.check_alerts()
    where alert = 'cron_job_failed' and message like 'pg_cron job monitoring-test-failing %'$$,
  $$values ('cron_job_failed', 'critical', 1::double precision)$$,
  'cron_job_failed fires for a job that failed within the window');
select ok((select message like '%lock timeout%' from monitoring.check_alerts()
    where alert = 'cron_job_failed' and message like 'pg_cron job monitoring-test-failing %'),
  'its message carries the error');
select is_empty($$select from monitoring.check_alerts()
    where alert = 'cron_job_failed' and message like 'pg_cron job monitoring-test-long-ago %'$$,
  'a failure older than the window does not fire');
select results_eq(
  format('select failures_in_window, last_status from monitoring.cron_jobs where jobid = %s', :old_job),
  $$values (0::bigint, 'succeeded')$$,
  'cron_jobs shows the last run and the failures within the window');

-- The metrics snapshot carries the alerts firing now.
select is(jsonb_array_length(monitoring.metrics_snapshot() -> 'alerts'),
  (select count(*)::int from monitoring.check_alerts()),
  'metrics_snapshot carries every alert check_alerts reports');

-- replica_disconnected: a physical slot nobody streams from. Creating a slot is not
-- transactional: the test drops it again itself.
select is_empty($$select from monitoring.check_alerts() where alert = 'replica_disconnected'
  and message like '%tests_orphan_slot%'$$, 'replica_disconnected is quiet without the slot');
select lives_ok($$select pg_create_physical_replication_slot('tests_orphan_slot', true)$$,
  'a physical slot with nobody streaming from it');
select results_eq(
  $$select state, active from monitoring.replication_status() where slot_name = 'tests_orphan_slot'$$,
  $$values ('disconnected', false)$$,
  'replication_status shows the slot disconnected');
select is((select count(*)::int from monitoring.check_alerts()
  where alert = 'replica_disconnected' and severity = 'critical' and message like '%tests_orphan_slot%'), 1,
  'replica_disconnected fires for it');
select lives_ok($$select pg_drop_replication_slot('tests_orphan_slot')$$, 'and the slot goes again');

select * from finish();
rollback;
