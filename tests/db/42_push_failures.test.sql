-- A push that fails never costs presence: with today's partition of realtime.messages missing
-- (hosted creates them only from yesterday to three days ahead, when Realtime connects or its
-- janitor runs), ingest_presence still records the batch, sends nothing, and the failure is
-- counted (monitoring.push_failures, push_failed, metrics_snapshot). And the inboxes are pruned.
begin;
select plan(14);

select tests.create_supabase_user('fay', 'fay@failures.test');
select tests.create_supabase_user('gus', 'gus@failures.test');
insert into public.favorites (user_id, favorite_id)
values (tests.get_supabase_uid('fay'), tests.get_supabase_uid('gus'));
select private.ingest_presence(jsonb_build_array(
  jsonb_build_object('user_id', tests.get_supabase_uid('fay'), 'status', 'online', 'at', now() - interval '1 second')
)) is not null as fay_online;
delete from monitoring.push_failures;

-- Today without a partition, as on a hosted project whose Realtime has not run its janitor.
select format('realtime.messages_%s', to_char(now() at time zone 'utc', 'YYYY_MM_DD')) as today \gset
select isnt(to_regclass(:'today'), null, 'the Realtime endpoint created today''s partition');
alter table realtime.messages detach partition :today;
select throws_ok(
  $$insert into realtime.messages (topic, extension, private) values ('probe', 'broadcast', true)$$,
  '23514', null, 'a row for today has nowhere to go');

select lives_ok(
  format($$select private.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', %L, 'status', 'online', 'at', now()),
    jsonb_build_object('user_id', %L, 'status', 'online', 'at', now())))$$,
    tests.get_supabase_uid('gus'), tests.get_supabase_uid('fay')),
  'ingest_presence commits a batch whose push fails');
select is((select count(*)::int from public.presence_buffer
           where user_id in (tests.get_supabase_uid('gus'), tests.get_supabase_uid('fay'))
             and event_at = now()), 2,
  'both events of the batch are in the buffer');
select is((select count(*)::int from monitoring.push_failures), 1, 'the failed push is recorded once');
select is((select (sqlstate, changes)::text from monitoring.push_failures),
  '(23514,1)', 'with its SQLSTATE and the one status change (gus came online) that reached no inbox');
select is((select severity from monitoring.check_alerts() where alert = 'push_failed'), 'critical',
  'push_failed fires');
select is((monitoring.metrics_snapshot() -> 'push' ->> 'failures')::int, 1,
  'the metrics count it');
select is((monitoring.metrics_snapshot() -> 'push' ->> 'changes_lost')::int, 1,
  'with the changes lost');

-- Back in place: pushes work again, and the alert ends when the window has passed.
alter table realtime.messages attach partition :today
  for values from (date_trunc('day', now() at time zone 'utc'))
  to (date_trunc('day', now() at time zone 'utc') + interval '1 day');
select is(private.push_status_changes(jsonb_build_array(jsonb_build_object(
    'user_id', tests.get_supabase_uid('gus'), 'is_online', false, 'last_seen_at', now()))), 1,
  'with the partition back, the push reaches fay''s inbox');
update monitoring.push_failures set failed_at = now() - interval '16 minutes';
select is_empty($$select from monitoring.check_alerts() where alert = 'push_failed'$$,
  'push_failed stops after push_failure_window_seconds');

-- The inboxes are pruned: inbox messages past presence_inbox_retention_seconds go, nothing else.
insert into realtime.messages (id, topic, extension, event, payload, private, inserted_at) values
  ('00000000-0000-4000-a000-00000000e001', 'presence:user:' || tests.get_supabase_uid('fay'),
    'broadcast', 'status_changes', '{}', true, now() at time zone 'utc' - interval '2 minutes'),
  ('00000000-0000-4000-a000-00000000e002', 'presence:user:' || tests.get_supabase_uid('fay'),
    'broadcast', 'status_changes', '{}', true, now() at time zone 'utc' - interval '10 seconds'),
  ('00000000-0000-4000-a000-00000000e003', 'room:1', 'broadcast', 'chat', '{}', true,
    now() at time zone 'utc' - interval '2 minutes');
select ok(private.prune_presence_inboxes() >= 1, 'presence-inbox-prune deletes old inbox messages');
select is(array(select id::text from realtime.messages
                where id::text like '00000000-0000-4000-a000-00000000e00%' order by id),
  array['00000000-0000-4000-a000-00000000e002', '00000000-0000-4000-a000-00000000e003'],
  'and keeps the recent ones and every other topic');
select ok(exists (select from cron.job where jobname = 'presence-inbox-prune' and schedule = '* * * * *'),
  'every minute, by pg_cron');

select * from finish();
rollback;
