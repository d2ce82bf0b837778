-- The live index's source of truth: the presence state Redis mirrors, read from Postgres in one
-- statement (a cold or emptied Redis is rebuilt from it, and it is reconciled with it every
-- minute). Per user: the effective state by the read rule (the buffered event when it is newer
-- than the profile), and the centre of their ~500 m privacy cell (public.snap_location of the
-- effective location: the buffered one when it is newer and has one, else the profile's), the
-- only place Redis ever learns. No raw coordinate leaves this function.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

-- Ties broken the same way everywhere: each arm of the nearby search ordered by distance and
-- then user id (users in one cell share their distance), so which of several equally distant
-- users makes the cut at max_results is defined, and the live index can give the same answer.
-- Otherwise as 20261103000000_read_path.sql.
create or replace function public.find_nearby_online_users(
  lat double precision,
  lng double precision,
  radius_m integer,
  max_results integer,
  excluded_user_id uuid default null
)
returns table (user_id uuid, display_name text, distance_m integer, last_seen_at timestamptz)
language plpgsql stable security definer
set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off
as $$
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
    with flushed as (
      select p.id,
             p.display_name,
             coalesce(b.event_at, p.last_seen_at) as last_seen_at,
             public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe as distance
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
      order by public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe, p.id
      limit max_results
    ),
    located as (
      select p.id,
             p.display_name,
             b.event_at as last_seen_at,
             public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe as distance
      from public.presence_buffer as b
      join public.profiles as p on p.id = b.user_id
      where b.is_online
        and extensions.st_dwithin(public.snap_location(b.latitude, b.longitude), probe, radius_m, false)
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
$$;


create function private.live_index_snapshot(online_only boolean default true, user_ids uuid[] default null)
returns table (
  user_id uuid,
  display_name text,
  is_online boolean,
  last_seen_at timestamptz,
  cell_lat double precision,
  cell_lng double precision
)
language sql stable security definer set search_path = ''
as $$
  with candidates as (
    select p.id from public.profiles as p
    where user_ids is null and (not online_only or p.is_online)
    union
    select b.user_id from public.presence_buffer as b
    where user_ids is null and (not online_only or b.is_online)
    union
    select u.id from unnest(user_ids) as u (id) where user_ids is not null
  ),
  state as (
    select p.id, p.display_name,
           b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at) as newer,
           p.is_online as profile_online, p.last_seen_at as profile_seen,
           p.latitude, p.longitude,
           b.is_online as buffer_online, b.event_at, b.latitude as buffer_lat, b.longitude as buffer_lng
    from candidates as c
    join public.profiles as p on p.id = c.id
    left join public.presence_buffer as b on b.user_id = p.id
  ),
  effective as (
    select s.id, s.display_name,
           case when s.newer then s.buffer_online else s.profile_online end as is_online,
           case when s.newer then s.event_at else s.profile_seen end as last_seen_at,
           case when s.newer and s.buffer_lat is not null
             then public.snap_location(s.buffer_lat, s.buffer_lng)
             else public.snap_location(s.latitude, s.longitude) end as cell
    from state as s
  )
  select e.id, e.display_name, e.is_online, e.last_seen_at,
         extensions.st_y(e.cell::extensions.geometry), extensions.st_x(e.cell::extensions.geometry)
  from effective as e
  where not online_only or e.is_online
$$;

comment on function private.live_index_snapshot(boolean, uuid[]) is
  'The presence state the Redis live index mirrors: per user the effective status and last-seen '
  'time (read rule: a newer buffered event wins) and their privacy cell centre, never a raw '
  'coordinate. Online users only by default; all users with online_only false; the given users '
  'with user_ids. Service role only.';

revoke execute on function private.live_index_snapshot(boolean, uuid[]) from public, anon, authenticated;
grant execute on function private.live_index_snapshot(boolean, uuid[]) to service_role;
