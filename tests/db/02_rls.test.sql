-- RLS behaviour, as PostgREST runs requests: anon, a signed-in user, another user.
begin;
select plan(25);

select tests.create_supabase_user('alice', 'alice@rls.test', 'Alice', 52.52, 13.40);
select tests.create_supabase_user('bob', 'bob@rls.test', 'Bob', 52.53, 13.41);
select tests.create_supabase_user('carol', 'carol@rls.test', 'Carol');
insert into public.favorites (user_id, favorite_id) values (tests.get_supabase_uid('bob'), tests.get_supabase_uid('carol'));
insert into public.subscriptions (user_id, tier) values (tests.get_supabase_uid('alice'), 'plus'), (tests.get_supabase_uid('bob'), 'pro');

-- anon: nothing of ours is readable without signing in.
select tests.authenticate_as_anon();
select throws_ok('select count(*) from public.profiles', '42501', null, 'anon cannot read profiles');
select throws_ok('select count(*) from public.favorites', '42501', null, 'anon cannot read favorites');
select throws_ok('select count(*) from public.subscriptions', '42501', null, 'anon cannot read subscriptions');
select throws_ok($$insert into public.profiles (id) values (gen_random_uuid())$$, '42501', null, 'anon cannot create profiles');
select tests.clear_authentication();

-- Alice, signed in.
select tests.authenticate_as('alice');
select results_eq(
  format('select display_name from public.profiles where id in (%L, %L) order by display_name', tests.get_supabase_uid('alice'), tests.get_supabase_uid('bob')),
  array['Alice', 'Bob'], 'a signed-in user reads other users'' public profile fields');
select throws_ok(format('select latitude from public.profiles where id = %L', tests.get_supabase_uid('bob')), '42501', null,
  'nobody reads another user''s latitude');
select throws_ok(format('select longitude from public.profiles where id = %L', tests.get_supabase_uid('bob')), '42501', null,
  'nobody reads another user''s longitude');
select lives_ok(format($$update public.profiles set display_name = 'Alice B.' where id = %L$$, tests.get_supabase_uid('alice')),
  'a user updates their own profile');
select lives_ok(format($$update public.profiles set display_name = 'Hacked' where id = %L$$, tests.get_supabase_uid('bob')),
  'updating someone else''s profile is not an error...');
select lives_ok(format($$update public.profiles set avatar_url = 'https://cdn.example.com/a/alice.jpg' where id = %L$$, tests.get_supabase_uid('alice')),
  'a user sets an https:// avatar');
select throws_ok(format($$update public.profiles set avatar_url = 'javascript:alert(1)' where id = %L$$, tests.get_supabase_uid('alice')), '23514', null,
  'an avatar that is not an https:// URL is refused');
select throws_ok(format($$update public.profiles set avatar_url = 'https://x.example/' || repeat('a', 2048) where id = %L$$, tests.get_supabase_uid('alice')),
  '23514', null, 'an avatar URL over 2048 characters is refused');
select throws_ok(format('update public.profiles set is_online = true where id = %L', tests.get_supabase_uid('alice')), '42501', null,
  'users cannot set their online status directly (only the presence pipeline does)');
select throws_ok($$insert into public.profiles (id, display_name) values (gen_random_uuid(), 'Fake')$$, '42501', null,
  'a user cannot create a profile for another id');
select lives_ok(format('insert into public.favorites (user_id, favorite_id) values (%L, %L)', tests.get_supabase_uid('alice'), tests.get_supabase_uid('bob')),
  'a user adds their own favorite');
select throws_ok(format('insert into public.favorites (user_id, favorite_id) values (%L, %L)', tests.get_supabase_uid('bob'), tests.get_supabase_uid('alice')), '42501', null,
  'a user cannot add favorites on someone else''s behalf');
select results_eq('select favorite_id from public.favorites', format('values (%L::uuid)', tests.get_supabase_uid('bob')),
  'a user sees only their own favorites');
select lives_ok(format('delete from public.favorites where user_id = %L', tests.get_supabase_uid('bob')),
  'deleting someone else''s favorites is not an error...');
select results_eq('select tier from public.subscriptions', array['plus'], 'a user sees only their own subscription');
select throws_ok(format($$update public.subscriptions set tier = 'pro' where user_id = %L$$, tests.get_supabase_uid('alice')), '42501', null,
  'a user cannot change their own subscription');
select tests.clear_authentication();

-- ...but none of those attempts changed anything.
select is((select display_name from public.profiles where id = tests.get_supabase_uid('bob')), 'Bob', '...and Bob''s profile is unchanged');
select is((select display_name from public.profiles where id = tests.get_supabase_uid('alice')), 'Alice B.', 'Alice''s own update landed');
select is((select count(*)::int from public.favorites where user_id = tests.get_supabase_uid('bob')), 1, '...and Bob''s favorites are intact');

-- Bob does not see Alice's favorites.
select tests.authenticate_as('bob');
select results_eq('select favorite_id from public.favorites', format('values (%L::uuid)', tests.get_supabase_uid('carol')),
  'another user sees only their own favorites, not Alice''s');
select tests.clear_authentication();

-- service_role (the backend) bypasses RLS.
select tests.authenticate_as_service_role();
select ok((select count(*) from public.subscriptions where user_id in (tests.get_supabase_uid('alice'), tests.get_supabase_uid('bob'))) = 2,
  'service_role reads every subscription');
select tests.clear_authentication();

select * from finish();
rollback;
