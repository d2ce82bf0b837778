-- Status pushed to the people who care, in real time, without fan-out to everyone.
--
-- Each signed-in user has a private inbox topic, presence:user:<their id>, which only they may
-- join and only the server writes (by realtime.send, as the owner of the functions below).
-- A user watches their favorites (always) and the users a screen shows now, set with
-- watch_presence(user_ids) (replaces the previous screen list; expires 10 minutes after the
-- last call). When an accepted presence event changes someone's status (online <-> offline),
-- or expire_stale_presence finds a missed leave, every online watcher of that user gets one
-- message on their inbox in the same transaction: event status_changes,
-- {"changes": [{user_id, is_online, last_seen_at}]}, all of a batch's changes for that watcher
-- together, never a location. Heartbeats and moves push nothing.
--
-- Why here: the watch lists, favorites and who is online are all in Postgres, so the fan-out is
-- one indexed join; writing the broadcasts to realtime.messages (as realtime.send does) in the
-- same transaction makes a push exactly as durable as the status change it reports (nothing
-- for a batch that rolls back), and hosted Realtime checks no write policy for database
-- broadcasts, where its REST API checks one per private topic: measured 0.4 ms and 3
-- statements per message through realtime.send against 3.8 ms and 7 through the REST API
-- (bench/push.ts, docs/realtime.md "Pushes").
--
-- The old global topic presence:changes (one broadcast per flush, to every signed-in user)
-- stays only behind a setting that is off by default: sltr.presence_global_broadcast = on.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

-- What clients must not call lives outside public, the schema the API exposes.
create schema private;

comment on schema private is
  'Service-only tables and functions: not exposed by the API (PostgREST serves public only).';

create table private.presence_watches (
  watcher_id uuid not null references public.profiles (id) on delete cascade,
  watched_id uuid not null references public.profiles (id) on delete cascade,
  expires_at timestamptz not null,
  primary key (watcher_id, watched_id),
  constraint presence_watches_not_self check (watcher_id <> watched_id)
);

comment on table private.presence_watches is
  'Who watches whom because a screen shows them now (the nearby grid, a chat list, a profile): '
  'set by watch_presence(), replaced on every call, ignored after expires_at. Favorites are '
  'watched without a row here.';
comment on column private.presence_watches.expires_at is
  'Ten minutes after the watcher''s last watch_presence() call; a vanished client costs nothing.';

alter table private.presence_watches enable row level security;

-- The fan-out: the watchers of a user whose status changed.
create index idx_presence_watches_watched_id on private.presence_watches (watched_id)
  include (watcher_id, expires_at);

create function public.watch_presence(user_ids uuid[])
returns integer
language plpgsql volatile security definer set search_path = ''
as $$
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
$$;

comment on function public.watch_presence(uuid[]) is
  'Sets the users the caller''s screens show now (replacing the previous list; unknown ids '
  'ignored; at most 1000, else 22023) for 10 minutes, and returns how many users the caller '
  'watches in all (these plus favorites). Their status changes arrive on the caller''s inbox '
  'topic presence:user:<caller id>. Call again to renew. Signed-in users only.';

revoke execute on function public.watch_presence(uuid[]) from public, anon;
grant execute on function public.watch_presence(uuid[]) to authenticated;

-- One message per online watcher, with every change of this call that concerns them. One
-- insert for all of them: what realtime.send does per message (a new id, also in the payload;
-- extension broadcast; private), without a function call and a savepoint per recipient, which
-- cost 0.4 ms per message in the benchmark.
create function private.push_status_changes(changes jsonb)
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
    select gen_random_uuid() as id, w.watcher_id, jsonb_agg(w.change order by w.user_id) as changes
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

comment on function private.push_status_changes(jsonb) is
  'Sends status changes [{user_id, is_online, last_seen_at}] to the inboxes of their online '
  'watchers (favorites and unexpired watch_presence lists): one message per watcher. Called by '
  'ingest_presence and expire_stale_presence in their transaction. Returns messages sent.';

revoke execute on function private.push_status_changes(jsonb) from public, anon, authenticated;
-- ingest_presence runs as its caller (service_role through the API, postgres from pg_cron).
grant usage on schema private to service_role;
grant execute on function private.push_status_changes(jsonb) to service_role;

create policy "Users read their own inbox" on realtime.messages
  for select to authenticated
  using ((select realtime.topic()) = 'presence:user:' || (select auth.uid())::text
    and extension = 'broadcast');

comment on policy "Users read their own inbox" on realtime.messages is
  'A signed-in user may join presence:user:<their id> and receive its broadcasts; nobody else '
  'may, and no client may write to an inbox (no insert policy).';

-- ingest_presence as before (20261102000000_presence_buffer.sql), plus: the status changes it
-- writes (events whose status differs from the user's current one) are pushed.
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

-- expire_stale_presence as before, plus: the missed leaves it finds are pushed.
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
  changes jsonb;
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
    returning p.id, p.last_seen_at
  )
  select count(*),
         jsonb_agg(jsonb_build_object('user_id', a.id, 'is_online', false,
           'last_seen_at', a.last_seen_at) order by a.id)
  into expired, changes
  from applied as a;

  -- The expired buffered events, unless a newer event replaced one meanwhile (that user is back).
  delete from public.presence_buffer as b
  where b.user_id = any (ids)
    and b.event_at = (read_at ->> b.user_id::text)::timestamptz;

  if changes is not null then
    perform private.push_status_changes(changes);
  end if;

  return expired;
end
$$;

comment on function public.expire_stale_presence(interval) is
  'Marks offline every user whose newest presence event (buffered or flushed) says is_online '
  'but is older than max_age (default 5 minutes): missed leaves. last_seen_at becomes that '
  'event''s time; the changes are pushed to online watchers. Returns the number of users '
  'marked offline. Run by pg_cron job presence-expire. Service role only.';

-- The global topic, off unless asked for (it sends every change in the world to everyone).
create or replace function public.broadcast_presence_changes()
returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  part jsonb;
begin
  if coalesce(current_setting('sltr.presence_global_broadcast', true), '') <> 'on' then
    return null;
  end if;
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
  'Trigger, off by default (set sltr.presence_global_broadcast = on to enable): after each '
  'UPDATE statement on profiles, broadcasts the status changes it made as one Realtime message '
  '(event status_changes, private topic presence:changes, at most 1000 changes per message) to '
  'every signed-in user. The inboxes (push_status_changes) replace it.';

-- Expired watch lists are ignored by the fan-out; this only keeps the table small.
do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.schedule('presence-watches-expire', '*/10 * * * *',
      'delete from private.presence_watches where expires_at < now()');
  end if;
end
$$;
