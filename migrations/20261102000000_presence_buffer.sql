-- Issue 3, the presence write path: a narrow buffer that absorbs presence events (one row per
-- user, the newest event wins), a batch RPC that ingests a whole webhook batch in one statement,
-- and pg_cron jobs that apply the buffer to profiles once a minute in one statement and mark
-- users offline whose leave was missed. lock_timeout first: the new foreign key takes a
-- SHARE ROW EXCLUSIVE lock on profiles, and a migration must give up rather than queue
-- behind a long transaction while every profiles writer queues behind it.
--
-- Durability: presence_buffer is a logged (ordinary) table on purpose. The webhook answers 202
-- only after the batch commits, and "accepted" must mean kept: an unlogged table is truncated
-- by crash recovery and is absent on replicas and after a failover, which would silently drop
-- events already acknowledged. Its WAL is small: one narrow row per user, updated in place
-- (HOT, hence the fillfactor), and a flush deletes only what it applied.
--
-- Heartbeats: an event that does not change a user's status (nor their location) costs no
-- profiles write. The flush leaves such a row in the buffer, so its event time stays the user's
-- real last-seen time: the read rule (buffer row when newer than profiles.last_seen_at) shows it,
-- and expire_stale_presence judges staleness by it. So the buffer holds the changes of the last
-- interval plus one heartbeat row per user who stays online: 50,000 online users cost 50,000
-- small rows, not 50,000 profile updates a minute.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create table public.presence_buffer (
  user_id uuid primary key references public.profiles (id) on delete cascade,
  is_online boolean not null,
  event_at timestamptz not null,
  latitude double precision,
  longitude double precision,
  received_at timestamptz not null default now()
) with (fillfactor = 70);

comment on table public.presence_buffer is
  'Presence events not yet applied to profiles: one row per user holding their newest event. '
  'Written by ingest_presence (the presence webhook), drained by flush_presence (pg_cron). A '
  'user''s current state is this row when it is newer than profiles.last_seen_at, else the '
  'profile. Logged on purpose: an accepted event must survive a crash. Service role only.';
comment on column public.presence_buffer.user_id is 'The user the event is about (one row per user).';
comment on column public.presence_buffer.is_online is 'Status reported by the newest event.';
comment on column public.presence_buffer.event_at is
  'When the newest event happened (client or bridge time). Older events are ignored.';
comment on column public.presence_buffer.latitude is
  'Latitude reported with the newest event that carried a location, or null. Never exposed.';
comment on column public.presence_buffer.longitude is
  'Longitude reported with the newest event that carried a location, or null. Never exposed.';
comment on column public.presence_buffer.received_at is 'When the server accepted the newest event.';

-- No policies: only service_role (which bypasses RLS) and the table owner touch it.
alter table public.presence_buffer enable row level security;

revoke all on public.presence_buffer from anon, authenticated;

-- The whole batch in one statement: parse, keep each user's newest event, drop unknown users
-- and events not newer than the state held (flushed or buffered), upsert in user_id order so
-- concurrent batches lock rows in the same order and cannot deadlock. "Last event time wins"
-- also under concurrency: ON CONFLICT re-checks against the newest committed row.
create function public.ingest_presence(events jsonb)
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

revoke execute on function public.ingest_presence(jsonb) from public, anon, authenticated;
grant execute on function public.ingest_presence(jsonb) to service_role;

-- Plans: the buffer is a queue, so its statistics are often those of another moment (analyzed
-- while empty, read while full). Planned from such estimates, a join of the buffer with
-- profiles, a CTE or a locked subquery becomes a nested loop that rescans one side per row:
-- quadratic (an expiry of 50,000 users ran for minutes in the benchmark before this). So the
-- buffer is never joined: each buffer row looks its profile up in a scalar subquery (a primary
-- key lookup whatever the statistics), what was read travels in arrays, and every statement is
-- planned with those arrays' real contents (plan_cache_mode), not a guess about their size.
--
-- Locks: the buffer is read without locking it, profiles are updated, and only then are the
-- applied rows deleted, each only if it still holds the event that was applied (event_at is
-- unchanged). An ingest never waits for the profiles update, only for that short delete; an
-- event that arrives meanwhile stays in the buffer (newer than the profile, so reads show it)
-- and is applied next time: no accepted event is lost.
--
-- The flush: one profiles update for the lot. Rows that change neither status nor location stay
-- in the buffer as the user's heartbeat and cost no profiles write; repeated offline events and
-- rows older than the profile are dropped unwritten.
create function public.flush_presence()
returns integer
language plpgsql volatile security invoker
set search_path = ''
set plan_cache_mode = force_custom_plan
as $$
declare
  ids uuid[];
  is_onlines boolean[];
  event_ats timestamptz[];
  latitudes double precision[];
  longitudes double precision[];
  read_at jsonb;
  changed integer;
begin
  -- One flush or expiry at a time (pg_cron and manual calls may overlap).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('public.presence_buffer', 0));

  -- Rows that change something, or that only need dropping.
  select coalesce(array_agg(b.user_id), '{}'), coalesce(array_agg(b.is_online), '{}'),
         coalesce(array_agg(b.event_at), '{}'), coalesce(array_agg(b.latitude), '{}'),
         coalesce(array_agg(b.longitude), '{}'), coalesce(jsonb_object_agg(b.user_id, b.event_at), '{}')
  into ids, is_onlines, event_ats, latitudes, longitudes, read_at
  from public.presence_buffer as b
  where coalesce((
      select p.last_seen_at is null
          or b.event_at <= p.last_seen_at
          or b.is_online <> p.is_online
          or not b.is_online
          or (b.latitude is not null
            and (b.latitude, b.longitude) is distinct from (p.latitude, p.longitude))
      from public.profiles as p
      where p.id = b.user_id), true);

  with applied as (
    update public.profiles as p
    set is_online = t.is_online,
        last_seen_at = t.event_at,
        latitude = coalesce(t.latitude, p.latitude),
        longitude = coalesce(t.longitude, p.longitude)
    from unnest(ids, is_onlines, event_ats, latitudes, longitudes)
      as t (user_id, is_online, event_at, latitude, longitude)
    where p.id = t.user_id
      and (p.last_seen_at is null or t.event_at > p.last_seen_at)
      and (p.last_seen_at is null
        or t.is_online <> p.is_online
        or (t.latitude is not null
          and (t.latitude, t.longitude) is distinct from (p.latitude, p.longitude)))
    returning 1
  )
  select count(*) into changed from applied;

  delete from public.presence_buffer as b
  where b.user_id = any (ids)
    and b.event_at = (read_at ->> b.user_id::text)::timestamptz;

  return changed;
end
$$;

comment on function public.flush_presence() is
  'Applies the presence buffer to profiles (is_online, last_seen_at, location) with one '
  'update statement, then removes the applied rows, and returns the number of profiles changed. A user who flapped any number of '
  'times since the last flush costs one update; a heartbeat that changes neither status nor '
  'location costs none and stays buffered as the user''s last-seen time. Run by pg_cron job '
  'presence-flush. Service role only.';

revoke execute on function public.flush_presence() from public, anon, authenticated;
grant execute on function public.flush_presence() to service_role;

-- For missed leaves (app killed, network gone): a user whose newest event, buffered or flushed,
-- says is_online but is older than max_age is marked offline, last seen at that event.
create function public.expire_stale_presence(max_age interval default '5 minutes')
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

revoke execute on function public.expire_stale_presence(interval) from public, anon, authenticated;
grant execute on function public.expire_stale_presence(interval) to service_role;

-- The jobs, where pg_cron is installed (the platform layer enables it in database postgres;
-- elsewhere, e.g. a scratch database, flushing is left to the caller). Schedules are settings,
-- read here with every-minute defaults: set sltr.presence_flush_schedule or
-- sltr.presence_expire_schedule (any pg_cron schedule, e.g. '30 seconds' on pg_cron 1.5+)
-- before migrating, or later call cron.schedule again with the job's name.
do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.schedule(
      'presence-flush',
      coalesce(nullif(current_setting('sltr.presence_flush_schedule', true), ''), '* * * * *'),
      'select public.flush_presence()');
    perform cron.schedule(
      'presence-expire',
      coalesce(nullif(current_setting('sltr.presence_expire_schedule', true), ''), '* * * * *'),
      'select public.expire_stale_presence()');
  end if;
end
$$;
