-- v5: the indexes the read paths and foreign keys need.
-- Partial on purpose: at any time only a few percent of users are online, so indexes
-- restricted to `where is_online` stay small and hot.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

-- On index creation without CONCURRENTLY (squawk's require-concurrent-index-creation is
-- silenced below): migrations run inside a transaction (dbmate, supabase db push), where
-- CONCURRENTLY is not allowed. The builds take seconds at a million profiles and block
-- writes, not reads, for that long; lock_timeout bounds the wait for the lock.

-- squawk-ignore require-concurrent-index-creation
create index idx_profiles_is_online on public.profiles (is_online) where is_online;

-- The seed's bounding-box read: online users inside a latitude/longitude box.
-- squawk-ignore require-concurrent-index-creation
create index idx_profiles_latitude_longitude_is_online on public.profiles (latitude, longitude, is_online) where is_online;

-- favorites(user_id, ...) is covered by the primary key; the reverse lookup
-- ("who favorited me", and ON DELETE CASCADE from profiles) needs its own index.
-- squawk-ignore require-concurrent-index-creation
create index idx_favorites_favorite_id on public.favorites (favorite_id);
