-- Per-user quotas on the RPCs clients call directly (supabase.rpc(...) through PostgREST), the
-- same limits as the functions' (functions/_shared/env.ts): PostgREST's db-pre-request hook,
-- private.check_request_quota, runs before every request with the caller's role and claims
-- set, takes a token from the caller's bucket for the RPC, and refuses with 429 and
-- Retry-After when it is empty (SQLSTATE PGRST: PostgREST answers with the status and headers
-- given). service_role is not limited; anon is refused by grants anyway.
--
-- The buckets live in an unlogged table: a write per call, no WAL; a crash resets every
-- quota, which is harmless. PostgREST runs STABLE functions in a read-only transaction, where
-- the hook could not write: the limited RPCs become VOLATILE (they were called with POST
-- anyway, as supabase.rpc does).
--
-- PostgREST finds the hook by a setting of its login role (hosted: authenticator); this
-- migration sets it there when the role exists. The local gateway (functions/_serve) reads the
-- same setting and calls the hook the same way.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create table private.quota_limits (
  rpc text primary key,
  capacity bigint not null check (capacity > 0),
  refill_seconds bigint not null check (refill_seconds > 0)
);

comment on table private.quota_limits is
  'Per-user quota of each rate-limited RPC: a bucket of capacity calls, refilled over '
  'refill_seconds. Tune with an update; RPCs without a row are not limited.';

insert into private.quota_limits (rpc, capacity, refill_seconds) values
  ('nearby_online_users', 20, 120),
  ('get_online_users_batch', 20, 60),
  ('watch_presence', 20, 60),
  ('get_online_users', 4, 60);

alter table private.quota_limits enable row level security;

create unlogged table private.request_quotas (
  user_id uuid not null,
  rpc text not null,
  tokens double precision not null,
  updated_at timestamptz not null,
  primary key (user_id, rpc)
);

comment on table private.request_quotas is
  'Token buckets of private.check_request_quota, one row per user and RPC. Unlogged: a crash '
  'resets quotas.';

alter table private.request_quotas enable row level security;

create function private.check_request_quota()
returns void
language plpgsql volatile security definer set search_path = ''
as $$
declare
  fn text := substring(current_setting('request.path', true) from '^/rpc/([A-Za-z0-9_]+)$');
  uid uuid;
  lim private.quota_limits;
  left_over double precision;
  wait integer;
begin
  if fn is null or (select auth.role()) is distinct from 'authenticated' then
    return;
  end if;
  select * into lim from private.quota_limits as l where l.rpc = fn;
  if not found then
    return;
  end if;
  uid := (select auth.uid());
  insert into private.request_quotas as q (user_id, rpc, tokens, updated_at)
  values (uid, fn, lim.capacity - 1, clock_timestamp())
  on conflict (user_id, rpc) do update
    set tokens = least(lim.capacity::double precision,
                   q.tokens + extract(epoch from clock_timestamp() - q.updated_at)
                     * lim.capacity / lim.refill_seconds) - 1,
        updated_at = clock_timestamp()
  returning q.tokens into left_over;
  if left_over < 0 then
    -- Raising undoes the take: a refused call costs nothing.
    wait := greatest(1, ceil(-left_over * lim.refill_seconds / lim.capacity))::integer;
    raise sqlstate 'PGRST' using
      message = json_build_object('code', 'rate_limited',
        'message', format('Too many %s calls: try again in %s s.', fn, wait),
        'details', null, 'hint', null)::text,
      detail = json_build_object('status', 429,
        'headers', json_build_object('Retry-After', wait::text))::text;
  end if;
end
$$;

comment on function private.check_request_quota() is
  'PostgREST''s db-pre-request hook: takes a token from the signed-in caller''s bucket for the '
  'RPC of this request (private.quota_limits) and refuses with 429 + Retry-After when empty.';

revoke execute on function private.check_request_quota() from public, anon, authenticated;
grant usage on schema private to authenticated;
grant execute on function private.check_request_quota() to authenticated, service_role;

alter function public.nearby_online_users(double precision, double precision, integer, integer) volatile;
alter function public.get_online_users_batch(uuid[]) volatile;
alter function public.get_online_users() volatile;

do $$
begin
  if exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
    alter role authenticator set pgrst.db_pre_request to 'private.check_request_quota';
  end if;
end
$$;
