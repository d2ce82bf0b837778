-- Least privilege: public is exactly the client API; the edge functions' role sltr_functions
-- executes the RPCs they call and nothing else; no client role may truncate, reference or put
-- triggers on our tables, and anon has no legacy way in. All rolled back.
begin;
select plan(16);

select results_eq(
  $$select p.oid::regprocedure::text from pg_proc as p where p.pronamespace = 'public'::regnamespace order by 1$$,
  array['block_user(uuid)', 'get_online_users()', 'get_online_users_batch(uuid[])', 'list_blocks()',
        'nearby_online_users(double precision,double precision,integer,integer)',
        'set_privacy(boolean,boolean)', 'snap_location(double precision,double precision)',
        'unblock_user(uuid)', 'watch_presence(uuid[])'],
  'public holds exactly the client API (the service-only functions are in private)');
select is_empty(
  $$select p.oid::regprocedure from pg_proc as p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) as a
    where p.pronamespace = 'private'::regnamespace and a.grantee in (0, 'anon'::regrole, 'authenticated'::regrole)
      and p.oid <> 'private.check_request_quota()'::regprocedure
      and not (p.oid = 'private.blocked_with_me(uuid)'::regprocedure and a.grantee = 'authenticated'::regrole)$$,
  'nothing in private is executable by PUBLIC, anon or authenticated (but PostgREST''s quota hook, as the caller, and the profiles read policy''s block check)');

-- PostgREST runs its pre-request hook as the request's role: anon too, or no anon request works.
set local role anon;
select lives_ok($$select private.check_request_quota()$$, 'anon may run PostgREST''s quota hook');
reset role;

-- The functions' role: exactly what they call.
select ok(exists (select from pg_roles where rolname = 'sltr_functions' and not rolsuper and not rolbypassrls
  and not rolcreaterole and not rolcreatedb), 'sltr_functions is an ordinary role (no superuser, no RLS bypass)');
select results_eq(
  $$select p.oid::regprocedure::text from pg_proc as p
    where p.pronamespace in ('public'::regnamespace, 'private'::regnamespace, 'monitoring'::regnamespace)
      and has_function_privilege('sltr_functions', p.oid, 'execute')
      and not exists (select from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) as a where a.grantee = 0)
    order by 1$$,
  array['get_online_users_batch(uuid[])', 'monitoring.metrics_snapshot()',
        'private.find_nearby_online_users(double precision,double precision,integer,integer,uuid)',
        'private.ingest_presence(jsonb)', 'private.live_index_privacy(timestamp with time zone)',
        'private.live_index_snapshot(boolean,uuid[])', 'private.live_index_snapshot_page(uuid,integer)',
        'private.online_users_for(uuid,uuid[])', 'private.privacy_changes_bounds()'],
  'sltr_functions executes the nine RPCs the functions call, and no other function of ours');
select is_empty(
  $$select c.oid::regclass from pg_class as c
    where c.relnamespace in ('public'::regnamespace, 'private'::regnamespace, 'monitoring'::regnamespace)
      and c.relkind in ('r', 'v', 'm', 'p')
      and (has_table_privilege('sltr_functions', c.oid, 'select') or has_table_privilege('sltr_functions', c.oid, 'insert')
        or has_table_privilege('sltr_functions', c.oid, 'update') or has_table_privilege('sltr_functions', c.oid, 'delete')
        or has_table_privilege('sltr_functions', c.oid, 'truncate'))$$,
  'sltr_functions has no privilege on any table or view');

-- pgTAP lives in schema extensions, which the role may not use: granted for this transaction only.
grant usage on schema extensions to sltr_functions;
set local role sltr_functions;
select lives_ok($$select private.ingest_presence('[]')$$, 'as sltr_functions: ingest_presence runs (as its owner)');
select lives_ok($$select * from public.get_online_users_batch(array[gen_random_uuid()])$$,
  'as sltr_functions: get_online_users_batch runs');
select lives_ok($$select * from private.find_nearby_online_users(52.5, 13.4, 5000, 50, null)$$,
  'as sltr_functions: the internal nearby search runs');
select throws_ok($$select count(*) from public.profiles$$, '42501', null, 'as sltr_functions: profiles cannot be read');
select throws_ok($$truncate public.presence_buffer$$, '42501', null, 'as sltr_functions: nothing can be truncated');
select throws_ok($$select private.flush_presence()$$, '42501', null,
  'as sltr_functions: the flush is pg_cron''s, not the functions''');
reset role;

-- Client roles: no truncate, references or trigger on any table; anon has no legacy way in.
select is_empty(
  $$select c.oid::regclass, r.rolname from pg_class as c, (values ('anon'), ('authenticated')) as r (rolname)
    where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'm', 'p')
      and (has_table_privilege(r.rolname, c.oid, 'truncate') or has_table_privilege(r.rolname, c.oid, 'references')
        or has_table_privilege(r.rolname, c.oid, 'trigger'))$$,
  'anon and authenticated cannot truncate, reference or add triggers to any table in public');
select ok(not has_column_privilege('authenticated', 'public.profiles', 'latitude', 'update')
  and not has_column_privilege('authenticated', 'public.profiles', 'longitude', 'insert'),
  'users cannot write their own coordinates (only the presence pipeline places them)');
select ok(not has_function_privilege('anon', 'public.get_online_users()', 'execute'),
  'anon cannot execute the legacy get_online_users');
create table public.tmp_new_table (id integer);
select ok(not has_table_privilege('authenticated', 'public.tmp_new_table', 'truncate')
  and not has_table_privilege('anon', 'public.tmp_new_table', 'trigger'),
  'tables created from now on do not grant truncate or trigger to client roles by default');

select * from finish();
rollback;
