-- Undo the avatar_url check (the values stay as they are).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter table public.profiles drop constraint profiles_avatar_url_https;
