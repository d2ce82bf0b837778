-- Undo 20261207052925_batch_within_max_rows: 10,000 ids however the function is called.
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
begin
  if user_ids is null or cardinality(user_ids) > 10000 then
    raise exception using
      errcode = '22023',
      message = format('user_ids must be an array of at most 10000 ids, got %s',
        coalesce(cardinality(user_ids)::text, 'null')),
      hint = 'Split larger lists into several calls.';
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
  'Online status of up to 10000 users in one query, in real time: an accepted presence event '
  'counts before pg_cron flushes it. Unknown ids are absent; duplicates are answered once. '
  'More than 10000 ids (or null) raises 22023. For signed-in users and service_role; anon is '
  'refused (permission denied).';
