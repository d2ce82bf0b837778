-- Status pushed to the people who care: each user's private inbox, watch_presence, and one
-- message per online watcher for every status change (never for heartbeats or moves, never a
-- location), from ingest_presence and expire_stale_presence alike.
begin;
select plan(26);

-- What was sent to an inbox in this transaction (pg_cron's own sends commit with another
-- inserted_at).
create temp view inbox as
  select substr(m.topic, length('presence:user:') + 1)::uuid as recipient,
         m.event, m.private, m.payload -> 'changes' as changes
  from realtime.messages as m
  where m.topic like 'presence:user:%' and m.inserted_at = now()::timestamp;
grant select on inbox to public;

select tests.create_supabase_user('ann', 'ann@push.test');
select tests.create_supabase_user('bob', 'bob@push.test');
select tests.create_supabase_user('cat', 'cat@push.test');
select tests.create_supabase_user('dan', 'dan@push.test');
select tests.create_supabase_user('eve', 'eve@push.test');

-- Online now: ann, cat, dan (eve stays offline).
select private.ingest_presence(jsonb_build_array(
  jsonb_build_object('user_id', tests.get_supabase_uid('ann'), 'status', 'online', 'at', now() - interval '1 second'),
  jsonb_build_object('user_id', tests.get_supabase_uid('cat'), 'status', 'online', 'at', now() - interval '1 second'),
  jsonb_build_object('user_id', tests.get_supabase_uid('dan'), 'status', 'online', 'at', now() - interval '1 second')
)) is not null as setup;
delete from realtime.messages where topic like 'presence:user:%' and inserted_at = now()::timestamp;

-- The inbox: its owner may join and read it, nobody else; no client may write to it.
select set_config('realtime.topic', 'presence:user:' || tests.get_supabase_uid('ann'), true) as joining \gset
insert into realtime.messages (id, topic, extension, private)
values ('00000000-0000-4000-a000-00000000f001', 'presence:user:' || tests.get_supabase_uid('ann'), 'broadcast', true);
select tests.authenticate_as('ann');
select isnt_empty($$select from realtime.messages where id = '00000000-0000-4000-a000-00000000f001'$$,
  'a user may read their own inbox');
select throws_ok(
  $$insert into realtime.messages (topic, extension, private) values (realtime.topic(), 'broadcast', true)$$,
  '42501', null, 'not even its owner may write to an inbox');
select tests.clear_authentication();
select tests.authenticate_as('bob');
select is_empty($$select from realtime.messages where id = '00000000-0000-4000-a000-00000000f001'$$,
  'nobody else may read it');
select tests.clear_authentication();
delete from realtime.messages where id = '00000000-0000-4000-a000-00000000f001';

-- watch_presence.
select tests.authenticate_as('ann');
select is(public.watch_presence(array[tests.get_supabase_uid('bob'), tests.get_supabase_uid('cat'), tests.get_supabase_uid('ann'), gen_random_uuid()]::uuid[]), 2,
  'counts the users watched, ignoring unknown ids and the caller');
select throws_ok(
  format('select public.watch_presence(array(select gen_random_uuid() from generate_series(1, 1001)))'),
  '22023', 'user_ids must hold at most 1000 ids, got 1001', 'at most 1000 ids');
select tests.clear_authentication();
insert into public.favorites (user_id, favorite_id) values (tests.get_supabase_uid('ann'), tests.get_supabase_uid('dan')), (tests.get_supabase_uid('eve'), tests.get_supabase_uid('bob'));
select tests.authenticate_as('ann');
select is(public.watch_presence(array[tests.get_supabase_uid('bob'), tests.get_supabase_uid('dan')]::uuid[]), 2,
  'replaces the previous list; a favorite on it counts once');
select is(public.watch_presence('{}'), 1, 'an empty list leaves the favorites');
select is(public.watch_presence(array[tests.get_supabase_uid('bob'), tests.get_supabase_uid('cat')]::uuid[]), 3, 'favorites plus the screen');
select tests.clear_authentication();
select tests.authenticate_as_anon();
select throws_ok($$select public.watch_presence('{}')$$, '42501', null, 'anon may not watch');
select tests.clear_authentication();
select ok(
  (select min(expires_at) - statement_timestamp() from private.presence_watches
   where watcher_id = tests.get_supabase_uid('ann')) between interval '9 minutes 59 seconds' and interval '10 minutes',
  'a screen list expires 10 minutes after the call');
-- cat watches bob too; eve (offline) has bob as a favorite.
select tests.authenticate_as('cat');
select is(public.watch_presence(array[tests.get_supabase_uid('bob')]::uuid[]), 1, 'cat watches bob');
select tests.clear_authentication();

-- bob comes online: ann (screen) and cat (screen) get it; dan watches nobody; eve is offline.
select private.ingest_presence(jsonb_build_array(jsonb_build_object(
  'user_id', tests.get_supabase_uid('bob'), 'status', 'online', 'at', now(), 'lat', 52.52, 'lng', 13.40))) is not null as bob_online;
select set_eq($$select recipient from inbox$$, array[tests.get_supabase_uid('ann'), tests.get_supabase_uid('cat')]::uuid[],
  'every online watcher, and nobody else, gets the change');
select results_eq($$select distinct event, private from inbox$$, $$values ('status_changes', true)$$,
  'event status_changes on the private inbox');
select is((select changes from inbox where recipient = tests.get_supabase_uid('ann')),
  jsonb_build_array(jsonb_build_object('user_id', tests.get_supabase_uid('bob'), 'is_online', true,
    'last_seen_at', date_trunc('minute', now() at time zone 'UTC') at time zone 'UTC')),
  'the change: who, online, since when (to the minute)');
select ok(not exists (select from inbox where changes::text ~ '52\.5|13\.4'), 'never a location');

-- A heartbeat and a move change nobody's status: nothing is pushed.
delete from realtime.messages where topic like 'presence:user:%' and inserted_at = now()::timestamp;
select private.ingest_presence(jsonb_build_array(
  jsonb_build_object('user_id', tests.get_supabase_uid('bob'), 'status', 'online', 'at', now() + interval '1 second'),
  jsonb_build_object('user_id', tests.get_supabase_uid('bob'), 'status', 'online', 'at', now() + interval '2 seconds',
    'lat', 48.1, 'lng', 11.5))) is not null as heartbeat;
select is_empty($$select from inbox$$, 'heartbeats and moves push nothing');

-- One batch, several changes: one message per watcher with all of theirs.
select tests.authenticate_as('dan');
select is(public.watch_presence(array[tests.get_supabase_uid('cat')]::uuid[]), 1, 'dan watches cat');
select tests.clear_authentication();
select private.ingest_presence(jsonb_build_array(
  jsonb_build_object('user_id', tests.get_supabase_uid('bob'), 'status', 'offline', 'at', now() + interval '3 seconds'),
  jsonb_build_object('user_id', tests.get_supabase_uid('cat'), 'status', 'offline', 'at', now() + interval '3 seconds')
)) is not null as both_leave;
select is((select count(*)::int from inbox where recipient = tests.get_supabase_uid('ann')), 1,
  'ann: one message for the batch');
select is((select jsonb_array_length(changes) from inbox where recipient = tests.get_supabase_uid('ann')), 2,
  'with both changes ann watches (bob and cat, ordered by user)');
select is((select changes -> 0 ->> 'user_id' from inbox where recipient = tests.get_supabase_uid('dan')), tests.get_supabase_uid('cat')::text,
  'dan gets cat leaving');
select ok(not exists (select from inbox where recipient = tests.get_supabase_uid('cat')),
  'cat, now offline, gets nothing (no message for the offline)');

-- An expired screen list pushes nothing.
update private.presence_watches set expires_at = now() - interval '1 second' where watcher_id = tests.get_supabase_uid('dan');
delete from realtime.messages where topic like 'presence:user:%' and inserted_at = now()::timestamp;
select private.ingest_presence(jsonb_build_array(
  jsonb_build_object('user_id', tests.get_supabase_uid('cat'), 'status', 'online', 'at', now() + interval '4 seconds')
)) is not null as cat_back;
select is_empty(format('select from inbox where recipient = %L', tests.get_supabase_uid('dan')),
  'an expired watch list gets nothing');

-- A missed leave (expire_stale_presence) is pushed like any other change: ann's favorite dan.
delete from realtime.messages where topic like 'presence:user:%' and inserted_at = now()::timestamp;
update public.presence_buffer set event_at = now() - interval '10 minutes' where user_id = tests.get_supabase_uid('dan');
select ok(private.expire_stale_presence() >= 1, 'dan''s leave was missed and is found');
select is((select changes -> 0 from inbox where recipient = tests.get_supabase_uid('ann')),
  jsonb_build_object('user_id', tests.get_supabase_uid('dan'), 'is_online', false,
    'last_seen_at', date_trunc('minute', (now() - interval '10 minutes') at time zone 'UTC') at time zone 'UTC'),
  'ann hears that her favorite dan went offline, last seen at his last event');

-- The global topic is off unless asked for.
select private.flush_presence() >= 0 as flushed;
select is_empty($$select from realtime.messages where topic = 'presence:changes' and inserted_at = now()::timestamp$$,
  'no global broadcast by default');
select ok(not has_function_privilege('authenticated', 'private.push_status_changes(jsonb)', 'execute')
  and not has_function_privilege('anon', 'private.push_status_changes(jsonb)', 'execute'),
  'clients cannot call the push');

select * from finish();
rollback;
