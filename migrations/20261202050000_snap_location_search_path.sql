-- Supabase's advisors (splinter, function_search_path_mutable): snap_location was the one
-- function without a fixed search_path. Its body names every object with its schema, so an
-- empty search_path changes nothing it does. The price: a function with a SET clause is never
-- inlined, so each call costs ~8 us instead of ~0.6 us (200,000 calls: 1.7 s against 0.12 s on
-- this machine). The nearby search reads about max_results rows per arm (its GiST index holds
-- the snapped points), so only whole-table reads feel it: the live index's rebuild from
-- live_index_snapshot(false) (one call per user) and the minute's reconciliation (one per
-- online user).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter function public.snap_location(double precision, double precision) set search_path = '';
