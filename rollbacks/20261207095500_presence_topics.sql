-- Undo 20261207095500_presence_topics: users may join and track on online-users alone again
-- (a project sharded over topics must go back to SLTR_PRESENCE_TOPICS=1 first).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter policy "Signed-in users join the presence channels" on realtime.messages
  using ((select realtime.topic()) in ('online-users', 'presence:changes') and extension = 'broadcast');

comment on policy "Signed-in users join the presence channels" on realtime.messages is
  'Lets signed-in users join the private channels online-users and presence:changes and '
  'receive their broadcasts. Deliberately not their presence: only the presence bridge '
  '(service_role) sees who is in online-users, and where.';

alter policy "Signed-in users publish their presence" on realtime.messages
  with check ((select realtime.topic()) = 'online-users' and extension = 'presence');

comment on policy "Signed-in users publish their presence" on realtime.messages is
  'Lets signed-in users track their presence in online-users; they may broadcast nothing.';
