-- Grid-edge hysteresis: a still user whose GPS fixes alternate across a cell edge stays in one
-- cell; a fix more than 100 m into another cell moves them, and noise around the new cell's
-- edge does not move them back. Through ingest_presence, as the webhook calls it, and the cell
-- the live index is built from (live_index_snapshot). All rolled back.
begin;
select plan(7);

-- A row edge of the grid near Berlin: rows are 0.0045 degrees of latitude.
create temporary table edge on commit drop as
select -90 + pg_catalog.floor((52.5 + 90) / 0.0045) * 0.0045 as lat, 13.4 as lng;
create temporary table m on commit drop as select 1 / 111195.0 as deg;

create temporary table who on commit drop as
select tests.create_supabase_user('still', 'hysteresis@cells.test', 'Still', (select lat from edge) + 10 * (select deg from m),
  13.4, true) as id;

create function pg_temp.fix(metres_north double precision, seconds integer) returns void
language sql as $$
  select private.ingest_presence(jsonb_build_array(jsonb_build_object(
    'user_id', (select id from who), 'status', 'online',
    'at', now() + make_interval(secs => seconds),
    'lat', (select lat from edge) + metres_north * (select deg from m), 'lng', 13.4)))
$$;

create function pg_temp.shown() returns text
language sql as $$
  select s.cell_lat::text || ',' || s.cell_lng::text
  from private.live_index_snapshot(false, array[(select id from who)]) as s
$$;

create temporary table cells on commit drop as
select pg_temp.shown() as north,
       (select extensions.st_y(public.snap_location(lat - 150 * (select deg from m), lng)::extensions.geometry)::text
          || ',' || extensions.st_x(public.snap_location(lat - 150 * (select deg from m), lng)::extensions.geometry)::text
        from edge) as south;

select isnt((select north from cells), (select south from cells), 'the two sides of the edge are different cells');

-- GPS noise of +-15 m around a point 10 m north of the edge: every other fix is south of it.
select pg_temp.fix(-15, 1), pg_temp.fix(12, 2), pg_temp.fix(-5, 3), pg_temp.fix(-15, 4);
select is(pg_temp.shown(), (select north from cells), 'fixes alternating across the edge keep the cell shown');
select private.flush_presence();
select is(pg_temp.shown(), (select north from cells), '... also once flushed into profiles');

select pg_temp.fix(-90, 5);
select is(pg_temp.shown(), (select north from cells), 'a fix 90 m into the next cell keeps it too');

select pg_temp.fix(-150, 6);
select is(pg_temp.shown(), (select south from cells), 'a fix 150 m into the next cell moves the user there');

select pg_temp.fix(40, 7), pg_temp.fix(-10, 8), pg_temp.fix(60, 9);
select is(pg_temp.shown(), (select south from cells), 'noise around the edge does not move them back');

select pg_temp.fix(400, 10);
select is(pg_temp.shown(), (select north from cells), 'a real move north does');

select * from finish();
rollback;
