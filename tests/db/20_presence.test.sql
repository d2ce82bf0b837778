-- Presence write path: presence_buffer, ingest_presence / flush_presence /
-- expire_stale_presence (what they do and who may call them), the pg_cron jobs, and the
-- migration's rollback.
--
-- The rollback runs inside this transaction (undone with it) and the migration is applied
-- again, so the behaviour checks after it use a buffer table only this transaction can see:
-- their counts are exact even while other suites write presence. Other sessions' presence
-- writes wait for this transaction meanwhile (well under a second). pg_cron's flush and expiry
-- are kept out from the start by taking their advisory lock first, so no session holds
-- something this transaction waits for while waiting for us.
begin;
select plan(66);

select pg_advisory_xact_lock(hashtextextended('public.presence_buffer', 0));

-- ---- the table ------------------------------------------------------------------------------

select has_table('public', 'presence_buffer', 'presence_buffer exists');
select results_eq(
  $$select a.attname::text collate "default", format_type(a.atttypid, a.atttypmod), a.attnotnull
    from pg_attribute as a
    where a.attrelid = 'public.presence_buffer'::regclass and a.attnum > 0 and not a.attisdropped
    order by a.attnum$$,
  $$values ('user_id', 'uuid', true), ('is_online', 'boolean', true),
           ('event_at', 'timestamp with time zone', true), ('latitude', 'double precision', false),
           ('longitude', 'double precision', false), ('received_at', 'timestamp with time zone', true)$$,
  'presence_buffer has exactly the agreed columns, types and nullability');
select col_is_pk('public', 'presence_buffer', 'user_id', 'one row per user');
select fk_ok('public', 'presence_buffer', 'user_id', 'public', 'profiles', 'id',
  'presence_buffer.user_id references profiles');
select is(
  (select confdeltype::text from pg_constraint
   where conrelid = 'public.presence_buffer'::regclass and contype = 'f'),
  'c', 'deleting a profile deletes its buffered event');
select col_default_is('public', 'presence_buffer', 'received_at', 'now()', 'received_at defaults to now()');
select is(
  (select relpersistence::text from pg_class where oid = 'public.presence_buffer'::regclass),
  'p', 'the buffer is a logged table: accepted events survive a crash and reach replicas');
select ok(
  (select relrowsecurity from pg_class where oid = 'public.presence_buffer'::regclass),
  'row level security is enabled on presence_buffer');
select policies_are('public', 'presence_buffer', array[]::name[], 'presence_buffer has no policies');
select table_privs_are('public', 'presence_buffer', 'anon', array[]::text[], 'anon has no privileges on presence_buffer');
select table_privs_are('public', 'presence_buffer', 'authenticated', array[]::text[],
  'authenticated has no privileges on presence_buffer');

-- ---- the functions and who may call them ---------------------------------------------------

select function_returns('private', 'ingest_presence', array['jsonb'], 'jsonb', 'ingest_presence(jsonb) returns jsonb');
select function_returns('private', 'flush_presence', array[]::name[], 'integer', 'flush_presence() returns integer');
select function_returns('private', 'expire_stale_presence', array['interval'], 'integer',
  'expire_stale_presence(interval) returns integer');
select is(
  (select pg_get_expr(proargdefaults, 0) from pg_proc
   where oid = 'private.expire_stale_presence(interval)'::regprocedure),
  '''00:05:00''::interval', 'max_age defaults to 5 minutes');
select function_privs_are('private', 'ingest_presence', array['jsonb'], 'anon', array[]::text[], 'anon cannot execute ingest_presence');
select function_privs_are('private', 'ingest_presence', array['jsonb'], 'authenticated', array[]::text[],
  'authenticated cannot execute ingest_presence');
select function_privs_are('private', 'ingest_presence', array['jsonb'], 'service_role', array['EXECUTE'],
  'service_role executes ingest_presence');
select function_privs_are('private', 'flush_presence', array[]::name[], 'anon', array[]::text[], 'anon cannot execute flush_presence');
select function_privs_are('private', 'flush_presence', array[]::name[], 'authenticated', array[]::text[],
  'authenticated cannot execute flush_presence');
select function_privs_are('private', 'flush_presence', array[]::name[], 'service_role', array['EXECUTE'],
  'service_role executes flush_presence');
select function_privs_are('private', 'expire_stale_presence', array['interval'], 'anon', array[]::text[],
  'anon cannot execute expire_stale_presence');
select function_privs_are('private', 'expire_stale_presence', array['interval'], 'authenticated', array[]::text[],
  'authenticated cannot execute expire_stale_presence');
select function_privs_are('private', 'expire_stale_presence', array['interval'], 'service_role', array['EXECUTE'],
  'service_role executes expire_stale_presence');
select is_empty(
  $$select p.oid::regprocedure from pg_proc p, aclexplode(p.proacl) a
    where p.oid in ('private.ingest_presence(jsonb)'::regprocedure, 'private.flush_presence()'::regprocedure,
                    'private.expire_stale_presence(interval)'::regprocedure)
      and a.grantee = 0$$,
  'none of them is executable by PUBLIC');

select tests.authenticate_as_anon();
select throws_ok($$select private.ingest_presence('[]')$$, '42501', null, 'anon is refused ingest_presence');
select throws_ok($$select private.flush_presence()$$, '42501', null, 'anon is refused flush_presence');
select throws_ok($$select private.expire_stale_presence()$$, '42501', null, 'anon is refused expire_stale_presence');
select tests.clear_authentication();

select tests.create_supabase_user('signed_in', 'signed-in@presence.test');
select tests.authenticate_as('signed_in');
select throws_ok($$select private.ingest_presence('[]')$$, '42501', null, 'a signed-in user is refused ingest_presence');
select throws_ok($$select private.flush_presence()$$, '42501', null, 'a signed-in user is refused flush_presence');
select throws_ok($$select private.expire_stale_presence()$$, '42501', null,
  'a signed-in user is refused expire_stale_presence');
select tests.clear_authentication();

-- ---- the pg_cron jobs ----------------------------------------------------------------------

select results_eq(
  $$select jobname::text collate "default", schedule, command from cron.job where jobname in ('presence-flush', 'presence-expire') order by jobname$$,
  $$values ('presence-expire', '* * * * *', 'select private.expire_stale_presence()'),
           ('presence-flush', '* * * * *', 'select private.flush_presence()')$$,
  'pg_cron flushes and expires presence every minute');

-- ---- the rollback (inside this transaction) ------------------------------------------------
-- From here on, the migration as it was first written: its rollback, then the migration again
-- (in public, where 20261102000000_presence_buffer.sql puts its functions).

select tests.create_supabase_user('pending', 'pending@presence.test');
update public.profiles set last_seen_at = now() - interval '1 minute' where id = tests.get_supabase_uid('pending');
select from private.ingest_presence(jsonb_build_array(jsonb_build_object(
  'user_id', tests.get_supabase_uid('pending'), 'status', 'online', 'at', now() - interval '10 seconds', 'lat', 1.5, 'lng', 2.5)));
-- Profiles other suites cannot be creating or deleting meanwhile: the seed's and this file's.
select count(*) as profiles_before from public.profiles as p join auth.users as u on u.id = p.id
where u.email like 'seed-user-%@sltr.local' or u.email like '%@presence.test' \gset

\ir ../../rollbacks/20261102000000_presence_buffer.sql

select is_empty($$select from cron.job where jobname in ('presence-flush', 'presence-expire')$$, 'the rollback removes the pg_cron jobs');
select hasnt_table('public', 'presence_buffer', 'the rollback drops presence_buffer');
select hasnt_function('public', 'ingest_presence', array['jsonb'], 'the rollback drops ingest_presence');
select hasnt_function('public', 'flush_presence', array[]::name[], 'the rollback drops flush_presence');
select hasnt_function('public', 'expire_stale_presence', array['interval'], 'the rollback drops expire_stale_presence');
select is(
  (select count(*) from public.profiles as p join auth.users as u on u.id = p.id
   where u.email like 'seed-user-%@sltr.local' or u.email like '%@presence.test'),
  :'profiles_before'::bigint, 'the rollback keeps every profile');
select results_eq(
  format($$select is_online, last_seen_at, latitude, longitude from public.profiles where id = %L$$, tests.get_supabase_uid('pending')),
  $$values (true, now() - interval '10 seconds', 1.5::float8, 2.5::float8)$$,
  'the rollback applies events still buffered instead of dropping them');

\ir ../../migrations/20261102000000_presence_buffer.sql

select has_table('public', 'presence_buffer', 'up again after down: presence_buffer is back');
select results_eq(
  $$select jobname::text collate "default" from cron.job where jobname in ('presence-flush', 'presence-expire') order by jobname$$,
  array['presence-expire', 'presence-flush'], 'up again after down: the jobs are back');

-- ---- ingest_presence ------------------------------------------------------------------------
-- From here on the buffer is the one created just above: only this transaction's rows.

select tests.create_supabase_user('a', 'a@presence.test');
select tests.create_supabase_user('b', 'b@presence.test');
select tests.create_supabase_user('older', 'older@presence.test');
update public.profiles set last_seen_at = now() - interval '1 minute' where id = tests.get_supabase_uid('older');

select tests.authenticate_as_service_role();

select is(
  public.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', tests.get_supabase_uid('a'), 'status', 'online', 'at', now() - interval '30 seconds', 'lat', 52.5, 'lng', 13.4),
    jsonb_build_object('user_id', tests.get_supabase_uid('a'), 'status', 'offline', 'at', now() - interval '40 seconds'),
    jsonb_build_object('user_id', tests.get_supabase_uid('b'), 'status', 'online', 'at', now() - interval '30 seconds'),
    jsonb_build_object('user_id', gen_random_uuid(), 'status', 'online', 'at', now()))),
  '{"accepted": 3, "ignored": 1}'::jsonb,
  'service_role ingests a batch; an unknown user is ignored');
select results_eq(
  format($$select user_id, is_online, event_at, latitude, longitude from public.presence_buffer
           where user_id in (%L, %L) order by latitude nulls last$$, tests.get_supabase_uid('a'), tests.get_supabase_uid('b')),
  format($$values (%L::uuid, true, now() - interval '30 seconds', 52.5::float8, 13.4::float8),
                  (%L::uuid, true, now() - interval '30 seconds', null, null)$$, tests.get_supabase_uid('a'), tests.get_supabase_uid('b')),
  'the buffer holds each user''s newest event of the batch');
select is(
  public.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', tests.get_supabase_uid('a'), 'status', 'online', 'at', now() - interval '30 seconds', 'lat', 52.5, 'lng', 13.4),
    jsonb_build_object('user_id', tests.get_supabase_uid('b'), 'status', 'online', 'at', now() - interval '30 seconds'))),
  '{"accepted": 0, "ignored": 2}'::jsonb,
  'a replayed batch is ignored (idempotent)');
select is(
  public.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', tests.get_supabase_uid('a'), 'status', 'offline', 'at', now() - interval '35 seconds'),
    jsonb_build_object('user_id', tests.get_supabase_uid('older'), 'status', 'online', 'at', now() - interval '2 minutes'))),
  '{"accepted": 0, "ignored": 2}'::jsonb,
  'events older than the buffered event or than profiles.last_seen_at are ignored');
select is(
  public.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', tests.get_supabase_uid('a'), 'status', 'offline', 'at', now() - interval '20 seconds'))),
  '{"accepted": 1, "ignored": 0}'::jsonb,
  'a newer event is accepted');
select results_eq(
  format($$select is_online, event_at, latitude from public.presence_buffer where user_id = %L$$, tests.get_supabase_uid('a')),
  $$values (false, now() - interval '20 seconds', 52.5::float8)$$,
  'the newer event wins and the last known location is kept');

select throws_ok($$select public.ingest_presence('{"events": []}')$$, '22023', 'events must be a JSON array',
  'a non-array is refused');
select throws_ok(
  format($$select public.ingest_presence('[{"user_id": "%s", "status": "away", "at": "2026-01-01T00:00:00Z"}]')$$, tests.get_supabase_uid('a')),
  '22023', 'events[0]: status must be the string (on|off)line', 'an unknown status is refused');
select throws_ok(
  format($$select public.ingest_presence('[{"user_id": "%s", "status": "online", "at": "2026-01-01T00:00:00Z", "lat": 90.5, "lng": 0}]')$$, tests.get_supabase_uid('a')),
  '22023', 'events[0]: lat must be between -90 and 90', 'an out-of-range latitude is refused');
select throws_ok(
  format($$select public.ingest_presence('[{"user_id": "%s", "status": "online", "at": "2026-01-01T00:00:00Z", "lng": 0}]')$$, tests.get_supabase_uid('a')),
  '22023', 'events[0]: lat and lng go together', 'a longitude without latitude is refused');
select throws_ok(
  format($$select public.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', %L, 'status', 'online', 'at', now() - interval '1 second'),
    jsonb_build_object('user_id', %L, 'status', 'online', 'at', now() + interval '10 minutes')))$$, tests.get_supabase_uid('b'), tests.get_supabase_uid('b')),
  '22023', 'events[1]: at is more than 5 minutes in the future',
  'an event from the future is refused, and with it the whole batch');
select results_eq(
  format($$select event_at from public.presence_buffer where user_id = %L$$, tests.get_supabase_uid('b')),
  $$values (now() - interval '30 seconds')$$,
  'a refused batch changes nothing');
select throws_ok($$select public.ingest_presence('[{"user_id": "nope", "status": "online", "at": "2026-01-01T00:00:00Z"}]')$$,
  '22023', 'events[0]: user_id must be a uuid', 'a malformed user_id is refused');

-- ---- flush_presence -------------------------------------------------------------------------

select tests.clear_authentication();
select tests.create_supabase_user('heartbeat', 'heartbeat@presence.test');
select tests.create_supabase_user('flapper', 'flapper@presence.test');
select tests.create_supabase_user('flap_back', 'flap-back@presence.test');
select tests.create_supabase_user('stale', 'stale@presence.test');
select tests.create_supabase_user('mover', 'mover@presence.test', 'Mover', 1, 1, true);
update public.profiles set is_online = true, last_seen_at = now() - interval '2 minutes' where id in (tests.get_supabase_uid('heartbeat'), tests.get_supabase_uid('mover'));
update public.profiles set last_seen_at = now() - interval '3 minutes' where id in (tests.get_supabase_uid('flapper'), tests.get_supabase_uid('flap_back'));
update public.profiles set last_seen_at = now() - interval '1 minute' where id = tests.get_supabase_uid('stale');
-- A buffered row older than its profile (what a race with a flush can leave behind).
insert into public.presence_buffer (user_id, is_online, event_at) values (tests.get_supabase_uid('stale'), true, now() - interval '2 minutes');

select tests.authenticate_as_service_role();
select from public.ingest_presence(jsonb_build_array(
  jsonb_build_object('user_id', tests.get_supabase_uid('heartbeat'), 'status', 'online', 'at', now() - interval '5 seconds'),
  jsonb_build_object('user_id', tests.get_supabase_uid('mover'), 'status', 'online', 'at', now() - interval '5 seconds', 'lat', 2, 'lng', 2),
  jsonb_build_object('user_id', tests.get_supabase_uid('flap_back'), 'status', 'online', 'at', now() - interval '50 seconds'),
  jsonb_build_object('user_id', tests.get_supabase_uid('flap_back'), 'status', 'offline', 'at', now() - interval '40 seconds')));
-- Ten flaps in ten calls, ending online.
select from generate_series(1, 10) as i, public.ingest_presence(jsonb_build_array(jsonb_build_object('user_id', tests.get_supabase_uid('flapper'),
  'status', case when i % 2 = 0 then 'online' else 'offline' end, 'at', now() - interval '60 seconds' + i * interval '1 second')));
select tests.clear_authentication();

select ctid::text as heartbeat_ctid from public.profiles where id = tests.get_supabase_uid('heartbeat') \gset
select ctid::text as flap_back_ctid from public.profiles where id = tests.get_supabase_uid('flap_back') \gset
select ctid::text as stale_ctid from public.profiles where id = tests.get_supabase_uid('stale') \gset

select tests.authenticate_as_service_role();
select is(public.flush_presence(), 4,
  'one flush statement changes a, b, the flapper (once, for ten flaps) and the mover; nobody else');
select tests.clear_authentication();

select results_eq(
  format($$select id, is_online, last_seen_at, latitude from public.profiles
           where id in (%L, %L, %L, %L) order by id$$, tests.get_supabase_uid('a'), tests.get_supabase_uid('b'), tests.get_supabase_uid('flapper'), tests.get_supabase_uid('mover')),
  format($$select * from (values
             (%L::uuid, false, now() - interval '20 seconds', 52.5::float8),
             (%L::uuid, true, now() - interval '30 seconds', null),
             (%L::uuid, true, now() - interval '50 seconds', null),
             (%L::uuid, true, now() - interval '5 seconds', 2::float8)) as v order by 1$$,
    tests.get_supabase_uid('a'), tests.get_supabase_uid('b'), tests.get_supabase_uid('flapper'), tests.get_supabase_uid('mover')),
  'profiles hold the newest event of each changed user');
select is((select ctid::text from public.profiles where id = tests.get_supabase_uid('heartbeat')), :'heartbeat_ctid',
  'a heartbeat with unchanged status costs no profile write');
select is((select ctid::text from public.profiles where id = tests.get_supabase_uid('flap_back')), :'flap_back_ctid',
  'flapping back to the status already flushed costs no profile write');
select is((select ctid::text from public.profiles where id = tests.get_supabase_uid('stale')), :'stale_ctid',
  'a buffered row older than its profile is not applied');
select results_eq(
  $$select user_id, event_at from public.presence_buffer$$,
  format($$values (%L::uuid, now() - interval '5 seconds')$$, tests.get_supabase_uid('heartbeat')),
  'only the heartbeat stays buffered, as the user''s last-seen time; the rest is drained');
select is(public.flush_presence(), 0, 'a second flush finds nothing to change');

-- ---- expire_stale_presence -----------------------------------------------------------------
-- Times a century back, with max_age 99 years, so only this test's users are old enough.

select tests.create_supabase_user('silent', 'silent@presence.test', 'Silent', null, null, true);
select tests.create_supabase_user('beating', 'beating@presence.test', 'Beating', null, null, true);
select tests.create_supabase_user('buffered', 'buffered@presence.test');
update public.profiles set last_seen_at = now() - interval '101 years' where id in (tests.get_supabase_uid('silent'), tests.get_supabase_uid('beating'));
select tests.authenticate_as_service_role();
select from public.ingest_presence(jsonb_build_array(
  jsonb_build_object('user_id', tests.get_supabase_uid('beating'), 'status', 'online', 'at', now() - interval '98 years'),
  jsonb_build_object('user_id', tests.get_supabase_uid('buffered'), 'status', 'online', 'at', now() - interval '100 years')));

select throws_ok($$select public.expire_stale_presence(interval '-1 minute')$$, '22023', null,
  'a negative max_age is refused');
select cmp_ok(public.expire_stale_presence(interval '99 years'), '>=', 2,
  'expire_stale_presence reports the users it marked offline');
select tests.clear_authentication();

select results_eq(
  format($$select id, is_online, last_seen_at from public.profiles where id in (%L, %L, %L) order by id$$,
    tests.get_supabase_uid('silent'), tests.get_supabase_uid('beating'), tests.get_supabase_uid('buffered')),
  format($$select * from (values
             (%L::uuid, false, now() - interval '101 years'),
             (%L::uuid, true, now() - interval '101 years'),
             (%L::uuid, false, now() - interval '100 years')) as v order by 1$$,
    tests.get_supabase_uid('silent'), tests.get_supabase_uid('beating'), tests.get_supabase_uid('buffered')),
  'missed leaves expire at their last event time; a recent buffered heartbeat keeps a user online');
select is_empty(format($$select from public.presence_buffer where user_id = %L$$, tests.get_supabase_uid('buffered')),
  'an expired buffered event leaves the buffer');
select results_eq(format($$select is_online from public.presence_buffer where user_id = %L$$, tests.get_supabase_uid('beating')),
  array[true], 'the heartbeat that keeps a user online stays buffered');

select * from finish();
rollback;
