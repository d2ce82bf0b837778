-- Grid-edge hysteresis. A still user near a cell edge alternates cells with GPS noise (sigma
-- 5-20 m), and the rate of alternation tells an observer the distance to the edge. The cell a
-- user is shown in now changes only when a fix lies more than 100 m (on either axis) outside it:
-- a fix within that margin keeps the location held. The live index applies the same rule
-- (functions/_shared/live_index.ts, keptCells). Otherwise ingest_presence as
-- 20261201000000_presence_push.sql.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create function private.keeps_cell(
  latitude double precision,
  longitude double precision,
  held_latitude double precision,
  held_longitude double precision
)
returns boolean
language plpgsql immutable strict parallel safe set search_path = ''
as $$
-- Whether the fix lies within 100 m, on either axis, of the bounds of the held location's cell:
-- the grid of public.snap_location, its row and column computed as it computes them. In
-- arithmetic here, not through snap_location, and in plpgsql (2 us a call, against 26 us for
-- the same as a SQL function with a SET clause): it runs for every located event of every batch.
declare
  r constant double precision := pg_catalog.floor((held_latitude + 90) / 0.0045);
  n constant double precision := pg_catalog.float8larger(1, pg_catalog.floor(360
    * pg_catalog.cos(pg_catalog.radians(pg_catalog.float8smaller(90, -90 + (r + 0.5) * 0.0045))) / 0.0045));
  south constant double precision := -90 + r * 0.0045;
  west constant double precision := -180
    + pg_catalog.float8smaller(pg_catalog.floor((held_longitude + 180) * n / 360), n - 1) * 360 / n;
  dlat constant double precision := 100 / 111195.0;
  dlng constant double precision := dlat / pg_catalog.float8larger(0.01, pg_catalog.cos(pg_catalog.radians(latitude)));
begin
  return latitude between south - dlat and south + 0.0045 + dlat
    and longitude between west - dlng and west + 360 / n + dlng;
end
$$;

comment on function private.keeps_cell(double precision, double precision, double precision, double precision) is
  'True when the fix (latitude, longitude) lies in the privacy cell of the held location or '
  'within 100 m of it on either axis: the cell shown does not change (grid-edge hysteresis). '
  'The live index applies the same rule (keptCells in functions/_shared/live_index.ts).';

revoke execute on function private.keeps_cell(double precision, double precision, double precision, double precision)
  from public, anon, authenticated;
grant execute on function private.keeps_cell(double precision, double precision, double precision, double precision)
  to service_role;

create or replace function public.ingest_presence(events jsonb)
returns jsonb
language plpgsql volatile security invoker set search_path = ''
as $$
declare
  bad_index bigint;
  problem text;
  total integer;
  accepted integer;
  changes jsonb;
begin
  if jsonb_typeof(events) is distinct from 'array' then
    raise exception using errcode = '22023', message = 'events must be a JSON array';
  end if;
  total := jsonb_array_length(events);

  -- Validate everything before writing anything: bad input changes nothing.
  select t.n - 1, t.problem
  into bad_index, problem
  from (
    select e.n, case
      when jsonb_typeof(e.value) <> 'object' then 'is not an object'
      when jsonb_typeof(e.value -> 'user_id') is distinct from 'string'
        or (e.value ->> 'user_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        then 'user_id must be a uuid'
      when jsonb_typeof(e.value -> 'status') is distinct from 'string'
        or (e.value ->> 'status') !~ '^(on|off)line$'
        then 'status must be the string (on|off)line'
      when jsonb_typeof(e.value -> 'at') is distinct from 'string'
        then 'at must be an ISO-8601 timestamp string'
      when jsonb_typeof(coalesce(e.value -> 'lat', 'null')) not in ('number', 'null')
        or jsonb_typeof(coalesce(e.value -> 'lng', 'null')) not in ('number', 'null')
        then 'lat and lng must be numbers'
      when (jsonb_typeof(coalesce(e.value -> 'lat', 'null')) = 'null')
        <> (jsonb_typeof(coalesce(e.value -> 'lng', 'null')) = 'null')
        then 'lat and lng go together'
      when (e.value ->> 'lat')::double precision not between -90 and 90 then 'lat must be between -90 and 90'
      when (e.value ->> 'lng')::double precision not between -180 and 180 then 'lng must be between -180 and 180'
      when not isfinite((e.value ->> 'at')::timestamptz) then 'at must be a finite timestamp'
      when (e.value ->> 'at')::timestamptz > statement_timestamp() + interval '5 minutes'
        then 'at is more than 5 minutes in the future'
    end as problem
    from jsonb_array_elements(events) with ordinality as e (value, n)
  ) as t
  where t.problem is not null
  order by t.n
  limit 1;

  if problem is not null then
    raise exception using errcode = '22023', message = format('events[%s]: %s', bad_index, problem);
  end if;

  with incoming as (
    select (e.value ->> 'user_id')::uuid as user_id,
           (e.value ->> 'status') <> 'offline' as is_online,
           (e.value ->> 'at')::timestamptz as event_at,
           (e.value ->> 'lat')::double precision as latitude,
           (e.value ->> 'lng')::double precision as longitude,
           e.n
    from jsonb_array_elements(events) with ordinality as e (value, n)
  ),
  held as (
    -- Per event, the newest time already held for its user (null for an unknown user,
    -- -infinity for a known one without any) and the status held with it. Scalar subqueries,
    -- not joins: each is a primary key lookup whatever the buffer's statistics say.
    select i.*,
           greatest(
             (select coalesce(p.last_seen_at, '-infinity') from public.profiles as p where p.id = i.user_id),
             (select b.event_at from public.presence_buffer as b where b.user_id = i.user_id)
           ) as held_at,
           coalesce(
             (select b.is_online from public.presence_buffer as b
              where b.user_id = i.user_id
                and b.event_at > coalesce(
                  (select p.last_seen_at from public.profiles as p where p.id = i.user_id), '-infinity')),
             (select p.is_online from public.profiles as p where p.id = i.user_id)
           ) as was_online
    from incoming as i
  ),
  fresh as (
    -- Known users' events newer than the state held (flushed or buffered).
    select h.user_id, h.is_online, h.event_at, h.latitude, h.longitude, h.n, h.was_online
    from held as h
    where h.event_at > h.held_at
  ),
  newest as (
    -- Per user the newest event (on a tie, the later one in the batch), with the newest
    -- location of the batch when that event carried none. Window and DISTINCT ON: two sorts,
    -- no join, so a batch of any size stays linear.
    select distinct on (w.user_id) w.user_id, w.is_online, w.event_at, w.latitude, w.longitude,
           w.was_online
    from (
      select f.user_id, f.is_online, f.event_at, f.n, f.was_online,
             first_value(f.latitude) over located as latitude,
             first_value(f.longitude) over located as longitude
      from fresh as f
      window located as (partition by f.user_id order by f.latitude is null, f.event_at desc, f.n desc)
    ) as w
    order by w.user_id, w.event_at desc, w.n desc
  ),
  placed as (
    -- The grid's hysteresis: a fix within 100 m of the cell the user is shown in keeps the
    -- location held (so the cell shown), whichever side of an edge GPS noise puts it.
    select n.user_id, n.is_online, n.event_at, n.was_online,
           case when k.kept then h.latitude else n.latitude end as latitude,
           case when k.kept then h.longitude else n.longitude end as longitude
    from newest as n
    left join lateral (
      -- The location held: the buffered one when it is newer than the profile, else the profile's.
      select coalesce(hb.latitude, p.latitude) as latitude,
             coalesce(hb.longitude, p.longitude) as longitude
      from public.profiles as p
      left join public.presence_buffer as hb
        on hb.user_id = p.id and hb.latitude is not null
          and (p.last_seen_at is null or hb.event_at > p.last_seen_at)
      where p.id = n.user_id
    ) as h on true
    cross join lateral (
      select coalesce(private.keeps_cell(n.latitude, n.longitude, h.latitude, h.longitude), false) as kept
    ) as k
  ),
  written as (
    insert into public.presence_buffer as b (user_id, is_online, event_at, latitude, longitude)
    select n.user_id, n.is_online, n.event_at, n.latitude, n.longitude
    from placed as n
    order by n.user_id
    on conflict (user_id) do update
      set is_online = excluded.is_online,
          event_at = excluded.event_at,
          latitude = coalesce(excluded.latitude, b.latitude),
          longitude = coalesce(excluded.longitude, b.longitude),
          received_at = excluded.received_at
      where excluded.event_at > b.event_at
    returning b.user_id
  )
  select (select count(*) from fresh),
         (select jsonb_agg(jsonb_build_object('user_id', n.user_id, 'is_online', n.is_online,
                   'last_seen_at', n.event_at) order by n.user_id)
          from newest as n
          where n.is_online is distinct from n.was_online
            and n.user_id in (select written.user_id from written))
  into accepted, changes;

  if changes is not null then
    perform private.push_status_changes(changes);
  end if;

  return jsonb_build_object('accepted', accepted, 'ignored', total - accepted);
end
$$;

comment on function public.ingest_presence(jsonb) is
  'Ingests a batch of presence events [{user_id, status: online|offline, at, lat?, lng?}] in '
  'one statement: per user the newest event wins, events not newer than the state held and '
  'events for unknown users are ignored, so replays and out-of-order delivery are harmless. '
  'Status changes it writes are pushed to their online watchers (push_status_changes). '
  'Returns {"accepted": n, "ignored": m}. Invalid input raises 22023 and writes nothing. '
  'Service role only.';
