-- Undo the presence write path, in reverse order: the pg_cron jobs, then the buffer is folded
-- into profiles (accepted events, heartbeats included, are kept, not dropped with the table),
-- then the functions and the table. Profiles keep all their data.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

do $$
begin
  if to_regnamespace('cron') is not null then
    perform cron.unschedule(j.jobid)
    from cron.job as j
    where j.jobname in ('presence-expire', 'presence-flush');
  end if;
end
$$;

-- No ingest may slip in between the fold and the drop.
lock table public.presence_buffer in access exclusive mode;

update public.profiles as p
set is_online = b.is_online,
    last_seen_at = b.event_at,
    latitude = coalesce(b.latitude, p.latitude),
    longitude = coalesce(b.longitude, p.longitude)
from public.presence_buffer as b
where p.id = b.user_id
  and (p.last_seen_at is null or b.event_at > p.last_seen_at);

drop function if exists public.expire_stale_presence(interval);

drop function if exists public.flush_presence();

drop function if exists public.ingest_presence(jsonb);

drop table if exists public.presence_buffer;
