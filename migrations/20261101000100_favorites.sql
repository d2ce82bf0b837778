-- v2: favorites, a user's private list of profiles they follow.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create table public.favorites (
  user_id uuid not null references public.profiles (id) on delete cascade,
  favorite_id uuid not null references public.profiles (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (user_id, favorite_id),
  constraint favorites_not_self check (user_id <> favorite_id)
);

comment on table public.favorites is 'Profiles a user has marked as favorite; private to that user.';

alter table public.favorites enable row level security;

revoke all on public.favorites from anon;
revoke update on public.favorites from authenticated;

create policy "Users read their own favorites" on public.favorites
  for select to authenticated using (user_id = (select auth.uid()));

create policy "Users add their own favorites" on public.favorites
  for insert to authenticated with check (user_id = (select auth.uid()));

create policy "Users remove their own favorites" on public.favorites
  for delete to authenticated using (user_id = (select auth.uid()));
