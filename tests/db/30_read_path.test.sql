-- Read path: get_online_users_batch and nearby_online_users as PostgREST calls them (roles and
-- JWT claims), real time through the presence buffer, input errors, and privacy: least-squares
-- trilateration from many chosen points cannot place a user better than their ~500 m cell.
-- Everything happens in the South Atlantic (45° S, 30° W), where no other data lives.
begin;
select plan(65);

-- The objects and their contracts.
select has_function('public', 'get_online_users_batch', array['uuid[]'], 'get_online_users_batch(uuid[]) exists');
select has_function('public', 'nearby_online_users', array['double precision', 'double precision', 'integer', 'integer'],
  'nearby_online_users(lat, lng, radius_m, max_results) exists');
select has_function('public', 'snap_location', array['double precision', 'double precision'], 'snap_location exists');
select is_definer('public', 'get_online_users_batch', array['uuid[]'], 'the batch RPC is security definer');
select is_definer('public', 'nearby_online_users', array['double precision', 'double precision', 'integer', 'integer'],
  'nearby_online_users is security definer');
select is_empty($$
  select p.oid::regprocedure::text from pg_proc p
  where p.pronamespace = 'public'::regnamespace and p.prosecdef
    and p.proname in ('get_online_users_batch', 'nearby_online_users', 'find_nearby_online_users')
    and not ('search_path=""' = any (coalesce(p.proconfig, '{}')))
$$, 'every read-path security definer sets search_path to empty');
select volatility_is('public', 'snap_location', array['double precision', 'double precision'], 'immutable',
  'snap_location is immutable (indexable)');
select is(
  (select array_agg(a.name order by a.n) from pg_proc p,
     unnest(p.proargnames, p.proargmodes::text[]) with ordinality as a (name, mode, n)
   where p.oid = 'public.nearby_online_users(double precision, double precision, integer, integer)'::regprocedure
     and a.mode = 't'),
  array['user_id', 'display_name', 'distance_m', 'last_seen_at'],
  'nearby_online_users returns user_id, display_name, distance_m, last_seen_at (no coordinates)');
select has_index('public', 'profiles', 'idx_profiles_location_is_online', 'snapped location index on profiles');
select index_is_type('public', 'profiles', 'idx_profiles_location_is_online', 'gist', 'it is a GiST index');
select is(
  (select pg_get_expr(indpred, indrelid) from pg_index where indexrelid = 'public.idx_profiles_location_is_online'::regclass),
  'is_online', 'it covers online users only');
select has_index('public', 'presence_buffer', 'idx_presence_buffer_location_is_online',
  'snapped location index on the presence buffer');
select isnt(obj_description('public.nearby_online_users(double precision, double precision, integer, integer)'::regprocedure, 'pg_proc'),
  null, 'nearby_online_users is documented');
select isnt(obj_description('public.get_online_users_batch(uuid[])'::regprocedure, 'pg_proc'),
  null, 'get_online_users_batch is documented');

-- Who may call what.
select function_privs_are('public', 'get_online_users_batch', array['uuid[]'], 'anon', array[]::text[],
  'anon may not call get_online_users_batch');
select function_privs_are('public', 'get_online_users_batch', array['uuid[]'], 'authenticated', array['EXECUTE'],
  'authenticated may call get_online_users_batch');
select function_privs_are('public', 'nearby_online_users',
  array['double precision', 'double precision', 'integer', 'integer'], 'anon', array[]::text[],
  'anon may not call nearby_online_users');
select function_privs_are('public', 'nearby_online_users',
  array['double precision', 'double precision', 'integer', 'integer'], 'authenticated', array['EXECUTE'],
  'authenticated may call nearby_online_users');
select function_privs_are('private', 'find_nearby_online_users',
  array['double precision', 'double precision', 'integer', 'integer', 'uuid'], 'authenticated', array[]::text[],
  'find_nearby_online_users (no caller exclusion) is not for clients');

-- The cast. Positions are metres east (x) and north (y) of 45° S 30° W.
create temporary table people (name text primary key, id uuid, x double precision, y double precision) on commit drop;
create function pg_temp.lat_of(y double precision) returns double precision language sql immutable
  as $$ select -45 + y / 111195.08 $$;
create function pg_temp.lng_of(x double precision) returns double precision language sql immutable
  as $$ select -30 + x / (111195.08 * cos(radians(-45))) $$;

insert into people (name, x, y) values
  ('me', 0, 0), ('near', 500, 0), ('heartbeat', -900, -900), ('mid', 0, -2800),
  ('buffered_online', -3500, 0), ('far', 4500, 0), ('outside', 0, 9000), ('offline', 300, 300),
  ('buffered_offline', 0, 1200), ('moved', 7000, 7000), ('no_location', null, null);
update people set id = tests.create_supabase_user(name, name || '@read-path.test', initcap(replace(name, '_', ' ')),
  pg_temp.lat_of(y), pg_temp.lng_of(x), name not in ('offline', 'buffered_online', 'no_location'));
update public.profiles set last_seen_at = now() - interval '1 minute' where id in (select id from people);

-- Newer buffered events (not flushed yet): offline -> online, online -> offline, a move from
-- ~9.9 km to ~4.2 km from me, and a heartbeat in place. One stale event, older than the profile.
insert into public.presence_buffer (user_id, is_online, event_at, latitude, longitude)
select id, true, now(), null::double precision, null::double precision from people where name = 'buffered_online'
union all
select id, false, now(), null, null from people where name = 'buffered_offline'
union all
select id, true, now(), pg_temp.lat_of(-3700), pg_temp.lng_of(2000) from people where name = 'moved'
union all
select id, true, now(), pg_temp.lat_of(-900), pg_temp.lng_of(-900) from people where name = 'heartbeat'
union all
select id, false, now() - interval '1 hour', null, null from people where name = 'near';

create function pg_temp.who(n text) returns uuid language sql stable
  as $$ select id from people where name = n $$;
create temporary table buffered on commit drop as
select pe.name, b.event_at from people as pe join public.presence_buffer as b on b.user_id = pe.id;
create temporary table flushed on commit drop as
select pe.name, p.last_seen_at from people as pe join public.profiles as p on p.id = pe.id;
grant select on people, buffered, flushed to authenticated, anon, service_role;

-- get_online_users_batch, as a signed-in user.
select tests.authenticate_as('me');

select results_eq(
  $$ select b.user_id, b.is_online from public.get_online_users_batch(array[
       pg_temp.who('near'), pg_temp.who('offline'), pg_temp.who('buffered_online'),
       pg_temp.who('buffered_offline'), gen_random_uuid(), pg_temp.who('near')]) as b
     order by b.user_id $$,
  $$ select id, name in ('near', 'buffered_online') from people
     where name in ('near', 'offline', 'buffered_online', 'buffered_offline') order by id $$,
  'batch: one row per existing user (unknown ids absent, duplicates once), buffered events count, stale ones do not');
select is(
  (select b.last_seen_at from public.get_online_users_batch(array[pg_temp.who('buffered_offline')]) as b),
  (select date_trunc('minute', event_at at time zone 'UTC') at time zone 'UTC' from buffered where name = 'buffered_offline'),
  'batch: last_seen_at is the buffered event time when it is newer, to the minute for users');
select is(
  (select b.last_seen_at from public.get_online_users_batch(array[pg_temp.who('near')]) as b),
  (select date_trunc('minute', last_seen_at at time zone 'UTC') at time zone 'UTC' from flushed where name = 'near'),
  'batch: a buffered event older than the profile is ignored');
select is_empty($$ select * from public.get_online_users_batch(array[]::uuid[]) $$, 'batch: no ids, no rows');
select lives_ok(
  $$ select count(*) from public.get_online_users_batch(array(select gen_random_uuid() from generate_series(1, 10000))) $$,
  'batch: 10000 ids are accepted');
select throws_ok(
  $$ select * from public.get_online_users_batch(array(select gen_random_uuid() from generate_series(1, 10001))) $$,
  '22023', 'user_ids must be an array of at most 10000 ids, got 10001',
  'batch: 10001 ids are refused with 22023 and a clear message');
-- Through the API (PostgREST sets request.method) at most max_rows = 1000, never cut short.
select set_config('request.method', 'POST', true) as through_the_api \gset
select lives_ok(
  $$ select count(*) from public.get_online_users_batch(array(select gen_random_uuid() from generate_series(1, 1000))) $$,
  'batch through the API: 1000 ids are accepted');
select throws_ok(
  $$ select * from public.get_online_users_batch(array(select gen_random_uuid() from generate_series(1, 1001))) $$,
  '22023', 'user_ids must be an array of at most 1000 ids, got 1001',
  'batch through the API: 1001 ids are refused (PostgREST would return only 1000 rows)');
select set_config('request.method', '', true) as direct_again \gset
select throws_ok($$ select * from public.get_online_users_batch(null) $$, '22023', null,
  'batch: null is refused with 22023');

-- nearby_online_users, as a signed-in user.
-- Where everyone is now (buffered moves applied), snapped, as seen from me.
create temporary table seen_from_me on commit drop as
select pe.name, pe.id,
       extensions.st_distance(public.snap_location(pg_temp.lat_of(coalesce(m.y, pe.y)), pg_temp.lng_of(coalesce(m.x, pe.x))),
         extensions.st_point(pg_temp.lng_of(0), pg_temp.lat_of(0))::extensions.geography, false) as distance
from people as pe
left join (values ('moved', 2000::double precision, -3700::double precision)) as m (name, x, y) using (name);
grant select on seen_from_me to authenticated;

select results_eq(
  $$ select n.user_id from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 50) as n $$,
  $$ select id from seen_from_me
     where name in ('near', 'heartbeat', 'mid', 'buffered_online', 'moved', 'far') order by distance, id $$,
  'nearby: online users in range, nearest first, never the caller; buffered events count');
select is(
  (select array_agg(name order by distance) from seen_from_me
   where name in ('near', 'heartbeat', 'mid', 'buffered_online', 'moved', 'far')),
  array['near', 'heartbeat', 'mid', 'buffered_online', 'moved', 'far'],
  'nearby: (the cast stands far enough apart that the grid keeps their order)');
select is_empty(
  $$ select from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 50000, 500) as n
     where n.user_id in (pg_temp.who('me'), pg_temp.who('offline'), pg_temp.who('buffered_offline'), pg_temp.who('no_location')) $$,
  'nearby: never the caller, nor anyone offline (flushed or buffered), nor anyone without a location');
select ok(
  (select bool_and(n.distance_m <= 2000 + 50) and count(*) = 2
   from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 2000, 50) as n),
  'nearby: the radius is honoured (2 km: near and heartbeat only)');
select is(
  (select count(*)::integer from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 3)),
  3, 'nearby: max_results is honoured');
select ok(
  (select bool_and(n.distance_m % 100 = 0 and n.distance_m >= 100)
   from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 50000, 500) as n),
  'nearby: distances are whole hundreds of metres');
select ok(
  (select abs(n.distance_m - 4206) <= 410 from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 50) as n
   where n.user_id = pg_temp.who('moved')),
  'nearby: a buffered move counts (moved is ~4.2 km away now, not ~9.9 km)');
select is(
  (select n.last_seen_at from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 50) as n
   where n.user_id = pg_temp.who('heartbeat')),
  (select date_trunc('minute', event_at at time zone 'UTC') at time zone 'UTC' from buffered where name = 'heartbeat'),
  'nearby: last_seen_at is the newest event, to the minute');
select results_eq(
  $$ select n.user_id from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0)) as n limit 1 $$,
  $$ values (pg_temp.who('near')) $$,
  'nearby: radius_m and max_results have defaults (5000, 50)');

-- Input errors: 22023 with a message naming the argument.
select throws_ok($$ select * from public.nearby_online_users(91, 0, 5000, 50) $$, '22023',
  'lat must be a latitude between -90 and 90, got 91', 'nearby: latitude out of range');
select throws_ok($$ select * from public.nearby_online_users(0, -180.5, 5000, 50) $$, '22023',
  'lng must be a longitude between -180 and 180, got -180.5', 'nearby: longitude out of range');
select throws_ok($$ select * from public.nearby_online_users('NaN', 0, 5000, 50) $$, '22023', null,
  'nearby: NaN latitude');
select throws_ok($$ select * from public.nearby_online_users(0, 0, 0, 50) $$, '22023',
  'radius_m must be between 1 and 50000 metres, got 0', 'nearby: radius not positive');
select throws_ok($$ select * from public.nearby_online_users(0, 0, 50001, 50) $$, '22023',
  'radius_m must be between 1 and 50000 metres, got 50001', 'nearby: radius over 50 km');
select throws_ok($$ select * from public.nearby_online_users(0, 0, 5000, 0) $$, '22023',
  'max_results must be between 1 and 500, got 0', 'nearby: max_results not positive');
select throws_ok($$ select * from public.nearby_online_users(0, 0, 5000, 501) $$, '22023',
  'max_results must be between 1 and 500, got 501', 'nearby: max_results over 500');
select throws_ok($$ select * from public.nearby_online_users(null, 0, 5000, 50) $$, '22023', null,
  'nearby: null latitude');

-- Other roles.
select throws_ok(
  $$ select * from private.find_nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 50, null) $$,
  '42501', null, 'authenticated may not call find_nearby_online_users');
select tests.authenticate_as_anon();
select throws_ok($$ select * from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0)) $$, '42501', null,
  'anon is refused by nearby_online_users');
select throws_ok($$ select * from public.get_online_users_batch(array[pg_temp.who('near')]) $$, '42501', null,
  'anon is refused by get_online_users_batch');
select tests.authenticate_as_service_role();
select is(
  (select count(*)::integer from public.nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 50)
   where user_id = pg_temp.who('me')),
  1, 'service_role (no caller) may call nearby_online_users and excludes nobody');
select is(
  (select count(*)::integer from public.get_online_users_batch(array[pg_temp.who('me')])),
  1, 'service_role may call get_online_users_batch');
select is(
  (select b.last_seen_at from public.get_online_users_batch(array[pg_temp.who('buffered_offline')]) as b),
  (select event_at from buffered where name = 'buffered_offline'),
  'service_role gets the precise last-seen time');
select tests.clear_authentication();
select tests.authenticate_as('me');
select throws_ok($$ select last_seen_at from public.profiles limit 1 $$, '42501', null,
  'users cannot read profiles.last_seen_at (get_online_users_batch answers it, to the minute)');
select tests.clear_authentication();

-- Privacy. 8 targets at scattered positions 20 km from everyone else; an attacker probes from
-- 16 chosen points around each (12 on a 3 km circle, 4 on a 1 km one) and solves the
-- least-squares trilateration of the reported distances.
create temporary table targets (n integer primary key, id uuid, x double precision, y double precision) on commit drop;
insert into targets (n, x, y)
select n, 20000 + 4000 * n + 1700 * sin(n * 2.1), 20000 + 1900 * cos(n * 1.7)
from generate_series(1, 8) as n;
update targets set id = tests.create_supabase_user('target-' || n, 'target-' || n || '@read-path.test', 'Target ' || n,
  pg_temp.lat_of(y), pg_temp.lng_of(x), true);
update public.profiles set last_seen_at = now() where id in (select id from targets);
create temporary table observations (n integer, px double precision, py double precision, d double precision) on commit drop;
grant select on targets to authenticated;
grant insert on observations to authenticated;

select tests.authenticate_as('me');
insert into observations (n, px, py, d)
select t.n, p.px, p.py, r.distance_m
from targets as t
cross join lateral (
  select t.x + 3000 * cos(radians(a)), t.y + 3000 * sin(radians(a)) from generate_series(0, 330, 30) as a
  union all
  select t.x + 1000 * cos(radians(a)), t.y + 1000 * sin(radians(a)) from generate_series(45, 315, 90) as a
) as p (px, py)
cross join lateral public.nearby_online_users(pg_temp.lat_of(p.py), pg_temp.lng_of(p.px), 5000, 500) as r
where r.user_id = t.id;
select tests.clear_authentication();

select is((select count(*)::integer from observations), 8 * 16, 'privacy: every probe sees its target');

-- Least squares on d² = (x - px)² + (y - py)², linear in (x, y, x² + y²) once centred per target.
create temporary table estimates on commit drop as
with centred as (
  select o.n,
         o.px - avg(o.px) over w as ax,
         o.py - avg(o.py) over w as ay,
         (o.d ^ 2 - o.px ^ 2 - o.py ^ 2) - avg(o.d ^ 2 - o.px ^ 2 - o.py ^ 2) over w as b
  from observations as o
  window w as (partition by o.n)
),
sums as (
  select n, sum(ax * ax) as sxx, sum(ax * ay) as sxy, sum(ay * ay) as syy,
         sum(ax * b) as sxb, sum(ay * b) as syb
  from centred group by n
)
select s.n,
       -(s.syy * s.sxb - s.sxy * s.syb) / (2 * (s.sxx * s.syy - s.sxy ^ 2)) as x,
       -(s.sxx * s.syb - s.sxy * s.sxb) / (2 * (s.sxx * s.syy - s.sxy ^ 2)) as y
from sums as s;

-- Where the grid put each target, in the same frame.
create temporary table cells on commit drop as
select t.n,
       (extensions.st_x(c.g::extensions.geometry) + 30) * 111195.08 * cos(radians(-45)) as x,
       (extensions.st_y(c.g::extensions.geometry) + 45) * 111195.08 as y
from targets as t
cross join lateral (select public.snap_location(pg_temp.lat_of(t.y), pg_temp.lng_of(t.x)) as g) as c;

select diag(format('trilateration over %s probes per target: RMS error %s m from the cell centre, %s m from the true location',
  (select count(*) / 8 from observations),
  (select round(sqrt(avg((e.x - c.x) ^ 2 + (e.y - c.y) ^ 2))::numeric) from estimates as e join cells as c using (n)),
  (select round(sqrt(avg((e.x - t.x) ^ 2 + (e.y - t.y) ^ 2))::numeric) from estimates as e join targets as t using (n))));
select cmp_ok(
  (select sqrt(avg((e.x - c.x) ^ 2 + (e.y - c.y) ^ 2)) from estimates as e join cells as c using (n)),
  '<', 60::double precision,
  'privacy: the attack works, it finds each target''s grid cell centre (RMS error < 60 m)');
select cmp_ok(
  (select sqrt(avg((e.x - t.x) ^ 2 + (e.y - t.y) ^ 2)) from estimates as e join targets as t using (n)),
  '>=', 100::double precision,
  'privacy: but it places targets no better than ~100 m (RMS error from the true location)');
select cmp_ok(
  (select max(sqrt((c.x - t.x) ^ 2 + (c.y - t.y) ^ 2)) from cells as c join targets as t using (n)),
  '<=', 360::double precision,
  'privacy: snapping moves nobody more than the cell''s half diagonal (~354 m)');

-- Two users 300 m apart in one cell get identical answers from every probe: no number of
-- probes can tell where in the cell a user is.
create temporary table twins (name text primary key, id uuid) on commit drop;
insert into twins (name, id)
select 'twin-' || k, tests.create_supabase_user('twin-' || k, 'twin-' || k || '@read-path.test', 'Twin ' || k,
  extensions.st_y(c.g::extensions.geometry) + dy, extensions.st_x(c.g::extensions.geometry) + dx, true)
from (select public.snap_location(pg_temp.lat_of(-20000), pg_temp.lng_of(-20000)) as g) as c,
     (values (1, -0.0011, -0.0019), (2, 0.0015, 0.0016)) as v (k, dy, dx);
grant select on twins to authenticated;
select cmp_ok(
  (select extensions.st_distance(
     extensions.st_point(a.longitude, a.latitude, 4326)::extensions.geography,
     extensions.st_point(b.longitude, b.latitude, 4326)::extensions.geography)
   from public.profiles as a, public.profiles as b
   where a.id = (select id from twins where name = 'twin-1') and b.id = (select id from twins where name = 'twin-2')),
  '>', 300::double precision, 'privacy: the twins really are far apart');
select tests.authenticate_as('me');
select is_empty($$
  select p.a
  from generate_series(0, 350, 10) as p (a)
  cross join lateral (
    select array_agg(r.distance_m order by t.name) as d
    from public.nearby_online_users(pg_temp.lat_of(-20000 + 1500 * sin(radians(p.a))),
      pg_temp.lng_of(-20000 + 1500 * cos(radians(p.a))), 5000, 500) as r
    join twins as t on t.id = r.user_id
  ) as seen
  where seen.d[1] is distinct from seen.d[2] or cardinality(seen.d) <> 2
$$, 'privacy: two users in one cell are indistinguishable from 36 probes');
select tests.clear_authentication();

-- The cached-answer worker (service_role and the functions only) excludes whom it is told.
select is(
  (select count(*)::integer from private.find_nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 50, pg_temp.who('near'))
   where user_id = pg_temp.who('near')),
  0, 'find_nearby_online_users excludes the given user');
select is(
  (select count(*)::integer from private.find_nearby_online_users(pg_temp.lat_of(0), pg_temp.lng_of(0), 5000, 50, null)
   where user_id = pg_temp.who('me')),
  1, 'find_nearby_online_users without an exclusion returns everyone');
select throws_ok($$ select * from private.find_nearby_online_users(0, 0, 5000, 1001, null) $$, '22023',
  'max_results must be between 1 and 1000, got 1001', 'find_nearby_online_users caps max_results at 1000');

-- The grid itself.
select is(public.snap_location(52.52, 13.405), public.snap_location(52.5201, 13.4051),
  'snap_location: nearby points share a cell');
select is(public.snap_location(null, 13.4), null, 'snap_location: no location, no point');
select lives_ok($$ select public.snap_location(90, 180), public.snap_location(-90, -180), public.snap_location(0, 180) $$,
  'snap_location: the poles and the antimeridian are fine');
select cmp_ok(
  (select max(extensions.st_distance(public.snap_location(lat, lng), extensions.st_point(lng, lat, 4326)::extensions.geography))
   from (select -80 + 160 * random() as lat, -180 + 360 * random() as lng from generate_series(1, 2000)) as r),
  '<=', 360::double precision, 'snap_location: cells are ~500 m everywhere (offset <= 360 m at any latitude)');

select * from finish();
rollback;
