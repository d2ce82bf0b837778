-- Undo: snap_location inlinable again (no SET clause).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter function public.snap_location(double precision, double precision) reset search_path;
