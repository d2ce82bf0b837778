-- Undo v3.
drop table if exists public.subscriptions;
