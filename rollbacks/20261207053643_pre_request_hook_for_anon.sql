-- Undo 20261207053643_pre_request_hook_for_anon: anon loses the hook (and with it the API).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

revoke execute on function private.check_request_quota() from anon;
revoke usage on schema private from anon;
