-- RLS behaviour, as PostgREST runs requests: anon, a signed-in user, another user.
begin;
select plan(25);

select tests.create_user('alice@rls.test', 'Alice', 52.52, 13.40) as alice \gset
select tests.create_user('bob@rls.test', 'Bob', 52.53, 13.41) as bob \gset
select tests.create_user('carol@rls.test', 'Carol') as carol \gset
insert into public.favorites (user_id, favorite_id) values (:'bob', :'carol');
insert into public.subscriptions (user_id, tier) values (:'alice', 'plus'), (:'bob', 'pro');

-- anon: nothing of ours is readable without signing in.
select tests.authenticate_as_anon();
select throws_ok('select count(*) from public.profiles', '42501', null, 'anon cannot read profiles');
select throws_ok('select count(*) from public.favorites', '42501', null, 'anon cannot read favorites');
select throws_ok('select count(*) from public.subscriptions', '42501', null, 'anon cannot read subscriptions');
select throws_ok($$insert into public.profiles (id) values (gen_random_uuid())$$, '42501', null, 'anon cannot create profiles');
select tests.clear_authentication();

-- Alice, signed in.
select tests.authenticate_as(:'alice');
select results_eq(
  format('select display_name from public.profiles where id in (%L, %L) order by display_name', :'alice', :'bob'),
  array['Alice', 'Bob'], 'a signed-in user reads other users'' public profile fields');
select throws_ok(format('select latitude from public.profiles where id = %L', :'bob'), '42501', null,
  'nobody reads another user''s latitude');
select throws_ok(format('select longitude from public.profiles where id = %L', :'bob'), '42501', null,
  'nobody reads another user''s longitude');
select lives_ok(format($$update public.profiles set display_name = 'Alice B.' where id = %L$$, :'alice'),
  'a user updates their own profile');
select lives_ok(format($$update public.profiles set display_name = 'Hacked' where id = %L$$, :'bob'),
  'updating someone else''s profile is not an error...');
select lives_ok(format($$update public.profiles set avatar_url = 'https://cdn.example.com/a/alice.jpg' where id = %L$$, :'alice'),
  'a user sets an https:// avatar');
select throws_ok(format($$update public.profiles set avatar_url = 'javascript:alert(1)' where id = %L$$, :'alice'), '23514', null,
  'an avatar that is not an https:// URL is refused');
select throws_ok(format($$update public.profiles set avatar_url = 'https://x.example/' || repeat('a', 2048) where id = %L$$, :'alice'),
  '23514', null, 'an avatar URL over 2048 characters is refused');
select throws_ok(format('update public.profiles set is_online = true where id = %L', :'alice'), '42501', null,
  'users cannot set their online status directly (only the presence pipeline does)');
select throws_ok($$insert into public.profiles (id, display_name) values (gen_random_uuid(), 'Fake')$$, '42501', null,
  'a user cannot create a profile for another id');
select lives_ok(format('insert into public.favorites (user_id, favorite_id) values (%L, %L)', :'alice', :'bob'),
  'a user adds their own favorite');
select throws_ok(format('insert into public.favorites (user_id, favorite_id) values (%L, %L)', :'bob', :'alice'), '42501', null,
  'a user cannot add favorites on someone else''s behalf');
select results_eq('select favorite_id from public.favorites', format('values (%L::uuid)', :'bob'),
  'a user sees only their own favorites');
select lives_ok(format('delete from public.favorites where user_id = %L', :'bob'),
  'deleting someone else''s favorites is not an error...');
select results_eq('select tier from public.subscriptions', array['plus'], 'a user sees only their own subscription');
select throws_ok(format($$update public.subscriptions set tier = 'pro' where user_id = %L$$, :'alice'), '42501', null,
  'a user cannot change their own subscription');
select tests.clear_authentication();

-- ...but none of those attempts changed anything.
select is((select display_name from public.profiles where id = :'bob'), 'Bob', '...and Bob''s profile is unchanged');
select is((select display_name from public.profiles where id = :'alice'), 'Alice B.', 'Alice''s own update landed');
select is((select count(*)::int from public.favorites where user_id = :'bob'), 1, '...and Bob''s favorites are intact');

-- Bob does not see Alice's favorites.
select tests.authenticate_as(:'bob');
select results_eq('select favorite_id from public.favorites', format('values (%L::uuid)', :'carol'),
  'another user sees only their own favorites, not Alice''s');
select tests.clear_authentication();

-- service_role (the backend) bypasses RLS.
select tests.authenticate_as_service_role();
select ok((select count(*) from public.subscriptions where user_id in (:'alice', :'bob')) = 2,
  'service_role reads every subscription');
select tests.clear_authentication();

select * from finish();
rollback;
