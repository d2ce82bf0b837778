-- Undo 20261207060206_live_index_snapshot_pages: the rebuild reads one whole snapshot again.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

drop function private.live_index_snapshot_page(uuid, integer);
