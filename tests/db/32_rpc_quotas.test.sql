-- Per-user quotas on the client RPCs, through PostgREST's db-pre-request hook exactly as
-- PostgREST calls it: the request's role, claims, method and path set, then
-- private.check_request_quota() in the request's transaction. All rolled back.
begin;
select plan(10);

select is((select o.option_value from pg_db_role_setting as s, pg_options_to_table(s.setconfig) as o
           where s.setrole = 'authenticator'::regrole and s.setdatabase = 0 and o.option_name = 'pgrst.db_pre_request'),
  'private.check_request_quota', 'PostgREST''s login role runs the hook before every request');
select is_empty(
  $$select p.proname from pg_proc as p
    where p.oid in ('public.nearby_online_users(double precision, double precision, integer, integer)'::regprocedure,
                    'public.get_online_users_batch(uuid[])'::regprocedure, 'public.watch_presence(uuid[])'::regprocedure)
      and p.provolatile <> 'v'$$,
  'the limited RPCs are volatile: PostgREST runs them read-write, so the hook can take its token');

select tests.create_supabase_user('me', 'quota@rpc.test');
create function pg_temp.request(path text) returns void language plpgsql as $$
begin
  perform set_config('request.method', 'POST', true);
  perform set_config('request.path', path, true);
  perform private.check_request_quota();
end
$$;
grant execute on function pg_temp.request(text) to authenticated, service_role;
-- Savepoints stand in for PostgREST's one transaction per request.
create function pg_temp.calls(path text, n integer) returns integer language plpgsql as $$
declare
  answered integer := 0;
begin
  for i in 1 .. n loop
    begin
      perform pg_temp.request(path);
      answered := answered + 1;
    exception when sqlstate 'PGRST' then
      null;
    end;
  end loop;
  return answered;
end
$$;
grant execute on function pg_temp.calls(text, integer) to authenticated, service_role;

select tests.authenticate_as('me');
select is(pg_temp.calls('/rpc/nearby_online_users', 25), 20, 'a user gets 20 nearby calls in a burst, then none');
select is(pg_temp.calls('/rpc/get_online_users_batch', 5), 5, 'each RPC has a bucket of its own');
select is(pg_temp.calls('/rpc/snap_location', 50), 50, 'RPCs without a limit are not counted');
select is(pg_temp.calls('/profiles', 50), 50, 'table reads are not counted');

create temporary table refusal on commit drop as select null::jsonb as message, null::jsonb as detail;
grant all on refusal to authenticated;
do $$
declare
  m text;
  d text;
begin
  perform pg_temp.request('/rpc/nearby_online_users');
exception when sqlstate 'PGRST' then
  get stacked diagnostics m = message_text, d = pg_exception_detail;
  update refusal set message = m::jsonb, detail = d::jsonb;
end
$$;
select is((select message ->> 'code' from refusal), 'rate_limited', 'the refusal names itself (PostgREST''s error body)');
select is((select detail ->> 'status' from refusal), '429', 'PostgREST answers it with 429');
select ok((select (detail -> 'headers' ->> 'Retry-After')::integer between 1 and 6 from refusal),
  'with Retry-After: the seconds until a token is back (one every 6 s)');
select tests.clear_authentication();

select tests.authenticate_as_service_role();
select is(pg_temp.calls('/rpc/nearby_online_users', 50), 50, 'service_role is not limited');
select tests.clear_authentication();

select * from finish();
rollback;
