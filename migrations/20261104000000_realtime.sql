-- Issue 7, Realtime done right: clients learn status changes from one broadcast per presence
-- flush (not from polling, not from one message per row), and the Realtime channels they use
-- are private, so nobody sees another user's location.
--
--   * profiles joins the supabase_realtime publication with a column list: id, is_online,
--     last_seen_at. Never latitude/longitude. (Hosted Realtime's postgres_changes decodes WAL
--     with wal2json, which ignores column lists, and then drops every column the subscriber
--     cannot SELECT; authenticated cannot select the coordinates, so that is the second lock
--     on the same door.) The replica identity (the primary key, id) is in the list, as
--     Postgres requires for a publication that publishes UPDATE and DELETE.
--   * Broadcast from the database: every UPDATE statement on profiles that changes someone's
--     status sends those changes as ONE message on topic presence:changes (realtime.send), in
--     the same transaction: the pg_cron flush (flush_presence) and the missed-leave expiry
--     (expire_stale_presence) are one statement each, so each batch is one broadcast, and
--     nothing is sent for a batch that changed nothing. A statement-level trigger with
--     transition tables rather than an edited copy of flush_presence: it sees every writer
--     of is_online (expiry included, which clients need too), and the presence write path's
--     functions stay owned by that migration. Very large batches are split into messages of
--     at most 1000 changes (Realtime caps a broadcast's size).
--   * Realtime Authorization (RLS on realtime.messages, checked when a client joins a private
--     channel): signed-in users may join online-users and publish their own presence there,
--     but may not receive presence, so the locations in presence payloads reach only the
--     presence bridge (service_role); they may receive the broadcasts on presence:changes.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

alter publication supabase_realtime add table public.profiles (id, is_online, last_seen_at);

-- Security definer: whoever runs the UPDATE (pg_cron as postgres, service_role calling
-- flush_presence, a user editing their profile), the broadcast is sent as the owner, who may
-- call realtime.send. It reads only ids, statuses and times from the transition tables.
create function public.broadcast_presence_changes()
returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  part jsonb;
begin
  -- Status changes only: is_online flipped, or a newer last_seen_at while offline. A location
  -- update changes last_seen_at too while is_online stays true: that is nobody's business.
  for part in
    select jsonb_agg(c.change order by c.position)
    from (
      select jsonb_build_object('user_id', new_row.id, 'is_online', new_row.is_online,
               'last_seen_at', new_row.last_seen_at) as change,
             row_number() over (order by new_row.last_seen_at, new_row.id) as position
      from new_rows as new_row
      join old_rows as old_row on old_row.id = new_row.id
      where new_row.is_online is distinct from old_row.is_online
         or (not new_row.is_online and new_row.last_seen_at is distinct from old_row.last_seen_at)
    ) as c
    group by (c.position - 1) / 1000
    order by (c.position - 1) / 1000
  loop
    perform realtime.send(jsonb_build_object('changes', part), 'status_changes', 'presence:changes', true);
  end loop;
  return null;
end
$$;

comment on function public.broadcast_presence_changes() is
  'Trigger: after each UPDATE statement on profiles, broadcasts the status changes it made as '
  'one Realtime message (event status_changes, private topic presence:changes, payload '
  '{"changes": [{user_id, is_online, last_seen_at}]}, at most 1000 per message). A change is '
  'going online or offline, or a newer last_seen_at while offline. Never carries locations.';

revoke execute on function public.broadcast_presence_changes() from public, anon, authenticated, service_role;

create trigger broadcast_presence_changes
  after update on public.profiles
  referencing old table as old_rows new table as new_rows
  for each statement
  execute function public.broadcast_presence_changes();

comment on trigger broadcast_presence_changes on public.profiles is
  'One Realtime broadcast per presence flush or expiry batch (see the function).';

create policy "Signed-in users join the presence channels" on realtime.messages
  for select to authenticated
  using ((select realtime.topic()) in ('online-users', 'presence:changes') and extension = 'broadcast');

comment on policy "Signed-in users join the presence channels" on realtime.messages is
  'Lets signed-in users join the private channels online-users and presence:changes and '
  'receive their broadcasts. Deliberately not their presence: only the presence bridge '
  '(service_role) sees who is in online-users, and where.';

create policy "Signed-in users publish their presence" on realtime.messages
  for insert to authenticated
  with check ((select realtime.topic()) = 'online-users' and extension = 'presence');

comment on policy "Signed-in users publish their presence" on realtime.messages is
  'Lets signed-in users track their presence in online-users; they may broadcast nothing.';
