-- Test bootstrap: a `tests` schema of helpers so each pgTAP file reads like its scenario.
-- Applied by scripts/test.sh before pg_prove (idempotent); never part of a migration.
create schema if not exists tests;
-- The earlier helpers by uuid (tests.create_user(email), tests.authenticate_as(uuid)).
drop function if exists tests.create_user(text, text, double precision, double precision, boolean);
drop function if exists tests.authenticate_as(uuid);
grant usage on schema tests to anon, authenticated, service_role;

-- Test users by name, as usebasejump/supabase-test-helpers has them: a test creates
-- tests.create_supabase_user('alice'), acts as tests.authenticate_as('alice') and refers to
-- tests.get_supabase_uid('alice'), never to a uuid carried around in a psql variable.

-- A user named `identifier` in auth.users (raw_user_meta_data.test_identifier) and
-- public.profiles; returns its id. The email defaults to <identifier>@sltr.test, the display
-- name to the identifier.
create or replace function tests.create_supabase_user(
  identifier text,
  email text default null,
  display_name text default null,
  latitude double precision default null,
  longitude double precision default null,
  is_online boolean default false
) returns uuid
language plpgsql security definer set search_path = ''
as $$
declare
  new_id uuid := gen_random_uuid();
begin
  insert into auth.users (id, aud, role, email, raw_user_meta_data)
  values (new_id, 'authenticated', 'authenticated', coalesce(email, identifier || '@sltr.test'),
          jsonb_build_object('test_identifier', identifier));
  insert into public.profiles (id, display_name, latitude, longitude, is_online)
  values (new_id, coalesce(display_name, identifier), latitude, longitude, is_online);
  return new_id;
end
$$;

-- The id of the user created as `identifier`; an error if there is none.
create or replace function tests.get_supabase_uid(identifier text) returns uuid
language plpgsql stable security definer set search_path = ''
as $$
declare
  found_id uuid;
begin
  select u.id into found_id from auth.users as u
  where u.raw_user_meta_data ->> 'test_identifier' = identifier;
  if found_id is null then
    raise exception 'no test user named %', identifier using errcode = 'no_data_found';
  end if;
  return found_id;
end
$$;

-- A request as PostgREST makes it: the JWT's claims in request.jwt.claims and its role set for
-- the rest of the transaction; a null role is the test's own superuser session again.
create or replace function tests.act_as(role text, claims json) returns void
language plpgsql set search_path = '' as $$
begin
  perform set_config('request.jwt.claims', claims::text, true);
  if role is null then
    execute 'reset role';
  else
    execute format('set local role %I', role);
  end if;
end
$$;

-- Act as the signed-in user named `identifier`, exactly as PostgREST does for a request with
-- that user's JWT.
create or replace function tests.authenticate_as(identifier text) returns void
language sql set search_path = '' as $$
  select tests.act_as('authenticated', json_build_object(
    'sub', tests.get_supabase_uid(identifier), 'role', 'authenticated', 'aud', 'authenticated'));
$$;

-- Act as the anon key.
create or replace function tests.authenticate_as_anon() returns void
language sql set search_path = '' as $$ select tests.act_as('anon', json_build_object('role', 'anon')); $$;

-- Act as the service_role key.
create or replace function tests.authenticate_as_service_role() returns void
language sql set search_path = '' as $$
  select tests.act_as('service_role', json_build_object('role', 'service_role'));
$$;

-- Back to the test's own superuser session.
create or replace function tests.clear_authentication() returns void
language sql set search_path = '' as $$ select tests.act_as(null, null); $$;

grant execute on all functions in schema tests to anon, authenticated, service_role;
