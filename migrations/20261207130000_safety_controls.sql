-- Safety controls: block someone, appear offline (incognito), hide one's distance. Enforced
-- wherever status or location leaves the database: the status reads (get_online_users_batch,
-- the legacy get_online_users and online_profiles, profiles.is_online), nearby
-- (find_nearby_online_users), the pushes (write_status_messages) and the watch lists. The live
-- index in Redis applies the same rules from private.privacy_changes (functions/_shared/
-- live_index_privacy.ts), within a second. docs/privacy.md, "Safety controls".
--
-- A block is symmetric in effect: neither user sees the other anywhere. Nobody learns who
-- blocked them: a blocked pair reads as offline, with no last seen, exactly as an offline user.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

-- ---- the settings ---------------------------------------------------------------------------

alter table public.profiles
  add column incognito boolean not null default false,
  add column show_distance boolean not null default true;

comment on column public.profiles.incognito is
  'The user appears offline to everyone (status reads, nearby, pushes, last seen); their own '
  'reads still work. Set through public.set_privacy.';
comment on column public.profiles.show_distance is
  'False: others see the user nearby, ordered by 1 km band only, with distance_m null. Set '
  'through public.set_privacy.';

-- is_online is no longer readable column by column: an incognito user's would say online.
-- Status is read through get_online_users_batch, online-status and online_profiles.
revoke select (is_online) on public.profiles from authenticated;

-- ---- blocks ---------------------------------------------------------------------------------

create table public.blocks (
  blocker_id uuid not null references public.profiles (id) on delete cascade,
  blocked_id uuid not null references public.profiles (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (blocker_id, blocked_id),
  constraint blocks_not_self check (blocker_id <> blocked_id)
);

comment on table public.blocks is
  'Who blocked whom. A user sees and deletes only the rows they created (public.block_user '
  'creates them); the blocked user is never told. The effect is symmetric: neither sees the '
  'other anywhere.';

-- The other direction: "has anyone I may see blocked me".
create index blocks_blocked_id_idx on public.blocks (blocked_id, blocker_id);

alter table public.blocks enable row level security;

create policy "Users read the blocks they made" on public.blocks
  for select to authenticated using (blocker_id = (select auth.uid()));
create policy "Users remove the blocks they made" on public.blocks
  for delete to authenticated using (blocker_id = (select auth.uid()));

revoke all on public.blocks from anon, authenticated;
grant select, delete on public.blocks to authenticated;

-- Whether a and b are a blocked pair, either way.
create function private.blocked_pair(a uuid, b uuid) returns boolean
language sql stable security definer set search_path = ''
as $$
  select exists (
    select 1 from public.blocks as k
    where (k.blocker_id = a and k.blocked_id = b) or (k.blocker_id = b and k.blocked_id = a)
  )
$$;

comment on function private.blocked_pair(uuid, uuid) is
  'True when either user blocked the other (a block works both ways).';

-- ---- what the live index learns from: one row per user whose privacy changed ----------------

create table private.privacy_changes (
  seq bigint generated always as identity primary key,
  user_id uuid not null,
  changed_at timestamptz not null default now()
);

comment on table private.privacy_changes is
  'Users whose blocks or settings changed, and when (the changing transaction''s start): the '
  'live index applies the current state (private.live_index_privacy) of everyone changed since '
  'its last sync, less an overlap, as a transaction may commit after a later one. Pruned after '
  'a day (cron privacy-changes-prune); an index that fell further behind reloads everything.';

alter table private.privacy_changes enable row level security;

create index privacy_changes_changed_at_idx on private.privacy_changes (changed_at);

create function private.live_index_privacy(since timestamptz)
returns table (user_id uuid, incognito boolean, show_distance boolean, blocked uuid[])
language plpgsql stable security definer set search_path = ''
as $$
declare
  changed uuid[];
begin
  if since is null then
    -- Every user with a non-default state (a rebuild).
    changed := array(
      select p.id from public.profiles as p where p.incognito or not p.show_distance
      union
      select k.blocker_id from public.blocks as k
      union
      select k.blocked_id from public.blocks as k);
  else
    changed := array(
      select distinct c.user_id from private.privacy_changes as c where c.changed_at >= since);
  end if;
  -- Planned for this call's ids (EXECUTE): a plan cached while blocks was small scanned it
  -- once per user (a full load of 20,000 users with 488k blocks ran for 19 minutes). One
  -- pass over each direction's index, grouped.
  return query execute $q$
    with pairs as (
      select k.blocker_id as user_id, k.blocked_id as other
      from public.blocks as k where k.blocker_id = any ($1)
      union
      select k.blocked_id, k.blocker_id
      from public.blocks as k where k.blocked_id = any ($1)
    )
    select p.id, p.incognito, p.show_distance,
           coalesce(array_agg(x.other) filter (where x.other is not null), '{}')
    from unnest($1) as c (id)
    join public.profiles as p on p.id = c.id
    left join pairs as x on x.user_id = p.id
    group by p.id, p.incognito, p.show_distance
    order by p.id
  $q$ using changed;
end
$$;

comment on function private.live_index_privacy(timestamptz) is
  'The current privacy state (incognito, show_distance, everyone blocked with them either way) '
  'of each user changed since `since`; null: of every user whose state is not the default. For '
  'the live index (functions/_shared/live_index_privacy.ts).';

create function private.privacy_changes_bounds(out oldest timestamptz, out now timestamptz)
language sql stable security definer set search_path = ''
as $$ select (select min(c.changed_at) from private.privacy_changes as c), pg_catalog.now() $$;

comment on function private.privacy_changes_bounds() is
  'The oldest change kept, and the database''s time: an index last synced before the oldest '
  'reloads everything.';

create function private.prune_privacy_changes() returns integer
language sql security definer set search_path = ''
as $$
  with gone as (
    delete from private.privacy_changes as c
    where c.changed_at < pg_catalog.now() - interval '1 day'
    returning 1
  )
  select count(*)::integer from gone
$$;

comment on function private.prune_privacy_changes() is
  'Deletes privacy changes older than a day (cron privacy-changes-prune).';

revoke execute on function private.blocked_pair(uuid, uuid) from public, anon, authenticated;
revoke execute on function private.live_index_privacy(timestamptz) from public, anon, authenticated;
revoke execute on function private.privacy_changes_bounds() from public, anon, authenticated;
revoke execute on function private.prune_privacy_changes() from public, anon, authenticated;

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.schedule('privacy-changes-prune', '17 * * * *',
      'select private.prune_privacy_changes()');
  end if;
end
$$;

-- ---- the RPCs -------------------------------------------------------------------------------

insert into private.quota_limits (rpc, capacity, refill_seconds) values
  ('block_user', 20, 60),
  ('unblock_user', 20, 60),
  ('list_blocks', 20, 60),
  ('set_privacy', 20, 60);

create function public.block_user(target uuid) returns void
language plpgsql security definer set search_path = ''
as $$
declare
  me uuid := auth.uid();
begin
  if me is null then
    raise exception using errcode = '42501', message = 'block_user is for signed-in users';
  end if;
  if target is null or target = me then
    raise exception using errcode = '22023', message = 'target must be another user''s id';
  end if;
  if not exists (select 1 from public.profiles as p where p.id = target) then
    raise exception using errcode = '22023', message = 'target is not a user';
  end if;
  if exists (select 1 from public.blocks as k where k.blocker_id = me and k.blocked_id = target) then
    return;
  end if;
  -- One block at a time per blocker, so that the count holds under concurrent calls.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('block_user:' || me::text, 0));
  if (select count(*) from public.blocks as k where k.blocker_id = me) >= 10000 then
    raise exception using errcode = '22023', message = 'at most 10000 blocks per user',
      hint = 'Unblock someone first.';
  end if;
  insert into public.blocks (blocker_id, blocked_id) values (me, target) on conflict do nothing;
  delete from public.favorites as f
  where (f.user_id = me and f.favorite_id = target) or (f.user_id = target and f.favorite_id = me);
  delete from private.presence_watches as w
  where (w.watcher_id = me and w.watched_id = target) or (w.watcher_id = target and w.watched_id = me);
  insert into private.privacy_changes (user_id) values (me), (target);
end
$$;

comment on function public.block_user(uuid) is
  'Blocks target for the caller: neither sees the other anywhere (status reads as offline, '
  'nearby, pushes), and the pair leaves each other''s favorites and watch lists. At most 10000 '
  'blocks per user (22023 beyond). The target is not told.';

create function public.unblock_user(target uuid) returns void
language plpgsql security definer set search_path = ''
as $$
declare
  me uuid := auth.uid();
begin
  if me is null then
    raise exception using errcode = '42501', message = 'unblock_user is for signed-in users';
  end if;
  if target is null then
    raise exception using errcode = '22023', message = 'target must be a user id';
  end if;
  delete from public.blocks as k where k.blocker_id = me and k.blocked_id = target;
  if found then
    insert into private.privacy_changes (user_id) values (me), (target);
  end if;
end
$$;

comment on function public.unblock_user(uuid) is
  'Lifts the caller''s block of target (a block target made stays). Favorites are not restored.';

-- Volatile, as the other rate-limited RPCs: PostgREST runs stable functions read-only, where
-- the quota hook could not take its token.
create function public.list_blocks() returns setof uuid
language sql security definer set search_path = ''
as $$
  select k.blocked_id from public.blocks as k
  where k.blocker_id = (select auth.uid())
  order by k.created_at, k.blocked_id
$$;

comment on function public.list_blocks() is 'The users the caller blocked (never who blocked them).';

create function public.set_privacy(incognito boolean default null, show_distance boolean default null)
returns jsonb
language plpgsql security definer set search_path = ''
as $$
declare
  me uuid := auth.uid();
  before public.profiles;
  after public.profiles;
  was_online boolean;
  seen timestamptz;
begin
  if me is null then
    raise exception using errcode = '42501', message = 'set_privacy is for signed-in users';
  end if;
  select * into before from public.profiles as p where p.id = me for update;
  if not found then
    raise exception using errcode = '22023', message = 'the caller has no profile';
  end if;
  update public.profiles as p
  set incognito = coalesce(set_privacy.incognito, p.incognito),
      show_distance = coalesce(set_privacy.show_distance, p.show_distance)
  where p.id = me
  returning * into after;
  if after.incognito is distinct from before.incognito
    or after.show_distance is distinct from before.show_distance then
    insert into private.privacy_changes (user_id) values (me);
  end if;
  if after.incognito is distinct from before.incognito then
    -- The watchers hear what going offline (or coming back) would tell them.
    select s.is_online, s.last_seen_at into was_online, seen
    from public.get_online_users_batch(array[me]) as s;
    if was_online then
      perform private.push_status_changes(jsonb_build_array(jsonb_build_object(
        'user_id', me,
        'is_online', not after.incognito,
        'last_seen_at', case when after.incognito then null else seen end,
        'privacy', true)));
    end if;
  end if;
  return jsonb_build_object('incognito', after.incognito, 'show_distance', after.show_distance);
end
$$;

comment on function public.set_privacy(boolean, boolean) is
  'Sets the caller''s incognito and show_distance (null leaves one as it is) and returns both. '
  'Going incognito tells watchers what going offline would; leaving it, what coming online would.';

revoke execute on function public.block_user(uuid) from public, anon;
revoke execute on function public.unblock_user(uuid) from public, anon;
revoke execute on function public.list_blocks() from public, anon;
revoke execute on function public.set_privacy(boolean, boolean) from public, anon;
grant execute on function public.block_user(uuid) to authenticated;
grant execute on function public.unblock_user(uuid) to authenticated;
grant execute on function public.list_blocks() to authenticated;
grant execute on function public.set_privacy(boolean, boolean) to authenticated;

-- ---- status reads ---------------------------------------------------------------------------

create function private.online_users_for(viewer uuid, user_ids uuid[])
returns table (user_id uuid, is_online boolean, last_seen_at timestamptz)
language sql stable security definer set search_path = ''
set random_page_cost = 1.1
as $$
  -- The buffered event wins when it is newer than what was flushed into the profile. With a
  -- viewer, the users hidden from them (incognito, or a blocked pair) read as offline with no
  -- last seen: as a user who was never online.
  select p.id,
         case when h.hidden then false
              when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
                then b.is_online
              else p.is_online end,
         case when h.hidden then null
              when b.user_id is not null and (p.last_seen_at is null or b.event_at > p.last_seen_at)
                then b.event_at
              else p.last_seen_at end
  from public.profiles as p
  left join public.presence_buffer as b on b.user_id = p.id
  cross join lateral (
    select viewer is not null and p.id <> viewer
      and (p.incognito or exists (
        select 1 from public.blocks as k
        where (k.blocker_id = viewer and k.blocked_id = p.id)
           or (k.blocker_id = p.id and k.blocked_id = viewer))) as hidden
  ) as h
  where p.id = any (user_ids)
$$;

comment on function private.online_users_for(uuid, uuid[]) is
  'Online status and last seen (precise) of user_ids as viewer may see them: incognito users '
  'and blocked pairs read as offline with no last seen. viewer null: as they are. For '
  'get_online_users_batch and the online-status function.';

revoke execute on function private.online_users_for(uuid, uuid[]) from public, anon, authenticated;

do $$
begin
  if exists (select from pg_catalog.pg_roles where rolname = 'sltr_functions') then
    grant execute on function private.online_users_for(uuid, uuid[]) to sltr_functions;
    grant execute on function private.live_index_privacy(timestamptz) to sltr_functions;
    grant execute on function private.privacy_changes_bounds() to sltr_functions;
  end if;
end
$$;

create or replace function public.get_online_users_batch(user_ids uuid[])
returns table (user_id uuid, is_online boolean, last_seen_at timestamptz)
language plpgsql security definer set search_path = ''
set random_page_cost = 1.1
as $$
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

  -- A signed-in caller sees what their blocks and others' incognito allow.
  return query
    select s.user_id, s.is_online,
           case when precise then s.last_seen_at
             else pg_catalog.timezone('UTC', pg_catalog.date_trunc('minute', pg_catalog.timezone('UTC', s.last_seen_at))) end
    from private.online_users_for((select auth.uid()), user_ids) as s;
end
$$;

create or replace function public.get_online_users()
returns table (id uuid, display_name text, is_online boolean, last_seen_at timestamptz)
language sql security definer set search_path = ''
as $$
  -- private.seen_minute, inlined: the seed's polling read returns all profiles flagged
  -- is_online, but never an incognito user's, nor anyone blocked with the caller.
  select p.id, p.display_name, p.is_online,
         pg_catalog.timezone('UTC', pg_catalog.date_trunc('minute', pg_catalog.timezone('UTC', p.last_seen_at)))
  from public.profiles as p
  where p.is_online
    and (not p.incognito or p.id = (select auth.uid()))
    and not private.blocked_pair((select auth.uid()), p.id)
$$;

-- The legacy view reads through the same rule (the column is_online is no longer granted).
create or replace view public.online_profiles with (security_invoker = true) as
  select o.id, p.display_name, p.avatar_url, o.is_online
  from public.get_online_users() as o
  join public.profiles as p on p.id = o.id;

-- ---- nearby ---------------------------------------------------------------------------------

create or replace function private.find_nearby_online_users(lat double precision, lng double precision, radius_m integer, max_results integer, excluded_user_id uuid DEFAULT NULL::uuid)
 RETURNS TABLE(user_id uuid, display_name text, distance_m integer, last_seen_at timestamp with time zone)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO ''
 SET plan_cache_mode TO 'force_generic_plan'
 SET enable_seqscan TO 'off'
AS $$
declare
  probe extensions.geography;
  -- A latitude/longitude box holding every true location whose snapped point can be in
  -- range (snapping moves a point by at most ~360 m), to skip far rows before any geography
  -- work; null where it would cross a pole or the antimeridian.
  pad_lat double precision;
  pad_lng double precision;
  -- Everyone blocked with the viewer, either way: never in their answer.
  blocked uuid[] := array(
    select k.blocked_id from public.blocks as k where k.blocker_id = excluded_user_id
    union
    select k.blocker_id from public.blocks as k where k.blocked_id = excluded_user_id);
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
      -- max_results-th qualifying user, the farthest the arm can need; or, when a hidden
      -- distance is among them (ordered by its band's end), the end of that distance's band.
      select max(k.distance) + 0.01 as distance, bool_or(not k.show_distance) as hidden
      from (
        select public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe as distance,
               p.show_distance
        from public.profiles as p
        left join public.presence_buffer as b
          on b.user_id = p.id and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        where p.is_online
          and extensions.st_dwithin(public.snap_location(p.latitude, p.longitude), probe, radius_m, false)
          and p.id is distinct from excluded_user_id
          and not p.incognito and not (p.id = any (blocked))
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
             public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe as distance,
             p.show_distance
      from public.profiles as p
      left join public.presence_buffer as b
        on b.user_id = p.id and (p.last_seen_at is null or b.event_at > p.last_seen_at)
      where p.is_online
        and extensions.st_dwithin(public.snap_location(p.latitude, p.longitude), probe,
          least(radius_m, (select case when c.hidden
            then greatest(1, ceil(c.distance / 1000)) * 1000 + 0.01 else c.distance end
            from flushed_cut as c)), false)
        and p.id is distinct from excluded_user_id
        and not p.incognito and not (p.id = any (blocked))
        and (p.show_distance or greatest(1, ceil((public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe) / 1000)) * 1000 <= radius_m)
        and (b.user_id is null
          or (b.is_online
            and (b.latitude is null
              or extensions.st_dwithin(public.snap_location(b.latitude, b.longitude),
                public.snap_location(p.latitude, p.longitude), 1, false))))
      order by public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe, p.id
      -- A hidden distance in the nearest: everyone within its band's end (their order is by band).
      limit (select case when c.hidden then null else max_results end from flushed_cut as c)
    ),
    located_cut as (
      select max(k.distance) + 0.01 as distance, bool_or(not k.show_distance) as hidden
      from (
        select public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe as distance,
               p.show_distance
        from public.presence_buffer as b
        join public.profiles as p on p.id = b.user_id
        where b.is_online
          and extensions.st_dwithin(public.snap_location(b.latitude, b.longitude), probe, radius_m, false)
          and b.user_id is distinct from excluded_user_id
          and not p.incognito and not (b.user_id = any (blocked))
          and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        order by public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe
        limit max_results
      ) as k
    ),
    located as (
      select p.id,
             p.display_name,
             b.event_at as last_seen_at,
             public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe as distance,
             p.show_distance
      from public.presence_buffer as b
      join public.profiles as p on p.id = b.user_id
      where b.is_online
        and extensions.st_dwithin(public.snap_location(b.latitude, b.longitude), probe,
          least(radius_m, (select case when c.hidden
            then greatest(1, ceil(c.distance / 1000)) * 1000 + 0.01 else c.distance end
            from located_cut as c)), false)
        and b.user_id is distinct from excluded_user_id
        and not p.incognito and not (b.user_id = any (blocked))
        and (p.show_distance or greatest(1, ceil((public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe) / 1000)) * 1000 <= radius_m)
        and (p.last_seen_at is null or b.event_at > p.last_seen_at)
      order by public.snap_location(b.latitude, b.longitude) operator(extensions.<->) probe, b.user_id
      limit (select case when c.hidden then null else max_results end from located_cut as c)
    ),
    unlocated as (
      select p.id,
             p.display_name,
             b.event_at as last_seen_at,
             public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe as distance,
             p.show_distance
      from public.presence_buffer as b
      join public.profiles as p on p.id = b.user_id
      where b.is_online
        and b.latitude is null
        and not p.is_online
        and b.user_id is distinct from excluded_user_id
        and not p.incognito and not (p.id = any (blocked))
        and (p.show_distance or greatest(1, ceil((public.snap_location(p.latitude, p.longitude) operator(extensions.<->) probe) / 1000)) * 1000 <= radius_m)
        and (p.last_seen_at is null or b.event_at > p.last_seen_at)
        and (pad_lng is null
          or (p.latitude between lat - pad_lat and lat + pad_lat
            and p.longitude between lng - pad_lng and lng + pad_lng))
        and extensions.st_dwithin(public.snap_location(p.latitude, p.longitude), probe, radius_m, false)
    )
    -- A hidden distance: null, and ordered by the end of its 1 km band, so that the order
    -- says no more than the band (nor does the radius: a band that ends beyond it is out).
    select n.id,
           n.display_name,
           case when n.show_distance then (greatest(1, round(n.distance / 100)) * 100)::integer end,
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
    order by case when n.show_distance then n.distance
               else greatest(1, ceil(n.distance / 1000)) * 1000 end, n.id
    limit max_results;
end
$$;

comment on function private.find_nearby_online_users(double precision, double precision, integer, integer, uuid) is
  'Online users nearest (lat, lng) within radius_m, at most max_results, never excluded_user_id '
  '(the viewer) nor anyone blocked with them, nor incognito users; distances from snapped '
  'locations, rounded to 100 m; a hidden distance (show_distance false) is null and ordered by '
  'the end of its 1 km band.';

-- ---- watch lists and pushes -----------------------------------------------------------------

create or replace function public.watch_presence(user_ids uuid[])
returns integer
language plpgsql security definer set search_path = ''
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

  -- Unknown ids, the caller and users blocked with the caller are ignored (and counted as
  -- watched: the caller must not learn who blocked them).
  insert into private.presence_watches (watcher_id, watched_id, expires_at)
  select distinct me, p.id, statement_timestamp() + interval '10 minutes'
  from public.profiles as p
  where p.id = any (coalesce(user_ids, '{}')) and p.id <> me
    and not private.blocked_pair(me, p.id);

  select count(*) into watched
  from (
    select w.watched_id from private.presence_watches as w where w.watcher_id = me
    union
    select f.favorite_id from public.favorites as f where f.user_id = me
    union
    select p.id from public.profiles as p
    where p.id = any (coalesce(user_ids, '{}')) and p.id <> me
  ) as all_watched;
  return watched;
end
$$;

create or replace function private.write_status_messages(changes jsonb)
returns integer
language sql security definer set search_path = ''
as $$
  with changed as (
    -- An incognito user's changes reach nobody, but for the one set_privacy sends when they
    -- go incognito (the same change as going offline; marked privacy, the mark not sent).
    select (c.value ->> 'user_id')::uuid as user_id, c.value - 'privacy' as change
    from jsonb_array_elements(changes) as c
    join public.profiles as p on p.id = (c.value ->> 'user_id')::uuid
    where not p.incognito or (c.value ->> 'privacy')::boolean is true
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
  visible as (
    -- Blocks remove favorites and watches; one made since (a favorite added again through the
    -- table) still tells nothing.
    select w.* from watching as w
    where not private.blocked_pair(w.watcher_id, w.user_id)
  ),
  online as (
    -- Watchers online now, by the read rule (get_online_users_batch).
    select s.user_id
    from public.get_online_users_batch(
      array(select distinct visible.watcher_id from visible)) as s
    where s.is_online
  ),
  messages as (
    -- Inboxes are read by users: last-seen times to the minute.
    select gen_random_uuid() as id, w.watcher_id,
           jsonb_agg(case when w.change ->> 'last_seen_at' is null then w.change
                       else jsonb_set(w.change, '{last_seen_at}',
                         to_jsonb(private.seen_minute((w.change ->> 'last_seen_at')::timestamptz))) end
                     order by w.user_id) as changes
    from visible as w
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

-- ---- the profiles of a blocked pair ----------------------------------------------------------

-- A policy's subquery runs as the caller, whom the RLS of blocks shows only their own blocks:
-- the check of both directions runs as its owner. It tells the caller only what the policy
-- does (whether they and other are a blocked pair: the other's profile is gone).
create function private.blocked_with_me(other uuid) returns boolean
language sql stable security definer set search_path = ''
as $$ select private.blocked_pair((select auth.uid()), other) $$;

comment on function private.blocked_with_me(uuid) is
  'Whether the caller and other are a blocked pair, either way: the profiles read policy.';

revoke execute on function private.blocked_with_me(uuid) from public, anon;
grant execute on function private.blocked_with_me(uuid) to authenticated;

alter policy "Signed-in users read profiles" on public.profiles
  using (not private.blocked_with_me(id));

comment on policy "Signed-in users read profiles" on public.profiles is
  'Signed-in users read every profile but those of users blocked with them, either way.';
