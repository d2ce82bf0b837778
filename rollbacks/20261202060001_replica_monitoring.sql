-- Back to one check_alerts() without the replica alerts; the settings row goes (the
-- thresholds that were there before stay).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

drop function monitoring.check_alerts();
alter function monitoring.check_core_alerts() rename to check_alerts;

comment on function monitoring.check_alerts() is
  'The alerts that fire now, one row each (alert, severity, value, threshold, message): '
  'server_connections_high, slow_query (p95 estimated as mean + 2 * stddev), flush_lag, '
  'buffer_depth, flush_job_inactive, cron_job_failed. Thresholds in monitoring.settings.';

drop function monitoring.replication_status();
delete from monitoring.settings where name = 'replica_lag_alert_seconds';
