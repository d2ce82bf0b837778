-- Undo v4: back to `online`; the flag's values are kept, last_seen_at is dropped.
set local lock_timeout = '5s';

drop function public.get_online_users();
drop view public.online_profiles;

alter table public.profiles drop column last_seen_at;

alter table public.profiles rename column is_online to online;

comment on column public.profiles.online is 'Legacy online flag (renamed is_online in v4).';

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
