-- Test bootstrap: a `tests` schema of helpers so each pgTAP file reads like its scenario.
-- Applied by scripts/test.sh before pg_prove (idempotent); never part of a migration.
create schema if not exists tests;
grant usage on schema tests to anon, authenticated, service_role;

-- A user in auth.users and public.profiles; returns its id.
create or replace function tests.create_user(
  email text,
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
  insert into auth.users (id, aud, role, email) values (new_id, 'authenticated', 'authenticated', email);
  insert into public.profiles (id, display_name, latitude, longitude, is_online)
  values (new_id, coalesce(display_name, split_part(email, '@', 1)), latitude, longitude, is_online);
  return new_id;
end
$$;

-- Act as a signed-in user, exactly as PostgREST does for a request with that user's JWT.
create or replace function tests.authenticate_as(user_id uuid) returns void
language plpgsql set search_path = '' as $$
begin
  perform set_config('request.jwt.claims',
    json_build_object('sub', user_id, 'role', 'authenticated', 'aud', 'authenticated')::text, true);
  execute 'set local role authenticated';
end
$$;

-- Act as the anon key.
create or replace function tests.authenticate_as_anon() returns void
language plpgsql set search_path = '' as $$
begin
  perform set_config('request.jwt.claims', json_build_object('role', 'anon')::text, true);
  execute 'set local role anon';
end
$$;

-- Act as the service_role key.
create or replace function tests.authenticate_as_service_role() returns void
language plpgsql set search_path = '' as $$
begin
  perform set_config('request.jwt.claims', json_build_object('role', 'service_role')::text, true);
  execute 'set local role service_role';
end
$$;

-- Back to the test's own superuser session.
create or replace function tests.clear_authentication() returns void
language plpgsql set search_path = '' as $$
begin
  perform set_config('request.jwt.claims', null, true);
  execute 'reset role';
end
$$;

grant execute on all functions in schema tests to anon, authenticated, service_role;
