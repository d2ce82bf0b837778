-- Undo the presence push, in reverse order: the watch-list expiry job, the global broadcast
-- back on unconditionally, expire_stale_presence and ingest_presence without pushes (their
-- bodies as 20261102000000_presence_buffer.sql and 20261104000000_realtime.sql left them),
-- the inbox policy, the push and watch functions, then the watch lists and the private schema.
-- Data in existing tables is untouched; the watch lists themselves (screen lists that expire
-- within 10 minutes anyway) go with their table.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.unschedule(j.jobid) from cron.job as j where j.jobname = 'presence-watches-expire';
  end if;
end
$$;

create or replace function public.broadcast_presence_changes()
returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  part jsonb;
begin
  -- Status changes only: is_online flipped, or a newer last_seen_at while offline. A location
  -- update changes last_seen_at too while is_online stays true: that is nobody's business.
  for part in
    select jsonb_agg(c.change order by c.position)
    from (
      select jsonb_build_object('user_id', new_row.id, 'is_online', new_row.is_online,
               'last_seen_at', new_row.last_seen_at) as change,
             row_number() over (order by new_row.last_seen_at, new_row.id) as position
      from new_rows as new_row
      join old_rows as old_row on old_row.id = new_row.id
      where new_row.is_online is distinct from old_row.is_online
         or (not new_row.is_online and new_row.last_seen_at is distinct from old_row.last_seen_at)
    ) as c
    group by (c.position - 1) / 1000
    order by (c.position - 1) / 1000
  loop
    perform realtime.send(jsonb_build_object('changes', part), 'status_changes', 'presence:changes', true);
  end loop;
  return null;
end
$$;

comment on function public.broadcast_presence_changes() is
  'Trigger: after each UPDATE statement on profiles, broadcasts the status changes it made as '
  'one Realtime message (event status_changes, private topic presence:changes, payload '
  '{"changes": [{user_id, is_online, last_seen_at}]}, at most 1000 per message). A change is '
  'going online or offline, or a newer last_seen_at while offline. Never carries locations.';

create or replace function public.expire_stale_presence(max_age interval default '5 minutes')
returns integer
language plpgsql volatile security invoker
set search_path = ''
set plan_cache_mode = force_custom_plan
as $$
declare
  cutoff timestamptz;
  ids uuid[];
  event_ats timestamptz[];
  latitudes double precision[];
  longitudes double precision[];
  read_at jsonb;
  expired integer;
begin
  if max_age is null or max_age < interval '0' then
    raise exception using errcode = '22023', message = 'max_age must be a non-negative interval';
  end if;
  cutoff := statement_timestamp() - max_age;

  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('public.presence_buffer', 0));

  -- Users whose newest state is a buffered event saying is_online, too old.
  select coalesce(array_agg(s.user_id), '{}'), coalesce(array_agg(s.event_at), '{}'),
         coalesce(array_agg(s.latitude), '{}'), coalesce(array_agg(s.longitude), '{}'),
         coalesce(jsonb_object_agg(s.user_id, s.event_at), '{}')
  into ids, event_ats, latitudes, longitudes, read_at
  from public.presence_buffer as s
  where s.is_online and s.event_at < cutoff
    and coalesce((
      select p.last_seen_at is null or s.event_at > p.last_seen_at
      from public.profiles as p
      where p.id = s.user_id), false);

  with stale as (
    select t.user_id, t.event_at, t.latitude, t.longitude
    from unnest(ids, event_ats, latitudes, longitudes) as t (user_id, event_at, latitude, longitude)
    union all
    -- Users whose newest state is the profile (no newer buffered event). A profile flagged
    -- is_online without any event time (legacy rows) counts as stale too.
    select p.id, p.last_seen_at, null, null
    from public.profiles as p
    where p.is_online
      and (p.last_seen_at is null or p.last_seen_at < cutoff)
      and not coalesce((
        select p.last_seen_at is null or b.event_at > p.last_seen_at
        from public.presence_buffer as b
        where b.user_id = p.id), false)
  ),
  applied as (
    update public.profiles as p
    set is_online = false,
        last_seen_at = coalesce(s.event_at, p.last_seen_at),
        latitude = coalesce(s.latitude, p.latitude),
        longitude = coalesce(s.longitude, p.longitude)
    from stale as s
    where p.id = s.user_id
    returning 1
  )
  select count(*) into expired from applied;

  -- The expired buffered events, unless a newer event replaced one meanwhile (that user is back).
  delete from public.presence_buffer as b
  where b.user_id = any (ids)
    and b.event_at = (read_at ->> b.user_id::text)::timestamptz;

  return expired;
end
$$;

comment on function public.expire_stale_presence(interval) is
  'Marks offline every user whose newest presence event (buffered or flushed) says is_online '
  'but is older than max_age (default 5 minutes): missed leaves. last_seen_at becomes that '
  'event''s time. Returns the number of users marked offline. Run by pg_cron job '
  'presence-expire. Service role only.';

create or replace function public.ingest_presence(events jsonb)
returns jsonb
language plpgsql volatile security invoker set search_path = ''
as $$
declare
  bad_index bigint;
  problem text;
  total integer;
  accepted integer;
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
    -- Per event, the newest time already held for its user: null for an unknown user,
    -- -infinity for a known one without any. Scalar subqueries, not joins: each is a primary
    -- key lookup whatever the buffer's statistics say (a join planned from statistics taken
    -- while the buffer was empty rescans it per event: 1,000 x 50,000 comparisons).
    select i.*,
           greatest(
             (select coalesce(p.last_seen_at, '-infinity') from public.profiles as p where p.id = i.user_id),
             (select b.event_at from public.presence_buffer as b where b.user_id = i.user_id)
           ) as held_at
    from incoming as i
  ),
  fresh as (
    -- Known users' events newer than the state held (flushed or buffered).
    select h.user_id, h.is_online, h.event_at, h.latitude, h.longitude, h.n
    from held as h
    where h.event_at > h.held_at
  ),
  newest as (
    -- Per user the newest event (on a tie, the later one in the batch), with the newest
    -- location of the batch when that event carried none. Window and DISTINCT ON: two sorts,
    -- no join, so a batch of any size stays linear.
    select distinct on (w.user_id) w.user_id, w.is_online, w.event_at, w.latitude, w.longitude
    from (
      select f.user_id, f.is_online, f.event_at, f.n,
             first_value(f.latitude) over located as latitude,
             first_value(f.longitude) over located as longitude
      from fresh as f
      window located as (partition by f.user_id order by f.latitude is null, f.event_at desc, f.n desc)
    ) as w
    order by w.user_id, w.event_at desc, w.n desc
  ),
  written as (
    insert into public.presence_buffer as b (user_id, is_online, event_at, latitude, longitude)
    select n.user_id, n.is_online, n.event_at, n.latitude, n.longitude
    from newest as n
    order by n.user_id
    on conflict (user_id) do update
      set is_online = excluded.is_online,
          event_at = excluded.event_at,
          latitude = coalesce(excluded.latitude, b.latitude),
          longitude = coalesce(excluded.longitude, b.longitude),
          received_at = excluded.received_at
      where excluded.event_at > b.event_at
    returning 1
  )
  select count(*) into accepted from fresh;

  return jsonb_build_object('accepted', accepted, 'ignored', total - accepted);
end
$$;

comment on function public.ingest_presence(jsonb) is
  'Ingests a batch of presence events [{user_id, status: online|offline, at, lat?, lng?}] in '
  'one statement: per user the newest event wins, events not newer than the state held and '
  'events for unknown users are ignored, so replays and out-of-order delivery are harmless. '
  'Returns {"accepted": n, "ignored": m}. Invalid input raises 22023 and writes nothing. '
  'Service role only.';

drop policy "Users read their own inbox" on realtime.messages;

drop function private.push_status_changes(jsonb);

drop function public.watch_presence(uuid[]);

drop table private.presence_watches;

drop schema private;
