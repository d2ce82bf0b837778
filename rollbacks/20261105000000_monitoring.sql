-- Rolls back 20261105000000_monitoring: drops the monitoring schema and everything in it, in
-- reverse order. It holds no user data (only thresholds); nothing outside it is touched.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

drop function monitoring.metrics_snapshot();

drop function monitoring.check_alerts();

drop function monitoring.users_online();

drop view monitoring.presence_pipeline;

drop function monitoring.presence_pipeline_status();

drop view monitoring.cron_jobs;

drop function monitoring.cron_job_status();

drop view monitoring.connections;

drop view monitoring.activity;

drop function monitoring.session_activity();

drop view monitoring.slow_queries;

drop view monitoring.query_stats;

drop function monitoring.statement_stats(boolean);

drop function monitoring.flush_interval_seconds();

drop function monitoring.setting(text);

drop table monitoring.settings;

drop schema monitoring;
