-- Read-path plans at scale: with 100,000 profiles (5% online, one buffered heartbeat per
-- online user) loaded inside this transaction, the queries inside the RPCs (their own text,
-- read from pg_proc, with the functions' own settings) use the partial indexes and never
-- scan profiles or the presence buffer. All rolled back.
begin;
select plan(13);

-- 100,000 users around 10° S 40° W: 60% within ~10 km of the centre, the rest within ~100 km.
select setseed(0.31);
create temporary table loaded on commit drop as
select g as n, gen_random_uuid() as id, random() as r1, random() as r2, random() as r3, random() as r4
from generate_series(1, 100000) as g;
insert into auth.users (id, aud, role, email)
select id, 'authenticated', 'authenticated', 'plans-' || n || '@read-path.test' from loaded;
insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
select id, 'Plans ' || n, r3 < 0.05,
       -10 + (r1 - 0.5) * case when r4 < 0.6 then 0.18 else 1.8 end,
       -40 + (r2 - 0.5) * case when r4 < 0.6 then 0.18 else 1.8 end,
       now() - interval '2 minutes'
from loaded;
-- The buffer as the presence pipeline keeps it: a heartbeat per online user (some moved a
-- little), a few offline events, and users who just came online (some without a location).
insert into public.presence_buffer (user_id, is_online, event_at, latitude, longitude)
select p.id, l.r1 > 0.03, now(),
       p.latitude + case when l.r2 < 0.1 then 0.004 else 0 end, p.longitude
from public.profiles as p join loaded as l on l.id = p.id
where p.is_online;
insert into public.presence_buffer (user_id, is_online, event_at, latitude, longitude)
select p.id, true, now(), case when l.r2 < 0.8 then p.latitude end, case when l.r2 < 0.8 then p.longitude end
from public.profiles as p join loaded as l on l.id = p.id
where not p.is_online and l.r4 < 0.01;
analyze public.profiles;
analyze public.presence_buffer;

select is((select count(*)::integer from loaded), 100000, '100,000 profiles loaded');

-- EXPLAIN of the query an RPC runs: its `return query` statement from pg_proc, with its
-- variables as parameters and the function's own SET options (plan_cache_mode,
-- random_page_cost) applied, so the plan is the one the function gets.
create function pg_temp.rpc_plan(fn regprocedure, variables text[], types text[], args text[])
returns text language plpgsql as $$
declare
  body text;
  setting text;
  line text;
  plan text := '';
begin
  -- A plpgsql function's return query; a SQL function's whole body.
  select coalesce(substring(p.prosrc from 'return query(.*);\s*end\s*$'), p.prosrc) into strict body
  from pg_proc as p where p.oid = fn;
  for i in 1 .. cardinality(variables) loop
    body := regexp_replace(body, '\m' || variables[i] || '\M', '$' || i, 'g');
  end loop;
  foreach setting in array coalesce((select p.proconfig from pg_proc as p where p.oid = fn), '{}') loop
    if split_part(setting, '=', 1) <> 'search_path' then
      perform set_config(split_part(setting, '=', 1), split_part(setting, '=', 2), true);
    end if;
  end loop;
  execute format('prepare rpc_query (%s) as %s', array_to_string(types, ', '), body);
  for line in execute format('explain (costs off) execute rpc_query (%s)', array_to_string(args, ', ')) loop
    plan := plan || line || E'\n';
  end loop;
  deallocate rpc_query;
  reset plan_cache_mode;
  reset random_page_cost;
  return plan;
end
$$;

create temporary table plans (name text primary key, plan text) on commit drop;
insert into plans values (
  'nearby',
  pg_temp.rpc_plan(
    'private.find_nearby_online_users(double precision, double precision, integer, integer, uuid)',
    array['probe', 'lat', 'lng', 'radius_m', 'max_results', 'excluded_user_id', 'pad_lat', 'pad_lng',
      'blocked'],
    array['extensions.geography', 'float8', 'float8', 'integer', 'integer', 'uuid', 'float8', 'float8',
      'uuid[]'],
    array['extensions.st_point(-40, -10, 4326)::extensions.geography', '-10', '-40', '5000', '50',
      quote_literal(gen_random_uuid()), '0.05', '0.051',
      quote_literal(array[gen_random_uuid(), gen_random_uuid()]::text)]));
insert into plans values (
  'batch',
  pg_temp.rpc_plan(
    'private.online_users_for(uuid, uuid[])',
    array['viewer', 'user_ids'], array['uuid', 'uuid[]'],
    array[quote_literal(gen_random_uuid()),
      quote_literal((select array_agg(id)::text from (select id from loaded order by r1 limit 100) as s))]));

select ok((select plan from plans where name = 'nearby') ~ 'Index Scan using idx_profiles_location_is_online on profiles',
  'nearby: online profiles are searched nearest first through the partial GiST index');
select ok((select plan from plans where name = 'nearby') ~ 'Order By: \(snap_location\(',
  'nearby: ... ordered by the index (KNN on snap_location)');
select is((select count(*)::integer from regexp_matches((select plan from plans where name = 'nearby'), '_st_expand\(\$1, LEAST\(', 'g')), 2,
  'nearby: each located arm sorts only the users within its nearest-first cut');
select ok((select plan from plans where name = 'nearby') ~ 'Index Scan using idx_presence_buffer_location_is_online on presence_buffer',
  'nearby: buffered online events are searched through the buffer''s partial GiST index');
select ok((select plan from plans where name = 'nearby') ~ 'idx_presence_buffer_user_id_is_online_unlocated',
  'nearby: buffered events without a location come from their partial index');
select ok((select plan from plans where name = 'nearby') !~ 'Seq Scan',
  'nearby: nothing is scanned sequentially');
select ok((select plan from plans where name = 'nearby') ~ 'Limit',
  'nearby: each arm stops after max_results rows');
select ok((select plan from plans where name = 'batch') ~ '(Index|Bitmap Index) Scan on profiles_pkey|Index Scan using profiles_pkey',
  'batch: profiles are looked up by primary key');
select ok((select plan from plans where name = 'batch') !~ 'Seq Scan',
  'batch: neither profiles nor the buffer is scanned whole (100 ids)');

-- And the RPCs themselves at this size, as a signed-in user.
create temporary table someone on commit drop as select id from loaded where r3 < 0.05 limit 1;
create temporary table ids on commit drop as select array_agg(id) as ids from (select id from loaded limit 10000) as s;
grant select on someone, ids to authenticated;
-- One of the loaded users, named for the test helpers.
update auth.users set raw_user_meta_data = jsonb_build_object('test_identifier', 'someone')
where id = (select id from someone);
select tests.authenticate_as('someone');
select is((select count(*)::integer from public.nearby_online_users(-10, -40, 5000, 50)), 50,
  'nearby_online_users answers 50 users in the dense centre');
select is((select count(*)::integer from public.get_online_users_batch((select ids from ids))), 10000,
  'get_online_users_batch answers 10,000 ids in one call');
select tests.clear_authentication();

-- The plans, when one of them is not what the checks above expect.
select diag(name || E':\n' || string_agg(left(line, 120), E'\n'))
from plans, regexp_split_to_table(plan, E'\n') as line
where plan ~ 'Seq Scan' or plan !~ 'Index Scan using (idx_profiles_location_is_online|profiles_pkey)'
group by name order by name desc;

select cmp_ok(clock_timestamp() - now(), '<', interval '20 seconds', 'the whole file runs in under 20 s');

select * from finish();
rollback;
