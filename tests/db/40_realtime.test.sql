-- Realtime: profiles in the publication without locations, one broadcast per presence flush
-- or expiry batch (none for a batch that changed nothing, never a coordinate), and the private
-- channels' authorization as Realtime checks it when a client joins. The global broadcast is
-- off by default since the inboxes (41_presence_push) replaced it; it is tested switched on.
begin;
select plan(46);
set local sltr.presence_global_broadcast = on;

-- Apply what other sessions left in the presence buffer, and expire stale users, first (all
-- rolled back at the end), so every broadcast counted below is about this test's users only.
select private.flush_presence() >= 0 as drained, private.expire_stale_presence() >= 0 as expired;
create temp table earlier_messages as select id from realtime.messages;

-- The broadcasts this test made: pg_cron's flushes committing meanwhile have another
-- inserted_at (it defaults to now(), the start of the sending transaction).
create temp view sent as
  select m.*, jsonb_array_length(m.payload -> 'changes') as n
  from realtime.messages as m
  where m.topic = 'presence:changes'
    and m.inserted_at = now()::timestamp
    and m.id not in (select e.id from earlier_messages as e);

-- The publication.
select ok(exists (select from pg_publication where pubname = 'supabase_realtime' and pubupdate),
  'supabase_realtime publishes updates');
select ok(
  not exists (select from pg_publication_tables
   where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'profiles'),
  'profiles is not published to postgres_changes (the inbox pushes tell who cares, to the minute)');
select is_empty($$
  select from pg_publication_tables
  where pubname = 'supabase_realtime'
    and (attnames && array['latitude', 'longitude']::name[] or tablename = 'presence_buffer')
$$, 'no published column is a location');
select is(
  (select relreplident::text from pg_class where oid = 'public.profiles'::regclass), 'd',
  'profiles keeps the default replica identity (its primary key, which the column list holds)');

-- The platform pieces the broadcast uses.
select has_function('realtime', 'send', array['jsonb', 'text', 'text', 'boolean'], 'realtime.send exists');
select has_function('realtime', 'topic', 'realtime.topic exists');
select has_trigger('public', 'profiles', 'broadcast_presence_changes', 'profiles has the broadcast trigger');
select is(
  (select tgtype::int & 1 from pg_trigger where tgname = 'broadcast_presence_changes'), 0,
  'the broadcast trigger fires once per statement, not per row');
select function_privs_are('private', 'broadcast_presence_changes', array[]::text[], 'service_role',
  array[]::text[], 'nobody calls the trigger function directly');

select tests.create_supabase_user('alice', 'rt-alice@sltr.test', latitude => 52.52, longitude => 13.40);
select tests.create_supabase_user('bob', 'rt-bob@sltr.test', latitude => 52.50, longitude => 13.42);
select tests.create_supabase_user('carol', 'rt-carol@sltr.test');

-- A flush that changes three users: one broadcast with three changes.
select tests.authenticate_as_service_role();
select is(
  private.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', tests.get_supabase_uid('alice'), 'status', 'online', 'at', now() - interval '20 minutes', 'lat', 52.53, 'lng', 13.41),
    jsonb_build_object('user_id', tests.get_supabase_uid('bob'), 'status', 'online', 'at', now() - interval '19 minutes'),
    jsonb_build_object('user_id', tests.get_supabase_uid('carol'), 'status', 'online', 'at', now() - interval '18 minutes'))),
  '{"accepted": 3, "ignored": 0}'::jsonb, 'three presence events are accepted');
select is(private.flush_presence(), 3, 'the flush changes three profiles');
select tests.clear_authentication();

select is((select count(*)::int from sent), 1, 'the flush is one broadcast, not one per row');
select results_eq('select topic, event, private, extension from sent',
  $$values ('presence:changes', 'status_changes', true, 'broadcast')$$,
  'on the private topic presence:changes, event status_changes');
select is((select n from sent), 3, 'its payload holds the three changes');
select set_eq(
  $$select (c ->> 'user_id')::uuid, (c ->> 'is_online')::boolean, (c ->> 'last_seen_at')::timestamptz
    from sent, jsonb_array_elements(sent.payload -> 'changes') as c$$,
  format($$select id, is_online, last_seen_at from public.profiles where id in (%L, %L, %L)$$,
    tests.get_supabase_uid('alice'), tests.get_supabase_uid('bob'), tests.get_supabase_uid('carol')),
  'each change is the profile''s new id, is_online and last_seen_at');
select is_empty($$
  select from sent, jsonb_array_elements(sent.payload -> 'changes') as c
  where (select array_agg(k order by k) from jsonb_object_keys(c) as k) <> array['is_online', 'last_seen_at', 'user_id']
$$, 'a change carries user_id, is_online and last_seen_at only: no lat, no lng');
-- (Not a regex over the text: a timestamp like 12:13:52.5 would look like a coordinate.)
select is_empty($$
  select v from sent, jsonb_path_query(sent.payload, 'strict $.**') as v
  where jsonb_typeof(v) = 'number'
$$, 'no number appears anywhere in the broadcast, so no coordinate can');

-- Nothing changed, nothing sent.
select tests.authenticate_as_service_role();
select is(private.flush_presence(), 0, 'a flush with nothing to apply changes nothing...');
select tests.clear_authentication();
select is((select count(*)::int from sent), 1, '...and broadcasts nothing');

-- A heartbeat (same status, same place) is not a status change.
select tests.authenticate_as_service_role();
select is(
  (private.ingest_presence(jsonb_build_array(
    jsonb_build_object('user_id', tests.get_supabase_uid('bob'), 'status', 'online', 'at', now() - interval '17 minutes')))) ->> 'accepted',
  '1', 'a heartbeat is accepted');
select lives_ok('select private.flush_presence()', 'flushing a heartbeat works');
select tests.clear_authentication();
select is((select count(*)::int from sent), 1, 'a heartbeat is not broadcast');

-- Moving while online is not broadcast either (the new position is nobody's business).
select tests.authenticate_as_service_role();
select is(
  (private.ingest_presence(jsonb_build_array(jsonb_build_object(
    'user_id', tests.get_supabase_uid('alice'), 'status', 'online', 'at', now() - interval '16 minutes', 'lat', 48.14, 'lng', 11.58)))) ->> 'accepted',
  '1', 'a move is accepted');
select is(private.flush_presence(), 1, 'the flush applies the move');
select tests.clear_authentication();
select is((select count(*)::int from sent), 1, 'a move while online is not broadcast');

-- Going offline is.
select tests.authenticate_as_service_role();
select is(
  (private.ingest_presence(jsonb_build_array(jsonb_build_object(
    'user_id', tests.get_supabase_uid('carol'), 'status', 'offline', 'at', now() - interval '15 minutes')))) ->> 'accepted',
  '1', 'a leave is accepted');
select is(private.flush_presence(), 1, 'the flush applies the leave');
select tests.clear_authentication();
select results_eq(
  $$select c ->> 'user_id', c ->> 'is_online' from sent, jsonb_array_elements(sent.payload -> 'changes') as c
    where sent.n = 1$$,
  format($$values (%L, 'false')$$, tests.get_supabase_uid('carol')),
  'the leave is one broadcast with one change: carol went offline');

-- Missed leaves expired by expire_stale_presence are broadcast too, once per batch: alice and
-- bob were last seen 16 and 17 minutes ago.
select tests.authenticate_as_service_role();
select is(private.expire_stale_presence(), 2, 'expiry marks the two online users offline');
select tests.clear_authentication();
select results_eq(
  $$select c ->> 'user_id', c ->> 'is_online' from sent, jsonb_array_elements(sent.payload -> 'changes') as c
    where sent.n = 2 order by c ->> 'last_seen_at'$$,
  format($$values (%L, 'false'), (%L, 'false')$$, tests.get_supabase_uid('bob'), tests.get_supabase_uid('alice')),
  'the expiry batch is one broadcast of two changes: bob and alice went offline');

-- A signed-in user editing their own profile sends nothing.
select tests.authenticate_as('alice');
select lives_ok($$update public.profiles set display_name = 'Alice R.' where id = (select auth.uid())$$,
  'a user updates their profile (the publication covers the replica identity)');
select tests.clear_authentication();
select is((select count(*)::int from sent), 3, 'a profile edit is not broadcast');

-- Realtime caps a message's size: a flush of 1001 changes is two messages, 1000 + 1.
do $$ begin perform tests.create_supabase_user(format('rt-bulk-%s', i), format('rt-bulk-%s@sltr.test', i)) from generate_series(1, 1001) as i; end $$;
select tests.authenticate_as_service_role();
select is(
  (private.ingest_presence((
    select jsonb_agg(jsonb_build_object('user_id', p.id, 'status', 'online', 'at', now()))
    from public.profiles as p where p.display_name like 'rt-bulk-%'))) ->> 'accepted',
  '1001', '1001 events are accepted');
select is(private.flush_presence(), 1001, 'one flush applies them');
select tests.clear_authentication();
select results_eq('select n from sent order by n', array[1, 1, 2, 3, 1000],
  'a 1001-change flush is split into a message of 1000 and one of the remaining one');

-- Realtime Authorization, checked the way Realtime does when a client joins a private channel:
-- read = can the role see a probe message of that extension on the joined topic (the topic in
-- realtime.topic()); write = may it insert one. Probes are inserted as the owner, known ids.
insert into realtime.messages (id, topic, extension, private) values
  ('00000000-0000-4000-a000-00000000e001', 'online-users', 'broadcast', true),
  ('00000000-0000-4000-a000-00000000e002', 'online-users', 'presence', true),
  ('00000000-0000-4000-a000-00000000e003', 'presence:changes', 'broadcast', true),
  ('00000000-0000-4000-a000-00000000e004', 'elsewhere', 'broadcast', true),
  ('00000000-0000-4000-a000-00000000e005', 'online-users:7', 'broadcast', true),
  ('00000000-0000-4000-a000-00000000e006', 'online-users:7', 'presence', true),
  ('00000000-0000-4000-a000-00000000e007', 'online-users:07', 'broadcast', true);

select tests.authenticate_as('bob');
select set_config('realtime.topic', 'online-users', true) as joining \gset
select results_eq(
  $$select extension from realtime.messages where id::text like '00000000-0000-4000-a000-00000000e00_' and topic = realtime.topic()$$,
  array['broadcast'],
  'on online-users a signed-in user may join (read broadcast) but not receive presence (locations)');
select lives_ok(
  $$insert into realtime.messages (topic, extension, private) values ('online-users', 'presence', true)$$,
  'a signed-in user may publish their presence on online-users');
select throws_ok(
  $$insert into realtime.messages (topic, extension, private) values ('online-users', 'broadcast', true)$$,
  '42501', null, 'a signed-in user may not broadcast on online-users');
select set_config('realtime.topic', 'presence:changes', true) as joining \gset
select results_eq(
  $$select id from realtime.messages where id::text like '00000000-0000-4000-a000-00000000e00_' and topic = realtime.topic()$$,
  $$values ('00000000-0000-4000-a000-00000000e003'::uuid)$$,
  'a signed-in user may receive the status broadcasts on presence:changes');
select throws_ok(
  $$insert into realtime.messages (topic, extension, private) values ('presence:changes', 'broadcast', true)$$,
  '42501', null, 'a signed-in user may not broadcast status changes themselves');
select set_config('realtime.topic', 'elsewhere', true) as joining \gset
select is_empty($$select from realtime.messages where id::text like '00000000-0000-4000-a000-00000000e00_' and topic = realtime.topic()$$,
  'other private topics stay closed');
-- Presence sharded over topics (online-users:<0..999>): the same rights on every shard.
select set_config('realtime.topic', 'online-users:7', true) as joining \gset
select results_eq(
  $$select extension from realtime.messages where id::text like '00000000-0000-4000-a000-00000000e00_' and topic = realtime.topic()$$,
  array['broadcast'],
  'on a presence shard a signed-in user may join but not receive presence');
select lives_ok(
  $$insert into realtime.messages (topic, extension, private) values ('online-users:7', 'presence', true)$$,
  'a signed-in user may publish their presence on a presence shard');
select set_config('realtime.topic', 'online-users:07', true) as joining \gset
select is_empty($$select from realtime.messages where id::text like '00000000-0000-4000-a000-00000000e00_' and topic = realtime.topic()$$,
  'a topic that only looks like a shard (online-users:07) stays closed');
select set_config('realtime.topic', 'online-users:1000', true) as joining \gset
select throws_ok(
  $$insert into realtime.messages (topic, extension, private) values ('online-users:1000', 'presence', true)$$,
  '42501', null, 'nobody tracks on a shard beyond the 1,000 topics');
select tests.clear_authentication();

select tests.authenticate_as_anon();
select set_config('realtime.topic', 'online-users', true) as joining \gset
select is_empty($$select from realtime.messages where id::text like '00000000-0000-4000-a000-00000000e00_' and topic = realtime.topic()$$,
  'the anon key joins no private presence channel');
select tests.clear_authentication();

select * from finish();
rollback;
