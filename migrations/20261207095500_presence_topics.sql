-- Presence sharded over topics: a user tracks on the topic their presence ticket names,
-- online-users when the project has one topic, else online-users:<k> (k = 0..999, the user's
-- shard of SLTR_PRESENCE_TOPICS; functions/_shared/presence_ticket.ts, presenceTopic). Signed-in
-- users may join and track on any of them (which one they use is the ticket's to say: the
-- bridge believes a presence only on its ticket's topic) and still read nobody's presence.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter policy "Signed-in users join the presence channels" on realtime.messages
  using (
    ((select realtime.topic()) = 'presence:changes'
      or (select realtime.topic()) ~ '^online-users(:(0|[1-9][0-9]{0,2}))?$')
    and extension = 'broadcast'
  );

comment on policy "Signed-in users join the presence channels" on realtime.messages is
  'Lets signed-in users join the private channels presence:changes and the presence topics '
  '(online-users, online-users:<0..999>) and receive their broadcasts. Deliberately not their '
  'presence: only the presence bridges (service_role) see who is on a presence topic, and where.';

alter policy "Signed-in users publish their presence" on realtime.messages
  with check (
    (select realtime.topic()) ~ '^online-users(:(0|[1-9][0-9]{0,2}))?$' and extension = 'presence'
  );

comment on policy "Signed-in users publish their presence" on realtime.messages is
  'Lets signed-in users track their presence on the presence topics (online-users, '
  'online-users:<0..999>); they may broadcast nothing.';
