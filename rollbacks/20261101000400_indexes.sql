-- Undo v5.
drop index if exists public.idx_favorites_favorite_id;
drop index if exists public.idx_profiles_latitude_longitude_is_online;
drop index if exists public.idx_profiles_is_online;
