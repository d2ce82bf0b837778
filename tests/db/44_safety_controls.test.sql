-- Safety controls (migration 20261207130000): blocks, incognito and hidden distance, on every
-- path of the database where status or location leaves it: get_online_users_batch, the legacy
-- get_online_users and online_profiles, profiles, nearby, watch_presence and the pushes.
begin;
select plan(48);

create temp view inbox as
  select substr(m.topic, length('presence:user:') + 1)::uuid as recipient,
         m.payload -> 'changes' as changes
  from realtime.messages as m
  where m.topic like 'presence:user:%' and m.inserted_at = now()::timestamp;
grant select on inbox to public;

-- ann and bob in one place; cat next to them; dan 2.5 km south of cat (near Ushuaia, where no other
-- suite or benchmark puts anyone: the nearest 50 are ours).
select tests.create_supabase_user('ann', null, 'ann', -54.8566, -68.3522);
select tests.create_supabase_user('bob', null, 'bob', -54.8570, -68.3530);
select tests.create_supabase_user('cat', null, 'cat', -54.8575, -68.3510);
select tests.create_supabase_user('dan', null, 'dan', -54.8800, -68.3510);
select private.ingest_presence(jsonb_agg(jsonb_build_object(
  'user_id', tests.get_supabase_uid(u), 'status', 'online', 'at', now() - interval '2 seconds')))
  is not null as setup
from unnest(array['ann', 'bob', 'cat', 'dan']) as u;
select private.flush_presence() >= 0 as flushed;

-- ---- the model ------------------------------------------------------------------------------

select has_table('public', 'blocks', 'public.blocks exists');
select col_is_pk('public', 'blocks', array['blocker_id', 'blocked_id'], 'a pair is blocked once');
select ok((select relrowsecurity from pg_class where oid = 'public.blocks'::regclass), 'blocks has RLS');
select col_not_null('public', 'profiles', 'incognito', 'profiles.incognito');
select col_default_is('public', 'profiles', 'show_distance', 'true', 'distances are shown by default');
select ok(not has_column_privilege('authenticated', 'public.profiles', 'is_online', 'select'),
  'profiles.is_online is not readable column by column (an incognito user''s says online)');
select ok(not has_table_privilege('authenticated', 'public.blocks', 'insert'),
  'blocks are made through block_user only');

-- ---- block_user, unblock_user, list_blocks --------------------------------------------------

insert into public.favorites (user_id, favorite_id)
values (tests.get_supabase_uid('bob'), tests.get_supabase_uid('ann')),
       (tests.get_supabase_uid('ann'), tests.get_supabase_uid('bob')),
       (tests.get_supabase_uid('cat'), tests.get_supabase_uid('ann'));
select tests.authenticate_as('bob');
select is(public.watch_presence(array[tests.get_supabase_uid('ann')]), 1, 'bob watches ann');
select tests.clear_authentication();

select tests.authenticate_as('ann');
select lives_ok($$select public.block_user(tests.get_supabase_uid('bob'))$$, 'ann blocks bob');
select lives_ok($$select public.block_user(tests.get_supabase_uid('bob'))$$, 'twice is once');
select results_eq($$select * from public.list_blocks()$$, array[tests.get_supabase_uid('bob')],
  'list_blocks: the caller''s own');
select throws_ok($$select public.block_user(tests.get_supabase_uid('ann'))$$, '22023',
  'target must be another user''s id', 'nobody blocks themselves');
select throws_ok($$select public.block_user(gen_random_uuid())$$, '22023', 'target is not a user',
  'an unknown id is refused');
select throws_ok($$select public.block_user(null)$$, '22023', null, 'null is refused');
select throws_ok($$insert into public.blocks (blocker_id, blocked_id) values (tests.get_supabase_uid('ann'), tests.get_supabase_uid('cat'))$$,
  '42501', null, 'no block is made through the table');
select tests.clear_authentication();

select is_empty($$select from public.favorites
  where (user_id, favorite_id) in ((tests.get_supabase_uid('ann'), tests.get_supabase_uid('bob')),
                                   (tests.get_supabase_uid('bob'), tests.get_supabase_uid('ann')))$$,
  'the pair left each other''s favorites');
select is_empty($$select from private.presence_watches
  where watcher_id = tests.get_supabase_uid('bob') and watched_id = tests.get_supabase_uid('ann')$$,
  'and each other''s watch lists');
select is((select count(*)::int from private.privacy_changes
  where user_id in (tests.get_supabase_uid('ann'), tests.get_supabase_uid('bob'))
    and changed_at = now()), 2, 'the live index is told about both (once: the second block changed nothing)');

select tests.authenticate_as('bob');
select is_empty($$select * from public.blocks$$, 'bob does not learn that ann blocked him');
select is_empty($$select * from public.list_blocks()$$, 'nor through list_blocks');
select is_empty($$select from public.profiles where id = tests.get_supabase_uid('ann')$$,
  'bob no longer reads ann''s profile');
select is(public.watch_presence(array[tests.get_supabase_uid('ann')]), 1,
  'watching ann is accepted (and counted) all the same');
select results_eq(
  $$select is_online, last_seen_at from public.get_online_users_batch(array[tests.get_supabase_uid('ann')])$$,
  $$values (false, null::timestamptz)$$,
  'to bob, ann reads as offline with no last seen');
select is_empty($$select from public.get_online_users() where id = tests.get_supabase_uid('ann')$$,
  'the legacy read leaves her out');
select is_empty($$select from public.online_profiles where id = tests.get_supabase_uid('ann')$$,
  'so does the legacy view');
select is_empty($$select from public.nearby_online_users(-54.8570, -68.3530, 5000, 50) where user_id = tests.get_supabase_uid('ann')$$,
  'and nearby');
select tests.clear_authentication();
select is_empty($$select from private.presence_watches where watcher_id = tests.get_supabase_uid('bob')$$,
  'bob''s watch of ann was never recorded');

select tests.authenticate_as('ann');
select results_eq(
  $$select is_online from public.get_online_users_batch(array[tests.get_supabase_uid('bob')])$$,
  $$values (false)$$, 'it works both ways: ann reads bob as offline');
select is_empty($$select from public.nearby_online_users(-54.8566, -68.3522, 5000, 50) where user_id = tests.get_supabase_uid('bob')$$,
  'ann does not see bob nearby');
select ok(exists (select from public.nearby_online_users(-54.8566, -68.3522, 5000, 50) where user_id = tests.get_supabase_uid('cat')),
  'but still cat');
select tests.clear_authentication();

select tests.authenticate_as('cat');
select results_eq(
  $$select u.user_id, u.is_online from public.get_online_users_batch(array[tests.get_supabase_uid('ann'), tests.get_supabase_uid('bob')]) as u order by u.user_id$$,
  $$select u.id, true from unnest(array[tests.get_supabase_uid('ann'), tests.get_supabase_uid('bob')]) as u (id) order by u.id$$,
  'others still see both');
select tests.clear_authentication();

-- Pushes: ann goes offline; cat (favorite) hears it, bob (no longer watching) does not, and a
-- favorite bob adds again through the table tells him nothing.
insert into public.favorites (user_id, favorite_id) values (tests.get_supabase_uid('bob'), tests.get_supabase_uid('ann'));
delete from realtime.messages where topic like 'presence:user:%' and inserted_at = now()::timestamp;
select private.ingest_presence(jsonb_build_array(jsonb_build_object(
  'user_id', tests.get_supabase_uid('ann'), 'status', 'offline', 'at', now() - interval '1 second'))) is not null as ann_offline;
select set_eq($$select recipient from inbox$$, array[tests.get_supabase_uid('cat')],
  'the change reaches cat, never bob');
select private.ingest_presence(jsonb_build_array(jsonb_build_object(
  'user_id', tests.get_supabase_uid('ann'), 'status', 'online', 'at', now()))) is not null as ann_back;

select tests.authenticate_as('ann');
select lives_ok($$select public.unblock_user(tests.get_supabase_uid('bob'))$$, 'ann unblocks bob');
select is_empty($$select * from public.list_blocks()$$, 'no block left');
select tests.clear_authentication();
select tests.authenticate_as('bob');
select results_eq(
  $$select is_online from public.get_online_users_batch(array[tests.get_supabase_uid('ann')])$$,
  $$values (true)$$, 'unblocked, bob reads ann online again');
select tests.clear_authentication();

-- ---- incognito ------------------------------------------------------------------------------

delete from realtime.messages where topic like 'presence:user:%' and inserted_at = now()::timestamp;
select tests.authenticate_as('ann');
select is(public.set_privacy(incognito => true), '{"incognito": true, "show_distance": true}'::jsonb,
  'set_privacy answers the settings after the call');
select tests.clear_authentication();
select set_eq($$select recipient, changes -> 0 ->> 'is_online' as online, changes -> 0 ->> 'last_seen_at' as seen from inbox$$,
  $$values (tests.get_supabase_uid('cat'), 'false', null::text), (tests.get_supabase_uid('bob'), 'false', null::text)$$,
  'going incognito tells the watchers what going offline would');
select is((select count(*)::int from inbox where changes -> 0 ? 'privacy'), 0, 'the mark is not sent');
delete from realtime.messages where topic like 'presence:user:%' and inserted_at = now()::timestamp;
select private.ingest_presence(jsonb_build_array(jsonb_build_object(
  'user_id', tests.get_supabase_uid('ann'), 'status', 'offline', 'at', now() - interval '500 milliseconds'))) is not null as ann_leaves;
select is_empty($$select from inbox$$, 'an incognito user''s changes reach nobody');
select private.ingest_presence(jsonb_build_array(jsonb_build_object(
  'user_id', tests.get_supabase_uid('ann'), 'status', 'online', 'at', now()))) is not null as ann_returns;

select tests.authenticate_as('cat');
select results_eq(
  $$select is_online, last_seen_at from public.get_online_users_batch(array[tests.get_supabase_uid('ann')])$$,
  $$values (false, null::timestamptz)$$, 'to others an incognito user reads as offline');
select is_empty($$select from public.nearby_online_users(-54.8575, -68.3510, 5000, 50) where user_id = tests.get_supabase_uid('ann')$$,
  'and is not nearby');
select tests.clear_authentication();
select tests.authenticate_as('ann');
select results_eq(
  $$select is_online from public.get_online_users_batch(array[tests.get_supabase_uid('ann')])$$,
  $$values (true)$$, 'their own read still works');
select is(public.set_privacy(incognito => false), '{"incognito": false, "show_distance": true}'::jsonb,
  'ann leaves incognito');
select tests.clear_authentication();
select results_eq($$select changes -> 0 ->> 'is_online' from inbox where recipient = tests.get_supabase_uid('cat')$$,
  $$values ('true')$$, 'leaving incognito tells the watchers what coming online would');

-- ---- hidden distance ------------------------------------------------------------------------

select tests.authenticate_as('dan');
select is(public.set_privacy(show_distance => false), '{"incognito": false, "show_distance": false}'::jsonb,
  'dan hides his distance');
select tests.clear_authentication();
select tests.authenticate_as('cat');
select results_eq(
  $$select user_id, distance_m is null from public.nearby_online_users(-54.8575, -68.3510, 5000, 50)
    where user_id in (tests.get_supabase_uid('dan'), tests.get_supabase_uid('ann'))$$,
  $$select tests.get_supabase_uid('ann'), false union all select tests.get_supabase_uid('dan'), true$$,
  'others see dan nearby, with no distance');
select is_empty($$select from public.nearby_online_users(-54.8575, -68.3510, 2950, 50) where user_id = tests.get_supabase_uid('dan')$$,
  'a radius inside the end of his band (3 km) leaves him out: the radius tells no more than the band');
select tests.clear_authentication();

-- ---- at most 10,000 blocks a user ----------------------------------------------------------

select tests.create_supabase_user('eve');
create temp table crowd on commit drop as select n, gen_random_uuid() as id from generate_series(1, 10001) as n;
insert into auth.users (id, aud, role, email) select id, 'authenticated', 'authenticated', id || '@crowd.test' from crowd;
insert into public.profiles (id) select id from crowd;
insert into public.blocks (blocker_id, blocked_id)
select tests.get_supabase_uid('eve'), c.id from crowd as c
where c.n <= 10000;
grant select on crowd to authenticated;
select tests.authenticate_as('eve');
select throws_ok($$select public.block_user((select id from crowd where n = 10001))$$, '22023',
  'at most 10000 blocks per user', 'the 10,001st block is refused');
select tests.clear_authentication();

select * from finish();
rollback;
