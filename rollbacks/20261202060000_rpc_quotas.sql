-- Undo the RPC quotas: no hook, the RPCs STABLE again, the buckets and limits gone.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

do $$
begin
  if exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
    alter role authenticator reset pgrst.db_pre_request;
  end if;
end
$$;

alter function public.get_online_users() stable;
alter function public.get_online_users_batch(uuid[]) stable;
alter function public.nearby_online_users(double precision, double precision, integer, integer) stable;

revoke usage on schema private from authenticated;
drop function private.check_request_quota();
drop table private.request_quotas;
drop table private.quota_limits;
