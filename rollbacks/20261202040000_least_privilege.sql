-- Undo least privilege: the service-only functions back in public (and the jobs and the
-- nearby wrapper with them), ingest_presence as its caller, the default privileges and grants
-- as they were. The role sltr_functions stays (cluster-wide, maybe used by other databases)
-- with nothing granted here.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter default privileges in schema public grant all on functions to anon, authenticated;
alter default privileges in schema public grant truncate, references, trigger on tables to anon, authenticated;

grant insert (latitude, longitude), update (latitude, longitude) on public.profiles to authenticated;

-- Regranted in the order the grants had (pg_dump prints them in that order).
revoke all on function public.get_online_users() from public, postgres, anon, authenticated, service_role;
grant execute on function public.get_online_users() to public, postgres, anon, authenticated, service_role;
revoke all on public.online_profiles from anon, authenticated, service_role;
grant all on public.online_profiles to anon, authenticated, service_role;
grant truncate, references, trigger on public.favorites, public.subscriptions to authenticated;

revoke all on function monitoring.metrics_snapshot() from sltr_functions;
revoke all on function private.live_index_snapshot(boolean, uuid[]) from sltr_functions;
revoke all on function public.get_online_users_batch(uuid[]) from sltr_functions;
revoke all on function private.find_nearby_online_users(double precision, double precision, integer, integer, uuid) from sltr_functions;
revoke all on function private.ingest_presence(jsonb) from sltr_functions;
revoke usage on schema public, private, monitoring from sltr_functions;

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.alter_job(j.jobid, command := 'select public.flush_presence()')
    from cron.job as j where j.jobname = 'presence-flush';
    perform cron.alter_job(j.jobid, command := 'select public.expire_stale_presence()')
    from cron.job as j where j.jobname = 'presence-expire';
  end if;
end
$$;

alter function private.ingest_presence(jsonb) security invoker;

alter function private.broadcast_presence_changes() set schema public;
alter function private.find_nearby_online_users(double precision, double precision, integer, integer, uuid) set schema public;
alter function private.expire_stale_presence(interval) set schema public;
alter function private.flush_presence() set schema public;
alter function private.ingest_presence(jsonb) set schema public;

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
    from public.find_nearby_online_users(lat, lng, radius_m, max_results, (select auth.uid())) as n;
end
$$;
