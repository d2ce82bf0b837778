-- Demo data for `make dev`: 300 users around Berlin, about a fifth online, with
-- favorites and subscriptions, a few blocks, an incognito user (seed user 13) and one who hides
-- their distance (seed user 21). Deterministic and idempotent (re-running changes nothing).
-- Demo users: seed-user-<n>@sltr.local, ids derived from n.

begin;

create temporary table seed_users on commit drop as
select
  n,
  (substr(md5('sltr-seed-' || n), 1, 8) || '-' || substr(md5('sltr-seed-' || n), 9, 4) || '-4'
    || substr(md5('sltr-seed-' || n), 14, 3) || '-a' || substr(md5('sltr-seed-' || n), 18, 3) || '-'
    || substr(md5('sltr-seed-' || n), 21, 12))::uuid as id,
  -- Deterministic pseudo-random numbers in [0, 1) from the user number.
  ('x' || substr(md5('lat' || n), 1, 8))::bit(32)::bigint / 4294967296.0 as r1,
  ('x' || substr(md5('lng' || n), 1, 8))::bit(32)::bigint / 4294967296.0 as r2,
  ('x' || substr(md5('on' || n), 1, 8))::bit(32)::bigint / 4294967296.0 as r3
from generate_series(1, 300) as n;


insert into auth.users (id, aud, role, email, raw_user_meta_data)
select id, 'authenticated', 'authenticated', 'seed-user-' || n || '@sltr.local',
       jsonb_build_object('display_name', 'Seed user ' || n)
from seed_users
on conflict (id) do nothing;

-- Clustered around Berlin Mitte: most within ~10 km.
insert into public.profiles (id, display_name, is_online, latitude, longitude, last_seen_at)
select id, 'Seed user ' || n, r3 < 0.2,
       52.52 + (r1 - 0.5) * 0.18, 13.405 + (r2 - 0.5) * 0.3,
       -- Online users were seen just now (expire_stale_presence marks them offline after
       -- 5 minutes without a presence event); the others some hours ago.
       case when r3 < 0.2 then now() - (n || ' seconds')::interval
            else now() - (n || ' minutes')::interval end
from seed_users
on conflict (id) do nothing;

insert into public.favorites (user_id, favorite_id)
select a.id, b.id
from seed_users as a
join seed_users as b on b.n in (a.n % 300 + 1, (a.n + 6) % 300 + 1, (a.n * 7) % 300 + 1)
where a.n % 3 = 0 and a.id <> b.id
on conflict do nothing;

insert into public.subscriptions (user_id, tier, status, current_period_end)
select id, case when n % 10 = 0 then 'pro' else 'plus' end, 'active',
       timestamptz '2027-01-01 00:00:00+00'
from seed_users
where n % 5 = 0
on conflict (user_id) do nothing;

-- The safety controls (docs/privacy.md): seed user 10 blocked 11 and 12, 30 blocked 31.
with made as (
  insert into public.blocks (blocker_id, blocked_id)
  select a.id, b.id
  from seed_users as a
  join seed_users as b on (a.n, b.n) in ((10, 11), (10, 12), (30, 31))
  on conflict do nothing
  returning blocker_id, blocked_id
)
insert into private.privacy_changes (user_id)
select blocker_id from made union all select blocked_id from made;

with changed as (
  update public.profiles as p
  set incognito = (s.n = 13), show_distance = (s.n <> 21)
  from seed_users as s
  where p.id = s.id and s.n in (13, 21)
    and (p.incognito is distinct from (s.n = 13) or p.show_distance is distinct from (s.n <> 21))
  returning p.id
)
insert into private.privacy_changes (user_id) select id from changed;

commit;
