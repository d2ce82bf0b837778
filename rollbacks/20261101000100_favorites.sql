-- Undo v2.
drop table if exists public.favorites;
