-- The nearby search's two located arms stay on the GiST index's nearest-first scan. Ordering an
-- arm by (distance, user id), the tie-break 20261201010000_live_index.sql added, cannot be read
-- off a KNN scan, so Postgres had switched to collecting every online user in range and sorting
-- them (13 ms at a 50 km radius over 5,000 online users, hundreds of ms at 50,000). Now each arm
-- first walks nearest first by distance alone to the max_results-th user, the cut, then sorts only
-- the users within the cut (+1 cm, for rounding) by (distance, user id): the same answer, ties
-- at the cut included, from about max_results rows. Otherwise as 20261201010000_live_index.sql.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

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
$$;
