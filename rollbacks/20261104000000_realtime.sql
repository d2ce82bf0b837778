-- Undo Realtime done right, in reverse order: the channel policies, the broadcast trigger and
-- its function, then profiles leaves the publication. No table data is touched; messages
-- already broadcast stay in realtime.messages (the platform's table, which expires them).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

drop policy if exists "Signed-in users publish their presence" on realtime.messages;

drop policy if exists "Signed-in users join the presence channels" on realtime.messages;

drop trigger if exists broadcast_presence_changes on public.profiles;

drop function if exists public.broadcast_presence_changes();

alter publication supabase_realtime drop table public.profiles;
