-- The live index's rebuild a page at a time (private.live_index_snapshot_page): pages in id
-- order, each starting after the last id of the one before, together exactly the whole
-- snapshot (live_index_snapshot(false)) with nobody twice; for the functions' role only. All
-- rolled back.
begin;
select plan(6);

select tests.create_supabase_user('page-' || n, 'page-' || n || '@pages.test', 'Page ' || n,
  52.5 + n * 0.001, 13.4, n % 3 = 0)
from generate_series(1, 25) as n;

-- Every page of 7 after the one before, to the end, as the rebuild walks them.
create temporary table walked on commit drop as
with recursive pages (page, last, rows) as (
  select 1, max(s.user_id::text)::uuid, count(*)
  from private.live_index_snapshot_page('00000000-0000-0000-0000-000000000000', 7) as s
  union all
  select p.page + 1, (select max(s.user_id::text)::uuid from private.live_index_snapshot_page(p.last, 7) as s),
         (select count(*) from private.live_index_snapshot_page(p.last, 7))
  from pages as p where p.rows = 7
)
select * from pages;
create temporary table paged on commit drop as
select s.* from walked as w
cross join lateral private.live_index_snapshot_page(
  coalesce((select w2.last from walked as w2 where w2.page = w.page - 1), '00000000-0000-0000-0000-000000000000'), 7) as s;

select ok((select count(*) from walked) = ceil((select count(*) from public.profiles) / 7.0)
            + case when (select count(*) from public.profiles) % 7 = 0 then 1 else 0 end,
  'the pages of 7 cover every profile, the last one short');
select is((select count(*) from paged), (select count(*) from public.profiles), 'every user once');
select set_eq('select * from paged', 'select * from private.live_index_snapshot(false)',
  'the pages are the whole snapshot, row for row');
select results_eq(
  $$select s.user_id from private.live_index_snapshot_page('00000000-0000-0000-0000-000000000000', 10) as s$$,
  $$select p.id from public.profiles as p order by p.id limit 10$$,
  'a page is the next profiles in id order');
select is_empty(
  $$select from private.live_index_snapshot_page('ffffffff-ffff-ffff-ffff-ffffffffffff', 10)$$,
  'nothing after the last id');
select ok(not has_function_privilege('authenticated', 'private.live_index_snapshot_page(uuid,integer)', 'execute')
  and not has_function_privilege('anon', 'private.live_index_snapshot_page(uuid,integer)', 'execute'),
  'users cannot read the snapshot');

select * from finish();
rollback;
