-- The live index's rebuild in pages. At 1M users one rebuild from live_index_snapshot(false)
-- cost its function 3.6 s of CPU (bench/rebuild.ts), and a hosted Edge Function gets 2 s: the
-- rebuild now takes the users a page at a time, by id, one page per request that finds the
-- index cold (functions/_shared/live_index_sync.ts). A page is live_index_snapshot's answer
-- for the next page_size profiles after after_id, in id order, from the primary key.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create function private.live_index_snapshot_page(after_id uuid, page_size integer)
returns table (
  user_id uuid,
  display_name text,
  is_online boolean,
  last_seen_at timestamptz,
  cell_lat double precision,
  cell_lng double precision
)
language sql stable security definer set search_path = ''
as $$
  select s.user_id, s.display_name, s.is_online, s.last_seen_at, s.cell_lat, s.cell_lng
  from private.live_index_snapshot(false, array(
    select p.id from public.profiles as p
    where p.id > after_id
    order by p.id
    limit page_size
  )) as s
  order by s.user_id
$$;

comment on function private.live_index_snapshot_page(uuid, integer) is
  'The live index''s rebuild, a page at a time: live_index_snapshot(false) for the next page_size profiles after after_id, in id order.';

revoke execute on function private.live_index_snapshot_page(uuid, integer) from public;
grant execute on function private.live_index_snapshot_page(uuid, integer) to sltr_functions;
