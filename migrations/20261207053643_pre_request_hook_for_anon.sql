-- PostgREST runs its db-pre-request hook (private.check_request_quota) as the request's role,
-- anon included: without usage on schema private and execute on the hook, every request made
-- with the anon key or no token failed with 42501 (401 "permission denied for schema
-- private") before reaching its query. The local stand-in hid it by refusing tokenless
-- requests itself; it now runs them as anon, as PostgREST does. Nothing else in private is
-- granted to anon (tests/db/03_privileges.test.sql), and the hook returns at once for anon.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

grant usage on schema private to anon;
grant execute on function private.check_request_quota() to anon;
