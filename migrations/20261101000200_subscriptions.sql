-- v3: subscriptions, one paid tier per user, written only by the billing backend.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

create table public.subscriptions (
  user_id uuid primary key references public.profiles (id) on delete cascade,
  tier text not null default 'free' check (tier in ('free', 'plus', 'pro')),
  status text not null default 'active' check (status in ('active', 'trialing', 'past_due', 'canceled')),
  current_period_end timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

comment on table public.subscriptions is 'A user''s subscription tier; written by service_role (billing), read by its owner.';

alter table public.subscriptions enable row level security;

revoke all on public.subscriptions from anon;
revoke insert, update, delete on public.subscriptions from authenticated;

create policy "Users read their own subscription" on public.subscriptions
  for select to authenticated using (user_id = (select auth.uid()));
