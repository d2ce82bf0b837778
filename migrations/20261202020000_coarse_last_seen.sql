-- Last-seen times at a coarse granularity. A precise profiles.last_seen_at (readable by every
-- signed-in user, and published to postgres_changes) changed exactly when a user's device
-- reported a move, and the read RPCs and the inbox pushes gave microseconds: an activity
-- oracle. Users now see last-seen times to the minute (the bridge re-sends everyone present
-- every 60 s, so a move no longer stands out from a heartbeat); service_role and the database's
-- own callers keep precise times. profiles.last_seen_at is no longer readable by users
-- (get_online_users_batch answers it, to the minute), and profiles leaves the supabase_realtime
-- publication: the inbox pushes (20261201000000_presence_push.sql) tell the users who care.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create function private.seen_minute(t timestamptz)
returns timestamptz
language sql immutable strict parallel safe set search_path = ''
as $$
  select pg_catalog.timezone('UTC', pg_catalog.date_trunc('minute', pg_catalog.timezone('UTC', t)))
$$;

comment on function private.seen_minute(timestamptz) is
  'A last-seen time as users see it: truncated to the minute (UTC).';

revoke execute on function private.seen_minute(timestamptz) from public, anon, authenticated;
grant execute on function private.seen_minute(timestamptz) to service_role;

create or replace function public.get_online_users_batch(user_ids uuid[])
returns table (user_id uuid, is_online boolean, last_seen_at timestamptz)
language plpgsql stable security definer set search_path = '' set random_page_cost = 1.1
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

create or replace function private.push_status_changes(changes jsonb)
returns integer
language sql volatile security definer set search_path = ''
as $$
  with changed as (
    select (c.value ->> 'user_id')::uuid as user_id, c.value as change
    from jsonb_array_elements(changes) as c
  ),
  watching as (
    select f.user_id as watcher_id, c.user_id, c.change
    from changed as c
    join public.favorites as f on f.favorite_id = c.user_id
    union
    select w.watcher_id, c.user_id, c.change
    from changed as c
    join private.presence_watches as w on w.watched_id = c.user_id
    where w.expires_at > statement_timestamp()
  ),
  online as (
    -- Watchers online now, by the read rule (get_online_users_batch).
    select s.user_id
    from public.get_online_users_batch(
      array(select distinct watching.watcher_id from watching)) as s
    where s.is_online
  ),
  messages as (
    -- Inboxes are read by users: last-seen times to the minute.
    select gen_random_uuid() as id, w.watcher_id,
           jsonb_agg(case when w.change ->> 'last_seen_at' is null then w.change
                       else jsonb_set(w.change, '{last_seen_at}',
                         to_jsonb(private.seen_minute((w.change ->> 'last_seen_at')::timestamptz))) end
                     order by w.user_id) as changes
    from watching as w
    where w.watcher_id in (select online.user_id from online)
    group by w.watcher_id
  ),
  sent as (
    insert into realtime.messages (id, topic, extension, event, payload, private)
    select m.id, 'presence:user:' || m.watcher_id::text, 'broadcast', 'status_changes',
           jsonb_build_object('changes', m.changes, 'id', m.id), true
    from messages as m
    returning 1
  )
  select count(*)::integer from sent;
$$;

revoke select (last_seen_at) on public.profiles from authenticated;

-- The legacy reads follow: the view (security invoker, so it could no longer be read by users)
-- loses last_seen_at, and the seed's polling function answers it to the minute as its owner.
drop view public.online_profiles;

create view public.online_profiles with (security_invoker = true) as
  select p.id, p.display_name, p.avatar_url, p.is_online
  from public.profiles as p
  where p.is_online;

comment on view public.online_profiles is
  'Profiles currently flagged online (as of the last flush). Last-seen times: get_online_users_batch.';

create or replace function public.get_online_users()
returns table (id uuid, display_name text, is_online boolean, last_seen_at timestamptz)
language sql stable security definer set search_path = ''
as $$
  -- private.seen_minute, inlined: the seed's polling read returns all profiles flagged is_online.
  select p.id, p.display_name, p.is_online,
         pg_catalog.timezone('UTC', pg_catalog.date_trunc('minute', pg_catalog.timezone('UTC', p.last_seen_at)))
  from public.profiles as p
  where p.is_online
$$;

alter publication supabase_realtime drop table public.profiles;
