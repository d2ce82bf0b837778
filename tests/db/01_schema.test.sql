-- Schema: the tables, columns, indexes, foreign keys and RLS the migrations promise.
begin;
select plan(38);

select has_table('public', 'profiles', 'profiles exists');
select has_table('public', 'favorites', 'favorites exists');
select has_table('public', 'subscriptions', 'subscriptions exists');

-- profiles: the v4 rename is complete, nothing still says `online`.
select has_column('public', 'profiles', 'is_online', 'profiles.is_online exists');
select hasnt_column('public', 'profiles', 'online', 'the legacy profiles.online is gone');
select col_type_is('public', 'profiles', 'is_online', 'boolean', 'is_online is boolean');
select col_not_null('public', 'profiles', 'is_online', 'is_online is not null');
select col_default_is('public', 'profiles', 'is_online', 'false', 'is_online defaults to false');
select has_column('public', 'profiles', 'last_seen_at', 'profiles.last_seen_at exists');
select col_type_is('public', 'profiles', 'last_seen_at', 'timestamp with time zone', 'last_seen_at is timestamptz');
select col_type_is('public', 'profiles', 'latitude', 'double precision', 'latitude is double precision');
select col_type_is('public', 'profiles', 'longitude', 'double precision', 'longitude is double precision');
select is_empty($$
  select c.relname || '.' || a.attname from pg_attribute a join pg_class c on c.oid = a.attrelid
  join pg_namespace n on n.oid = c.relnamespace
  where n.nspname = 'public' and a.attname = 'online' and not a.attisdropped
$$, 'no table or view in public has a column named online');
select is_empty($$
  select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = 'public' and p.prosrc ~ '\monline\M'
$$, 'no function in public reads a column named online');
select has_view('public', 'online_profiles', 'the legacy view survives the rename');
select has_column('public', 'online_profiles', 'is_online', 'online_profiles exposes is_online');

-- Keys.
select col_is_pk('public', 'profiles', 'id', 'profiles.id is the primary key');
select fk_ok('public', 'profiles', 'id', 'auth', 'users', 'id', 'profiles.id references auth.users');
select col_is_pk('public', 'favorites', array['user_id', 'favorite_id'], 'favorites key is (user_id, favorite_id)');
select fk_ok('public', 'favorites', 'user_id', 'public', 'profiles', 'id', 'favorites.user_id references profiles');
select fk_ok('public', 'favorites', 'favorite_id', 'public', 'profiles', 'id', 'favorites.favorite_id references profiles');
select col_is_pk('public', 'subscriptions', 'user_id', 'subscriptions key is user_id');
select fk_ok('public', 'subscriptions', 'user_id', 'public', 'profiles', 'id', 'subscriptions.user_id references profiles');

-- Indexes, with their predicates.
select has_index('public', 'profiles', 'idx_profiles_is_online', array['is_online'], 'partial index on is_online');
select is(
  (select pg_get_expr(indpred, indrelid) from pg_index where indexrelid = 'public.idx_profiles_is_online'::regclass),
  'is_online', 'idx_profiles_is_online covers online users only');
select has_index('public', 'profiles', 'idx_profiles_latitude_longitude_is_online',
  array['latitude', 'longitude', 'is_online'], 'composite index on (latitude, longitude, is_online)');
select is(
  (select pg_get_expr(indpred, indrelid) from pg_index
   where indexrelid = 'public.idx_profiles_latitude_longitude_is_online'::regclass),
  'is_online', 'the composite index covers online users only');
select has_index('public', 'favorites', 'idx_favorites_favorite_id', array['favorite_id'],
  'favorites.favorite_id is indexed for reverse lookups and cascades');
-- Every foreign key has an index whose leading columns are the key's columns.
select is_empty($$
  select c.conrelid::regclass || ' ' || c.conname from pg_constraint c
  where c.contype = 'f' and c.connamespace = 'public'::regnamespace
    and not exists (
      select from pg_index i where i.indrelid = c.conrelid
        and (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] = c.conkey)
$$, 'every foreign key in public is backed by an index');

-- RLS on every table in public.
select is_empty($$
  select c.relname from pg_class c where c.relnamespace = 'public'::regnamespace
  and c.relkind in ('r', 'p') and not c.relrowsecurity
$$, 'row level security is enabled on every table in public');
select policies_are('public', 'profiles', array[
  'Signed-in users read profiles', 'Users create their own profile', 'Users update their own profile']);
select policies_are('public', 'favorites', array[
  'Users read their own favorites', 'Users add their own favorites', 'Users remove their own favorites']);
select policies_are('public', 'subscriptions', array['Users read their own subscription']);
select policy_roles_are('public', 'profiles', 'Signed-in users read profiles', array['authenticated']);

-- Security definer functions pin their search_path.
select is_empty($$
  select p.oid::regprocedure from pg_proc p where p.pronamespace = 'public'::regnamespace and p.prosecdef
  and not exists (select from unnest(p.proconfig) c where c like 'search_path=%')
$$, 'every security definer function in public sets its search_path');

-- The Supabase compatibility layer.
select has_role('anon', 'role anon exists');
select has_function('auth', 'uid', 'auth.uid() exists');
select ok(exists (select from pg_publication where pubname = 'supabase_realtime'), 'publication supabase_realtime exists');

select * from finish();
rollback;
