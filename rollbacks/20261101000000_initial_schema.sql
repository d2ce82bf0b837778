-- Undo v1: drop the legacy schema.
drop function if exists public.get_online_users();
drop view if exists public.online_profiles;
drop table if exists public.profiles;
