-- Least privilege in the database.
--   * public is exactly the client API: the service-only functions (the presence pipeline's
--     ingest_presence, flush_presence and expire_stale_presence, the internal nearby search
--     find_nearby_online_users, the global topic's trigger function) move to schema private,
--     which the API does not expose. pg_cron's jobs and nearby_online_users follow them.
--   * The functions get a role of their own, sltr_functions, that can execute the RPCs they
--     call and nothing else: no table, no view, no RLS bypass (they connected as postgres). It is
--     created without login; the platform gives it a login and a password (see the README's
--     deploy section; the local stack does it in scripts/stack.sh). A role is cluster-wide, so it
--     is created when missing and never dropped by a rollback.
--   * ingest_presence runs as its owner (security definer), so its callers need no table rights.
--   * Supabase's default privileges give anon and authenticated every privilege on new tables
--     and functions in public: truncate, references and trigger are revoked from both on every
--     table (and for tables to come), anon loses the legacy view and get_online_users, and
--     functions created in public from now on are not executable by anon or authenticated
--     until granted (PUBLIC's implicit execute is revoked function by function, as before).
--   * Users no longer write their own latitude/longitude: locations come through the presence
--     pipeline, with its quotas and the grid's hysteresis.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter function public.ingest_presence(jsonb) set schema private;
alter function public.flush_presence() set schema private;
alter function public.expire_stale_presence(interval) set schema private;
alter function public.find_nearby_online_users(double precision, double precision, integer, integer, uuid) set schema private;
alter function public.broadcast_presence_changes() set schema private;

alter function private.ingest_presence(jsonb) security definer;

create or replace function public.nearby_online_users(
  lat double precision,
  lng double precision,
  radius_m integer default 5000,
  max_results integer default 50
)
returns table (user_id uuid, display_name text, distance_m integer, last_seen_at timestamptz)
language plpgsql stable security definer set search_path = ''
as $$
begin
  if max_results is null or max_results < 1 or max_results > 500 then
    raise exception using errcode = '22023',
      message = format('max_results must be between 1 and 500, got %s', coalesce(max_results::text, 'null'));
  end if;

  return query
    select n.user_id, n.display_name, n.distance_m, private.seen_minute(n.last_seen_at)
    from private.find_nearby_online_users(lat, lng, radius_m, max_results, (select auth.uid())) as n;
end
$$;

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.alter_job(j.jobid, command := 'select private.flush_presence()')
    from cron.job as j where j.jobname = 'presence-flush';
    perform cron.alter_job(j.jobid, command := 'select private.expire_stale_presence()')
    from cron.job as j where j.jobname = 'presence-expire';
  end if;
end
$$;

do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'sltr_functions') then
    create role sltr_functions nologin noinherit;
  end if;
end
$$;

comment on role sltr_functions is
  'The edge functions'' database role: executes the RPCs they call, nothing else.';

grant usage on schema public, private, monitoring to sltr_functions;
grant execute on function private.ingest_presence(jsonb) to sltr_functions;
grant execute on function private.find_nearby_online_users(double precision, double precision, integer, integer, uuid) to sltr_functions;
grant execute on function public.get_online_users_batch(uuid[]) to sltr_functions;
grant execute on function private.live_index_snapshot(boolean, uuid[]) to sltr_functions;
grant execute on function monitoring.metrics_snapshot() to sltr_functions;

revoke truncate, references, trigger on all tables in schema public from anon, authenticated;
revoke insert, update, delete on public.online_profiles from anon, authenticated;
revoke select on public.online_profiles from anon;
revoke execute on function public.get_online_users() from public, anon;
-- A user's location comes only through the presence pipeline (quotas, hysteresis, the live
-- index): not by writing profiles.latitude/longitude directly.
revoke insert (latitude, longitude), update (latitude, longitude) on public.profiles from authenticated;

alter default privileges in schema public revoke truncate, references, trigger on tables from anon, authenticated;
alter default privileges in schema public revoke execute on functions from anon, authenticated;
