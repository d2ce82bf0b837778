-- get_online_users_batch within PostgREST's max_rows. Hosted PostgREST returns at most
-- db-max-rows rows of a function (supabase/config.toml max_rows = 1000): a call through the
-- API with 1,500 ids would silently get 1,000 rows. Through the API (request.method is set, as
-- PostgREST sets it on every request) the function now refuses more than 1000 ids with 22023
-- (400), and the client module pages longer lists; direct SQL callers (the online-status
-- function, pg_cron, a DBA) keep the 10,000 limit, with no row cap in their way. It stays
-- volatile (20261202060000_rpc_quotas: the quota hook writes, so no read-only transaction).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create or replace function public.get_online_users_batch(user_ids uuid[])
returns table (user_id uuid, is_online boolean, last_seen_at timestamptz)
language plpgsql volatile security definer set search_path = '' set random_page_cost = 1.1
as $$
declare
  -- Precise times for service_role and the database's own callers (no JWT); to the minute
  -- (private.seen_minute, inlined: it runs for every row) for everyone else.
  precise constant boolean := coalesce((select auth.role()), 'service_role') = 'service_role';
  -- PostgREST sets request.method for every request it serves, and returns at most max_rows
  -- (1000) rows of a function: through the API a longer list would be cut short, silently.
  most constant integer := case
    when coalesce(current_setting('request.method', true), '') = '' then 10000 else 1000 end;
begin
  if user_ids is null or cardinality(user_ids) > most then
    raise exception using
      errcode = '22023',
      message = format('user_ids must be an array of at most %s ids, got %s', most,
        coalesce(cardinality(user_ids)::text, 'null')),
      hint = case when most = 1000
        then 'The API returns at most 1000 rows (max_rows): split the list into calls of 1000.'
        else 'Split larger lists into several calls.' end;
  end if;

  -- The buffered event wins when it is newer than what was flushed into the profile.
  return query
    select p.id,
           case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
             then b.is_online else p.is_online end,
           case when precise then s.seen
             else pg_catalog.timezone('UTC', pg_catalog.date_trunc('minute', pg_catalog.timezone('UTC', s.seen))) end
    from public.profiles as p
    left join public.presence_buffer as b on b.user_id = p.id
    cross join lateral (
      select case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        then b.event_at else p.last_seen_at end as seen
    ) as s
    where p.id = any (user_ids);
end
$$;

comment on function public.get_online_users_batch(uuid[]) is
  'Online status of up to 1000 users through the API (PostgREST''s max_rows) or 10000 from SQL, '
  'in one query, in real time: an accepted presence event counts before pg_cron flushes it. '
  'Unknown ids are absent; duplicates are answered once. More ids (or null) raises 22023. For '
  'signed-in users and service_role; anon is refused (permission denied).';
