-- Undo 20261207130000_safety_controls: no blocks and no privacy settings (both are dropped
-- with their tables and columns: what they said is gone), every read as before, and
-- profiles.is_online readable by signed-in users again.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter policy "Signed-in users read profiles" on public.profiles using (true);
comment on policy "Signed-in users read profiles" on public.profiles is null;

CREATE OR REPLACE FUNCTION public.get_online_users_batch(user_ids uuid[])
 RETURNS TABLE(user_id uuid, is_online boolean, last_seen_at timestamp with time zone)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
 SET random_page_cost TO '1.1'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION private.find_nearby_online_users(lat double precision, lng double precision, radius_m integer, max_results integer, excluded_user_id uuid DEFAULT NULL::uuid)
 RETURNS TABLE(user_id uuid, display_name text, distance_m integer, last_seen_at timestamp with time zone)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO ''
 SET plan_cache_mode TO 'force_generic_plan'
 SET enable_seqscan TO 'off'
AS $function$
declare
  probe extensions.geography;
  -- A latitude/longitude box holding every true location whose snapped point can be in
  -- range (snapping moves a point by at most ~360 m), to skip far rows before any geography
  -- work; null where it would cross a pole or the antimeridian.
  pad_lat double precision;
  pad_lng double precision;
begin
  -- NaN sorts above every number in Postgres, so the range checks refuse it too.
  if lat is null or lat < -90 or lat > 90 then
    raise exception using errcode = '22023',
      message = format('lat must be a latitude between -90 and 90, got %s', coalesce(lat::text, 'null'));
  end if;
  if lng is null or lng < -180 or lng > 180 then
    raise exception using errcode = '22023',
      message = format('lng must be a longitude between -180 and 180, got %s', coalesce(lng::text, 'null'));
  end if;
  if radius_m is null or radius_m < 1 or radius_m > 50000 then
    raise exception using errcode = '22023',
      message = format('radius_m must be between 1 and 50000 metres, got %s', coalesce(radius_m::text, 'null'));
  end if;
  if max_results is null or max_results < 1 or max_results > 1000 then
    raise exception using errcode = '22023',
      message = format('max_results must be between 1 and 1000, got %s', coalesce(max_results::text, 'null'));
  end if;

  probe := extensions.st_point(lng, lat, 4326)::extensions.geography;
  pad_lat := (radius_m + 500) / 110000.0;
  if abs(lat) + pad_lat < 89 then
    pad_lng := pad_lat / cos(radians(abs(lat) + pad_lat));
    if lng - pad_lng < -180 or lng + pad_lng > 180 then
      pad_lng := null;
    end if;
  end if;

  return query
    with flushed_cut as (
      -- Nearest first through the GiST index, distance alone: the distance of the
      -- max_results-th qualifying user, the farthest the arm can need.
      select max(k.distance) + 0.01 as distance
      from (
        select public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe as distance
        from public.profiles as p
        left join public.presence_buffer as b
          on b.user_id = p.id and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        where p.is_online
          and extensions.st_dwithin(public.snap_location(p.latitude, p.longitude), probe, radius_m, false)
          and p.id is distinct from excluded_user_id
          and (b.user_id is null
            or (b.is_online
              and (b.latitude is null
                or extensions.st_dwithin(public.snap_location(b.latitude, b.longitude),
                  public.snap_location(p.latitude, p.longitude), 1, false))))
        order by public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe
        limit max_results
      ) as k
    ),
    flushed as (
      select p.id,
             p.display_name,
             coalesce(b.event_at, p.last_seen_at) as last_seen_at,
             public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe as distance
      from public.profiles as p
      left join public.presence_buffer as b
        on b.user_id = p.id and (p.last_seen_at is null or b.event_at > p.last_seen_at)
      where p.is_online
        and extensions.st_dwithin(public.snap_location(p.latitude, p.longitude), probe,
          least(radius_m, (select c.distance from flushed_cut as c)), false)
        and p.id is distinct from excluded_user_id
        and (b.user_id is null
          or (b.is_online
            and (b.latitude is null
              or extensions.st_dwithin(public.snap_location(b.latitude, b.longitude),
                public.snap_location(p.latitude, p.longitude), 1, false))))
      order by public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe, p.id
      limit max_results
    ),
    located_cut as (
      select max(k.distance) + 0.01 as distance
      from (
        select public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe as distance
        from public.presence_buffer as b
        join public.profiles as p on p.id = b.user_id
        where b.is_online
          and extensions.st_dwithin(public.snap_location(b.latitude, b.longitude), probe, radius_m, false)
          and b.user_id is distinct from excluded_user_id
          and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        order by public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe
        limit max_results
      ) as k
    ),
    located as (
      select p.id,
             p.display_name,
             b.event_at as last_seen_at,
             public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe as distance
      from public.presence_buffer as b
      join public.profiles as p on p.id = b.user_id
      where b.is_online
        and extensions.st_dwithin(public.snap_location(b.latitude, b.longitude), probe,
          least(radius_m, (select c.distance from located_cut as c)), false)
        and b.user_id is distinct from excluded_user_id
        and (p.last_seen_at is null or b.event_at > p.last_seen_at)
      order by public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe, b.user_id
      limit max_results
    ),
    unlocated as (
      select p.id,
             p.display_name,
             b.event_at as last_seen_at,
             public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe as distance
      from public.presence_buffer as b
      join public.profiles as p on p.id = b.user_id
      where b.is_online
        and b.latitude is null
        and not p.is_online
        and b.user_id is distinct from excluded_user_id
        and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        and (pad_lng is null
          or (p.latitude between lat - pad_lat and lat + pad_lat
            and p.longitude between lng - pad_lng and lng + pad_lng))
        and extensions.st_dwithin(public.snap_location(p.latitude, p.longitude), probe, radius_m, false)
    )
    select n.id,
           n.display_name,
           (greatest(1, round(n.distance / 100)) * 100)::integer,
           n.last_seen_at
    from (
      select distinct on (a.id) a.*
      from (
        select * from flushed
        union all
        select * from located
        union all
        select * from unlocated
      ) as a
      order by a.id
    ) as n
    order by n.distance, n.id
    limit max_results;
end
$function$;

CREATE OR REPLACE FUNCTION public.get_online_users()
 RETURNS TABLE(id uuid, display_name text, is_online boolean, last_seen_at timestamp with time zone)
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
  -- private.seen_minute, inlined: the seed's polling read returns all profiles flagged is_online.
  select p.id, p.display_name, p.is_online,
         pg_catalog.timezone('UTC', pg_catalog.date_trunc('minute', pg_catalog.timezone('UTC', p.last_seen_at)))
  from public.profiles as p
  where p.is_online
$function$;

CREATE OR REPLACE FUNCTION public.watch_presence(user_ids uuid[])
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  me uuid := auth.uid();
  watched integer;
begin
  if me is null then
    raise exception using errcode = '42501', message = 'watch_presence is for signed-in users';
  end if;
  if cardinality(user_ids) > 1000 then
    raise exception using errcode = '22023',
      message = format('user_ids must hold at most 1000 ids, got %s', cardinality(user_ids));
  end if;

  delete from private.presence_watches where watcher_id = me;

  -- Unknown ids and the caller are ignored.
  insert into private.presence_watches (watcher_id, watched_id, expires_at)
  select distinct me, p.id, statement_timestamp() + interval '10 minutes'
  from public.profiles as p
  where p.id = any (coalesce(user_ids, '{}')) and p.id <> me;

  select count(*) into watched
  from (
    select w.watched_id from private.presence_watches as w where w.watcher_id = me
    union
    select f.favorite_id from public.favorites as f where f.user_id = me
  ) as all_watched;
  return watched;
end
$function$;

CREATE OR REPLACE FUNCTION private.write_status_messages(changes jsonb)
 RETURNS integer
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
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
$function$;

comment on function private.find_nearby_online_users(double precision, double precision, integer, integer, uuid) is
  'Online users whose snapped location (public.snap_location) is within radius_m metres of (lat, lng), nearest first, in real time (buffered events count), without excluded_user_id. distance_m is the distance to the snapped point rounded to 100 m (at least 100). For service_role and the edge functions only: clients call nearby_online_users. lat, lng, radius_m (1..50000) and max_results (1..1000) out of range raise 22023.';

create or replace view public.online_profiles with (security_invoker = true) as
  select p.id, p.display_name, p.avatar_url, p.is_online
  from public.profiles as p
  where p.is_online;

grant select (is_online) on public.profiles to authenticated;

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.unschedule(j.jobid) from cron.job as j where j.jobname = 'privacy-changes-prune';
  end if;
end
$$;

delete from private.quota_limits where rpc in ('block_user', 'unblock_user', 'list_blocks', 'set_privacy');

drop function public.set_privacy(boolean, boolean);
drop function public.list_blocks();
drop function public.unblock_user(uuid);
drop function public.block_user(uuid);
drop function private.online_users_for(uuid, uuid[]);
drop function private.blocked_with_me(uuid);
drop function private.prune_privacy_changes();
drop function private.privacy_changes_bounds();
drop function private.live_index_privacy(timestamptz);
drop function private.blocked_pair(uuid, uuid);
drop table private.privacy_changes;
drop table public.blocks;

alter table public.profiles drop column show_distance, drop column incognito;
