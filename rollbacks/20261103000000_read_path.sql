-- Undo the read path, in reverse order: the RPCs, the indexes and the privacy grid function.
-- No table or column changes, so no data is touched; PostGIS stays installed (the platform
-- provides it and other objects may use it).
-- DROP INDEX without CONCURRENTLY (squawk's require-concurrent-index-deletion, silenced
-- below): the rollback runs inside a transaction, where CONCURRENTLY is not allowed; the
-- drops are instant and lock_timeout bounds the wait for their locks.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

drop function if exists public.nearby_online_users(double precision, double precision, integer, integer);

drop function if exists public.find_nearby_online_users(double precision, double precision, integer, integer, uuid);

-- squawk-ignore require-concurrent-index-deletion
drop index if exists public.idx_presence_buffer_user_id_is_online_unlocated;

-- squawk-ignore require-concurrent-index-deletion
drop index if exists public.idx_presence_buffer_location_is_online;

drop function if exists public.get_online_users_batch(uuid[]);

-- squawk-ignore require-concurrent-index-deletion
drop index if exists public.idx_profiles_location_is_online;

drop function if exists public.snap_location(double precision, double precision);
