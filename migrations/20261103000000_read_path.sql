-- Issue 4, the read path: real-time online status for many users in one query, and
-- "who is online near me" through PostGIS without ever revealing anyone's coordinates.
-- Both read profiles and the presence buffer together, so an event is visible as soon as it
-- is accepted, before pg_cron flushes it into profiles.
--
-- Privacy scheme (what makes trilateration useless, not only impolite):
--   * A user's position is snapped to the centre of a ~500 m x 500 m grid cell
--     (public.snap_location). Every step of the nearby query (radius filter, ordering, the
--     distance) uses that snapped point only; the true latitude/longitude never take part,
--     and the GiST index holds nothing else.
--   * So any number of probes from any chosen points can at best recover the cell centre: all
--     positions inside a cell give byte-identical answers. The best an attacker can do is
--     ~190 m mean error (a uniform point in a 500 m square is on average 0.38 x 500 m from
--     its centre). tests/db/30_read_path.test.sql runs least squares over 16 probes around
--     each of 8 users: it finds the cell centres (RMS 12 m) and misses the users (RMS 200 m).
--   * The reported distance is rounded to 100 m on top, so even the snapped point is only
--     approximately revealed, and nothing returns coordinates of any kind.
--   * The grid is global and stateless, so a user who stays put never leaks more than the
--     cell. What it cannot hide: the moment a moving user crosses from one cell to another
--     (they are near that border then). Per-user jitter would not remove that and would leak
--     through averaging across epochs, so it is not used.
--
-- An expression index instead of a stored generated column: the index stays in sync with
-- latitude/longitude by construction, adding it needs no table rewrite, and rows store
-- nothing new. The same index on the presence buffer (unflushed events) has a write cost:
-- an event that moves a user is no longer a HOT update there (measured: ~2x the update time
-- of such rows); events that change neither status nor location stay HOT.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create extension if not exists postgis with schema extensions;

-- Cells are 0.0045 degrees of latitude (~500 m) high; each latitude band is split into as
-- many equal longitude cells as make them ~500 m wide there, so cells stay roughly square
-- from the equator to the poles. Written out as one expression, with
--   band centre  c = min(90, -90 + (floor((latitude + 90) / 0.0045) + 0.5) * 0.0045)
--   band cells   n = max(1, floor(360 * cos(radians(c)) / 0.0045))
--   the point    (-180 + (min(floor((longitude + 180) * n / 360), n - 1) + 0.5) * 360 / n, c)
-- because a single immutable SQL expression without a SET clause is inlined by Postgres into
-- the index and the queries (with SET search_path every row would pay a function call). It is
-- not a security definer, and every name in it is schema-qualified or a built-in operator.
-- float8smaller/float8larger rather than least/greatest: they are strict, so a missing
-- coordinate gives no point (least would ignore the null) and the function stays inlinable.
create function public.snap_location(latitude double precision, longitude double precision)
returns extensions.geography
language sql immutable strict parallel safe
as $$
  select extensions.st_point(
    -180 + (
      pg_catalog.float8smaller(
        pg_catalog.floor((longitude + 180)
          * pg_catalog.float8larger(1, pg_catalog.floor(360 * pg_catalog.cos(pg_catalog.radians(pg_catalog.float8smaller(90, -90 + (pg_catalog.floor((latitude + 90) / 0.0045) + 0.5) * 0.0045))) / 0.0045)) / 360),
        pg_catalog.float8larger(1, pg_catalog.floor(360 * pg_catalog.cos(pg_catalog.radians(pg_catalog.float8smaller(90, -90 + (pg_catalog.floor((latitude + 90) / 0.0045) + 0.5) * 0.0045))) / 0.0045)) - 1
      ) + 0.5
    ) * 360
      / pg_catalog.float8larger(1, pg_catalog.floor(360 * pg_catalog.cos(pg_catalog.radians(pg_catalog.float8smaller(90, -90 + (pg_catalog.floor((latitude + 90) / 0.0045) + 0.5) * 0.0045))) / 0.0045)),
    pg_catalog.float8smaller(90, -90 + (pg_catalog.floor((latitude + 90) / 0.0045) + 0.5) * 0.0045),
    4326
  )::extensions.geography
$$;

comment on function public.snap_location(double precision, double precision) is
  'The privacy grid: the centre of the ~500 m x 500 m cell holding (latitude, longitude), as a '
  'geography point. Everything the nearby search reveals is computed from this point only, so '
  'no number of probes locates a user better than their cell. Immutable; indexed by '
  'idx_profiles_location_is_online.';

-- authenticated keeps EXECUTE: index maintenance evaluates it as the user who updates their
-- own location. It is a pure function of its arguments and reads nothing stored.
revoke execute on function public.snap_location(double precision, double precision) from public, anon;
grant execute on function public.snap_location(double precision, double precision) to authenticated, service_role;

-- Only online users are ever searched, so the index holds only them (a few percent of rows).
-- On creating it without CONCURRENTLY (require-concurrent-index-creation silenced): migrations
-- run inside a transaction (dbmate, supabase db push), where CONCURRENTLY is not allowed. It
-- indexes online users only, seconds at a million profiles, and blocks writes, not reads,
-- meanwhile; lock_timeout bounds the wait for the lock.
-- squawk-ignore require-concurrent-index-creation
create index idx_profiles_location_is_online on public.profiles
  using gist (public.snap_location(latitude, longitude)) where is_online;

comment on index public.idx_profiles_location_is_online is
  'Snapped locations of online users (partial GiST): nearest-first search within a radius.';

-- One round trip for N users; sees events that are not flushed yet.
-- random_page_cost as on hosted Supabase (SSD, data in memory): with the stock 4.0 Postgres
-- reads all of profiles for a few thousand ids instead of looking each up by primary key
-- (90 ms instead of 25 ms for 10000 ids among a million).
create function public.get_online_users_batch(user_ids uuid[])
returns table (user_id uuid, is_online boolean, last_seen_at timestamptz)
language plpgsql stable security definer set search_path = '' set random_page_cost = 1.1
as $$
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
           case when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
             then b.event_at else p.last_seen_at end
    from public.profiles as p
    left join public.presence_buffer as b on b.user_id = p.id
    where p.id = any (user_ids);
end
$$;

comment on function public.get_online_users_batch(uuid[]) is
  'Online status of up to 10000 users in one query, in real time: an accepted presence event '
  'counts before pg_cron flushes it. Unknown ids are absent; duplicates are answered once. '
  'More than 10000 ids (or null) raises 22023. For signed-in users and service_role; anon is '
  'refused (permission denied).';

revoke execute on function public.get_online_users_batch(uuid[]) from public, anon;
grant execute on function public.get_online_users_batch(uuid[]) to authenticated, service_role;

-- The buffer holds one row per online user (heartbeats stay buffered, see
-- 20261102000000_presence_buffer.sql), so at scale it is as large as the online population
-- and the nearby search must not scan it. The same snapped-location partial GiST index as on
-- profiles, plus the few online rows without a location. Heartbeats that change neither
-- status nor location stay HOT updates (no indexed column changes); events that move a user
-- do not (the price of reading the buffer nearest-first).
-- squawk-ignore require-concurrent-index-creation
create index idx_presence_buffer_location_is_online on public.presence_buffer
  using gist (public.snap_location(latitude, longitude)) where is_online;

comment on index public.idx_presence_buffer_location_is_online is
  'Snapped locations of buffered online events (partial GiST): the nearby search''s real-time arm.';

-- squawk-ignore require-concurrent-index-creation
create index idx_presence_buffer_user_id_is_online_unlocated on public.presence_buffer (user_id)
  where is_online and latitude is null;

comment on index public.idx_presence_buffer_user_id_is_online_unlocated is
  'Buffered online events without a location: users who came online where their profile says.';

-- The nearby search itself, for trusted callers that decide whom to exclude (the
-- nearby-online function caches one answer for everyone in a cell and removes the caller
-- when serving it). A user's effective state is the buffered event when it is newer than the
-- profile, else the profile; three arms find the nearest online users by that rule, each
-- through an index and each stopping after max_results rows:
--   flushed    online profiles (partial GiST), unless a newer buffered event took them
--              offline or into another grid cell;
--   located    buffered online events with a location (partial GiST on the buffer);
--   unlocated  buffered online events without one, for users whose profile is offline
--              (they came online where their profile says; usually none).
-- A user in both flushed and located (a heartbeat in the same cell) has the same snapped
-- point there, hence the same distance, and is kept once.
-- The plan is the same for every input (three index scans), so it is made once per
-- connection (force_generic_plan) instead of on each call (~1.5 ms of planning), and it never
-- scans a table (enable_seqscan off): a heavily updated buffer's GiST index grows between
-- vacuums, and the planner would then rather read the whole buffer on every call.
create function public.find_nearby_online_users(
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
      order by public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe
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
      order by public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe
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

comment on function public.find_nearby_online_users(double precision, double precision, integer, integer, uuid) is
  'Online users whose snapped location (public.snap_location) is within radius_m metres of '
  '(lat, lng), nearest first, in real time (buffered events count), without excluded_user_id. '
  'distance_m is the distance to the snapped point rounded to 100 m (at least 100). For '
  'service_role and the edge functions only: clients call nearby_online_users. lat, lng, '
  'radius_m (1..50000) and max_results (1..1000) out of range raise 22023.';

revoke execute on function public.find_nearby_online_users(double precision, double precision, integer, integer, uuid)
  from public, anon, authenticated;
grant execute on function public.find_nearby_online_users(double precision, double precision, integer, integer, uuid)
  to service_role;

-- What signed-in clients call: the caller (auth.uid()) is never in their own answer.
create function public.nearby_online_users(
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
    select n.user_id, n.display_name, n.distance_m, n.last_seen_at
    from public.find_nearby_online_users(lat, lng, radius_m, max_results, (select auth.uid())) as n;
end
$$;

comment on function public.nearby_online_users(double precision, double precision, integer, integer) is
  'Online users within radius_m metres (1..50000, default 5000) of (lat, lng), nearest first, at '
  'most max_results (1..500, default 50), never the caller, in real time. Privacy: distances '
  'are computed from each user''s ~500 m grid cell centre and rounded to 100 m, so no number '
  'of probes places anyone better than their cell; no coordinates are returned. Out-of-range '
  'input raises 22023. For signed-in users and service_role; anon is refused (permission '
  'denied) because "near me" needs a caller.';

revoke execute on function public.nearby_online_users(double precision, double precision, integer, integer)
  from public, anon;
grant execute on function public.nearby_online_users(double precision, double precision, integer, integer)
  to authenticated, service_role;
