-- v4: one naming scheme everywhere: `online` becomes `is_online` (table, view, function,
-- grants and policies follow) and profiles gain `last_seen_at`.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

drop function public.get_online_users();
drop view public.online_profiles;

-- The rename is this migration's purpose; every dependent object is recreated here in
-- the same transaction, so squawk's renaming-column warning is silenced.
-- squawk-ignore renaming-column
alter table public.profiles rename column online to is_online;

alter table public.profiles add column last_seen_at timestamptz;

comment on column public.profiles.is_online is 'Whether the user is online, as of the last presence flush.';
comment on column public.profiles.last_seen_at is 'Time of the last presence event applied to this profile.';

grant select (last_seen_at) on public.profiles to authenticated;

create view public.online_profiles with (security_invoker = true) as
  select p.id, p.display_name, p.avatar_url, p.is_online, p.last_seen_at
  from public.profiles as p
  where p.is_online;

comment on view public.online_profiles is 'Profiles currently flagged online (as of the last flush).';

create function public.get_online_users()
returns table (id uuid, display_name text, is_online boolean, last_seen_at timestamptz)
language sql stable security invoker set search_path = ''
as $$
  select p.id, p.display_name, p.is_online, p.last_seen_at
  from public.profiles as p
  where p.is_online
$$;

comment on function public.get_online_users() is 'Legacy polling read: every online profile. Superseded by get_online_users_batch.';
