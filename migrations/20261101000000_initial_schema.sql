-- v1: the legacy SLTR schema as it was: profiles with the old `online` flag and plain
-- latitude/longitude, read by clients polling get_online_users() every 30 s.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  display_name text not null default '' check (char_length(display_name) <= 80),
  avatar_url text,
  online boolean not null default false,
  latitude double precision check (latitude between -90 and 90),
  longitude double precision check (longitude between -180 and 180),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint profiles_location_complete check ((latitude is null) = (longitude is null))
);

comment on table public.profiles is 'One row per user: public profile, online status and last known location.';
comment on column public.profiles.online is 'Legacy online flag (renamed is_online in v4).';
comment on column public.profiles.latitude is 'Last known latitude (WGS 84). Never readable by other users.';
comment on column public.profiles.longitude is 'Last known longitude (WGS 84). Never readable by other users.';

alter table public.profiles enable row level security;

-- Locations are private: other users may read the public columns only.
revoke all on public.profiles from anon, authenticated;
grant select (id, display_name, avatar_url, online, created_at, updated_at) on public.profiles to authenticated;
grant insert (id, display_name, avatar_url, latitude, longitude) on public.profiles to authenticated;
grant update (display_name, avatar_url, latitude, longitude) on public.profiles to authenticated;

create policy "Signed-in users read profiles" on public.profiles
  for select to authenticated using (true);

create policy "Users create their own profile" on public.profiles
  for insert to authenticated with check (id = (select auth.uid()));

create policy "Users update their own profile" on public.profiles
  for update to authenticated using (id = (select auth.uid())) with check (id = (select auth.uid()));

-- The legacy read path: every client polled this every 30 seconds.
create view public.online_profiles with (security_invoker = true) as
  select p.id, p.display_name, p.avatar_url, p.online
  from public.profiles as p
  where p.online;

comment on view public.online_profiles is 'Legacy: profiles currently flagged online.';

create function public.get_online_users()
returns table (id uuid, display_name text, online boolean)
language sql stable security invoker set search_path = ''
as $$
  select p.id, p.display_name, p.online
  from public.profiles as p
  where p.online
$$;

comment on function public.get_online_users() is 'Legacy polling read: every online profile. Superseded by get_online_users_batch.';
