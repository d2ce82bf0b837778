-- profiles.avatar_url is a user-written string that every signed-in user's app loads: only an
-- https:// URL of at most 2,048 characters, with no whitespace or control characters (no
-- javascript:, data: or http:// tracking pixels, no megabyte strings). Added NOT VALID: every
-- insert and update is checked from now on without scanning the table under a lock inside
-- this migration's transaction. Existing rows are validated outside it, when a DBA has fixed
-- any offenders: `alter table public.profiles validate constraint profiles_avatar_url_https;`
-- (docs in the README's "Migrations").
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter table public.profiles add constraint profiles_avatar_url_https
  check (avatar_url is null
    or (char_length(avatar_url) <= 2048 and avatar_url ~ '^https://[^[:space:][:cntrl:]]+$'))
  not valid;

comment on constraint profiles_avatar_url_https on public.profiles is
  'avatar_url: null, or an https:// URL of at most 2048 characters without whitespace.';
