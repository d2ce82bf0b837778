-- Supabase compatibility bootstrap for plain Postgres.
--
-- Creates, only where they are missing, the objects hosted Supabase already provides:
-- the API roles, the auth schema with auth.users and the auth.uid()/role()/jwt() helpers
-- (reading request.jwt.claims exactly as PostgREST sets it), the supabase_realtime
-- publication, realtime.messages with realtime.send()/topic(), the extensions schema and the
-- migration tracking table the Supabase CLI and dbmate share. On hosted Supabase every
-- statement here is a no-op.

do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit password 'postgres';
    grant anon, authenticated, service_role to authenticator;
  end if;
  if not exists (select from pg_roles where rolname = 'supabase_realtime_admin') then
    create role supabase_realtime_admin nologin noinherit;
  end if;
end
$$;

-- The API roles' statement timeouts, as supabase/postgres sets them (anon 3 s, authenticated
-- and authenticator 8 s; Supabase docs, guides/database/postgres/timeouts). PostgREST applies
-- the impersonated role's settings on every request (functions/_serve/postgrest.ts here).
do $$
declare
  timeouts constant jsonb := '{"anon": "3s", "authenticated": "8s", "authenticator": "8s"}';
  api_role text;
begin
  for api_role in select jsonb_object_keys(timeouts) loop
    if not exists (
      select from pg_db_role_setting as s, pg_options_to_table(s.setconfig) as o
      where s.setrole = api_role::regrole and s.setdatabase = 0
        and o.option_name = 'statement_timeout'
    ) then
      execute format('alter role %I set statement_timeout = %L', api_role, timeouts ->> api_role);
    end if;
  end loop;
end
$$;

create schema if not exists extensions;
grant usage on schema extensions to anon, authenticated, service_role;

-- The API roles use public as Supabase sets it up: everything granted, RLS decides. The
-- default privileges are the platform's starting point, set once per database (before its
-- first migration): a migration may narrow them (20261202040000_least_privilege.sql), and a
-- later run of this bootstrap must not widen them again.
grant usage on schema public to anon, authenticated, service_role;
do $$
begin
  if to_regclass('supabase_migrations.schema_migrations') is null then
    alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
    alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
    alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
  end if;
end
$$;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

do $$
begin
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $f$;
  end if;
  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
      )::text
    $f$;
  end if;
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $f$;
  end if;
end
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;

do $$
begin
  if not exists (select from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- Shared by dbmate (--migrations-table) and the Supabase CLI (db push, migration list).
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
  version text primary key,
  statements text[],
  name text
);

-- Realtime's database side, as hosted Supabase has it (its Realtime server creates these):
-- realtime.messages (the broadcast outbox, with RLS that authorizes private channels),
-- realtime.topic() for those policies, and realtime.send() to broadcast from SQL. Hosted,
-- the Realtime server delivers each row inserted by realtime.send to the topic's subscribers;
-- locally the Realtime endpoint (realtime/) does the same. Created only when missing: on
-- hosted Supabase this block does nothing.
--
-- realtime.messages is partitioned by day on inserted_at, exactly as hosted
-- (supabase/realtime priv/repo/tenant_schema/realtime/tables/messages.sql), and has no
-- partition until the Realtime endpoint creates them: yesterday to three days ahead, when it
-- connects and when its janitor runs, which also drops partitions older than 72 hours
-- (lib/realtime/tenants.ex create_messages_partitions, lib/realtime/messages.ex
-- delete_old_messages; realtime/partitions.ts here). A row for a day with no partition fails
-- with 23514, as it does hosted.
create schema if not exists realtime;
grant usage on schema realtime to anon, authenticated, service_role;

do $$
declare
  policy record;
begin
  -- A cluster bootstrapped before the table was partitioned: convert it as hosted Realtime's
  -- own migration did (20241030150047_messages_partitioning.ex): a new partitioned table with
  -- the old one's policies, swapped in; the rows (transient broadcasts) are not carried over.
  if (select c.relkind from pg_class as c where c.oid = to_regclass('realtime.messages')) = 'r' then
    alter table realtime.messages rename to messages_unpartitioned;
  end if;
  if to_regclass('realtime.messages') is null then
    create table realtime.messages (
      topic text not null,
      extension text not null,
      payload jsonb,
      event text,
      private boolean default false,
      updated_at timestamp without time zone not null default now(),
      inserted_at timestamp without time zone not null default now(),
      id uuid not null default gen_random_uuid(),
      primary key (id, inserted_at)
    ) partition by range (inserted_at);
    create index messages_inserted_at_topic_index on only realtime.messages
      using btree (inserted_at desc, topic)
      where extension = 'broadcast' and private is true;
    alter table realtime.messages enable row level security;
    alter table realtime.messages owner to supabase_realtime_admin;
    grant insert, select, update on realtime.messages to anon, authenticated, service_role;
    -- Hosted grants postgres these too (Realtime's SquashMigrations configure_grants): the
    -- inbox pruning (migrations/*_push_never_aborts_ingest.sql) runs as postgres from pg_cron.
    grant delete, truncate, references, trigger on realtime.messages to postgres;
  end if;
  if to_regclass('realtime.messages_unpartitioned') is not null then
    for policy in
      select p.policyname, p.permissive, p.cmd, p.roles, p.qual, p.with_check
      from pg_policies as p
      where p.schemaname = 'realtime' and p.tablename = 'messages_unpartitioned'
    loop
      execute format('create policy %I on realtime.messages as %s for %s to %s%s%s',
        policy.policyname, policy.permissive, policy.cmd,
        (select string_agg(quote_ident(r), ', ') from unnest(policy.roles) as r),
        coalesce(' using (' || policy.qual || ')', ''),
        coalesce(' with check (' || policy.with_check || ')', ''));
      execute format('comment on policy %I on realtime.messages is %L', policy.policyname,
        (select d.description from pg_policy as pp join pg_description as d on d.objoid = pp.oid
         where pp.polrelid = 'realtime.messages_unpartitioned'::regclass
           and pp.polname = policy.policyname));
    end loop;
    drop table realtime.messages_unpartitioned;
  end if;
  if to_regprocedure('realtime.topic()') is null then
    create function realtime.topic() returns text language sql stable as $f$
      select nullif(current_setting('realtime.topic', true), '')::text
    $f$;
    grant execute on function realtime.topic() to anon, authenticated, service_role;
  end if;
  if to_regprocedure('realtime.send(jsonb, text, text, boolean)') is null then
    -- Hosted's definition: adds an id to the payload, records the message, and never fails
    -- the caller's transaction (a broadcast that cannot be recorded is a warning).
    create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
    returns void language plpgsql as $f$
    declare
      generated_id uuid;
      final_payload jsonb;
    begin
      begin
        generated_id := gen_random_uuid();
        if payload ? 'id' then
          final_payload := payload;
        else
          final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
        end if;
        execute format('set local realtime.topic to %L', topic);
        insert into realtime.messages (id, payload, event, topic, private, extension)
        values (generated_id, final_payload, event, topic, private, 'broadcast');
      exception
        when others then
          raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
      end;
    end
    $f$;
    revoke execute on function realtime.send(jsonb, text, text, boolean) from public;
  end if;
end
$$;
