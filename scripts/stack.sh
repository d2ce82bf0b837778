#!/usr/bin/env bash
# The local stack: Postgres 15 (54322) and its streaming read replica (54323), PgBouncer (54329),
# Redis (54379), the edge functions
# and the local Realtime endpoint (54321), and the presence bridge (health on 54340), all on
# loopback, all state in .state/.
#   stack.sh start       start what is not running, bootstrap, migrate, seed; returns when ready
#   stack.sh stop        stop everything
#   stack.sh status      NAME=value lines, like `supabase status -o env`
#   stack.sh functions   serve the functions and Realtime in the foreground (make dev)
#   stack.sh bridge      start the presence bridge in the background
#   stack.sh demo        start the demo driver in the background
#   stack.sh replica-stop / replica-start   stop or start the read replica alone (fault drills)
. "$(dirname "$0")/lib.sh"

LOG_DIR="$STATE/log"

prepare_dirs() {
  mkdir -p "$STATE" "$RUN_DIR" "$LOG_DIR" "$STATE/redis"
  if is_root; then
    # The postgres user needs to reach the state folder through every parent.
    chmod o+x "$STATE"
    chown postgres:postgres "$RUN_DIR" "$LOG_DIR"
    local d="$STATE"
    while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
  fi
}

init_postgres() {
  [ -f "$PGDATA_DIR/PG_VERSION" ] && return 0
  log "initialising Postgres cluster in $PGDATA_DIR"
  mkdir -p "$PGDATA_DIR"
  is_root && chown postgres:postgres "$PGDATA_DIR"
  local pwfile="$RUN_DIR/pwfile"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  is_root && chown postgres:postgres "$pwfile"
  as_db "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$LOG_DIR/initdb.log"
  rm -f "$pwfile"
  cat >>"$PGDATA_DIR/postgresql.conf" <<CONF

# --- SLTR local stack ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$RUN_DIR'
max_connections = 300
shared_buffers = 256MB
shared_preload_libraries = 'pg_cron,pg_stat_statements'
cron.database_name = 'postgres'
# pg_cron 1.4 runs jobs in background workers, so it needs no password over libpq.
cron.use_background_workers = on
max_worker_processes = 32
pg_stat_statements.track = all
track_io_timing = on
log_min_duration_statement = 1000
wal_level = logical
CONF
}

start_postgres() {
  if as_db "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then return 0; fi
  require_free_port "$PG_PORT" Postgres PG_PORT
  log "starting Postgres on 127.0.0.1:$PG_PORT"
  as_db "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$LOG_DIR/postgres.log" -w -t 60 start >/dev/null \
    || die "Postgres did not start; see $LOG_DIR/postgres.log"
}

# A physical streaming replica of the local Postgres (docs/replica.md): pg_basebackup with a
# replication slot, hot standby on its own port. Made again when the primary was (a new
# cluster has another system identifier, and the old copy could never follow it).

init_replica() {
  local primary_id
  primary_id=$(as_db "$PG_BIN/pg_controldata" -D "$PGDATA_DIR" | awk -F': *' '/system identifier/ {print $2}')
  if [ -f "$REPLICA_DIR/PG_VERSION" ]; then
    [ "$(cat "$REPLICA_DIR/sltr_primary_id" 2>/dev/null)" = "$primary_id" ] && return 0
    log "the replica in $REPLICA_DIR follows another cluster: making it again"
    as_db "$PG_BIN/pg_ctl" -D "$REPLICA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$REPLICA_DIR"
  fi
  log "making the read replica in $REPLICA_DIR (pg_basebackup)"
  mkdir -p "$REPLICA_DIR"
  chmod 700 "$REPLICA_DIR"
  is_root && chown postgres:postgres "$REPLICA_DIR"
  # The slot keeps the WAL the replica has not received yet (bounded by max_slot_wal_keep_size).
  psql_db -d postgres -c "select pg_create_physical_replication_slot('sltr_replica')
    where not exists (select from pg_replication_slots where slot_name = 'sltr_replica')" >/dev/null
  as_db env PGPASSWORD="$POSTGRES_PASSWORD" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -D "$REPLICA_DIR" -R -X stream -S sltr_replica -c fast >"$RUN_DIR/basebackup.log" 2>&1 \
    || die "pg_basebackup failed; see $RUN_DIR/basebackup.log"
  cat >>"$REPLICA_DIR/postgresql.conf" <<CONF

# --- SLTR local read replica (overrides the primary's settings above) ---
port = $REPLICA_PORT
hot_standby = on
# Queries here hold back the primary's vacuum rather than being cancelled by it.
hot_standby_feedback = on
max_standby_streaming_delay = 5s
CONF
  echo "$primary_id" | as_db tee "$REPLICA_DIR/sltr_primary_id" >/dev/null
}

replica_running() { as_db "$PG_BIN/pg_ctl" -D "$REPLICA_DIR" status >/dev/null 2>&1; }

start_replica() {
  # Bounded WAL retention for the slot: a replica stopped for long is made again, never a
  # primary whose disk fills up.
  psql_db -d postgres -c "alter system set max_slot_wal_keep_size = '1GB'" -c "select pg_reload_conf()" >/dev/null
  init_replica
  replica_running && return 0
  require_free_port "$REPLICA_PORT" "read replica" REPLICA_PORT
  log "starting the read replica on 127.0.0.1:$REPLICA_PORT (streaming from $PG_PORT)"
  as_db "$PG_BIN/pg_ctl" -D "$REPLICA_DIR" -l "$LOG_DIR/replica.log" -w -t 60 start >/dev/null \
    || die "the read replica did not start; see $LOG_DIR/replica.log"
  wait_for "the read replica's stream" 150 psql_replica_streaming
}

psql_replica_streaming() {
  [ "$(PGPASSWORD="$POSTGRES_PASSWORD" psql -X -At -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -d postgres \
    -c "select status from pg_stat_wal_receiver")" = streaming ]
}

stop_replica() {
  if [ -f "$REPLICA_DIR/PG_VERSION" ] && replica_running; then
    log "stopping the read replica"
    as_db "$PG_BIN/pg_ctl" -D "$REPLICA_DIR" -m fast -w stop >/dev/null
  fi
}

start_pgbouncer() {
  pid_alive "$RUN_DIR/pgbouncer.pid" && return 0
  require_free_port "$PGBOUNCER_PORT" PgBouncer PGBOUNCER_PORT
  cat >"$RUN_DIR/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres
; The read replica's own pool (REPLICA_POOLER_URL), capped like the primary's.
postgres_replica = host=127.0.0.1 port=$REPLICA_PORT dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir = $RUN_DIR
pidfile = $RUN_DIR/pgbouncer.pid
logfile = $LOG_DIR/pgbouncer.log
auth_type = scram-sha-256
auth_file = $RUN_DIR/pgbouncer.users
admin_users = postgres
stats_users = postgres
pool_mode = transaction
; The cap: never more than this many server connections to Postgres.
max_db_connections = $POOL_MAX_SERVER_CONNECTIONS
default_pool_size = $POOL_MAX_SERVER_CONNECTIONS
max_client_conn = 10000
server_idle_timeout = 60
query_wait_timeout = 120
; After a failed server login, new clients are refused for this long: short, so that a
; restarted Postgres or replica serves again within seconds.
server_login_retry = 2
ignore_startup_parameters = extra_float_digits,search_path
INI
  printf '"postgres" "%s"\n"sltr_functions" "%s"\n' "$POSTGRES_PASSWORD" "$FUNCTIONS_DB_PASSWORD" \
    >"$RUN_DIR/pgbouncer.users"
  if is_root; then
    chown postgres:postgres "$RUN_DIR/pgbouncer.ini" "$RUN_DIR/pgbouncer.users"
    chmod 600 "$RUN_DIR/pgbouncer.users"
    pgbouncer -d -u postgres "$RUN_DIR/pgbouncer.ini"
  else
    chmod 600 "$RUN_DIR/pgbouncer.users"
    pgbouncer -d "$RUN_DIR/pgbouncer.ini"
  fi
  log "starting PgBouncer on 127.0.0.1:$PGBOUNCER_PORT (transaction mode, max $POOL_MAX_SERVER_CONNECTIONS server connections)"
  wait_for PgBouncer 100 port_open "$PGBOUNCER_PORT"
}

start_redis() {
  pid_alive "$RUN_DIR/redis.pid" && return 0
  require_free_port "$REDIS_PORT" Redis REDIS_PORT
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" --dir "$STATE/redis" \
    --save '' --appendonly no --maxmemory 1gb --maxmemory-policy volatile-lru >/dev/null
  wait_for Redis 100 redis-cli -p "$REDIS_PORT" ping
}

# Platform layer: what hosted Supabase already has before any migration runs.
bootstrap_db() {
  psql_db -d postgres -c "alter database postgres set search_path to \"\$user\", public, extensions" \
    -c "create schema if not exists extensions" \
    -c "create extension if not exists pg_stat_statements with schema extensions" \
    -c "create extension if not exists pg_cron with schema pg_catalog" \
    -c "create extension if not exists postgis with schema extensions" \
    -c "create extension if not exists pgtap with schema extensions" >/dev/null
  # Hosted Supabase has pg_cron in pg_catalog (its objects are in schema cron either way). A
  # cluster bootstrapped before that had it in public, which Supabase's advisors flag
  # (extension_in_public); pg_cron cannot be relocated, and re-creating it would drop the jobs.
  psql_db -d postgres -c "update pg_catalog.pg_extension set extnamespace = 'pg_catalog'::regnamespace
    where extname = 'pg_cron' and extnamespace = 'public'::regnamespace" >/dev/null
  psql_db -d postgres -f "$ROOT/supabase/bootstrap.sql" >/dev/null
}

functions_env() {
  export SUPABASE_URL="$API_URL" SUPABASE_ANON_KEY="$ANON_KEY" SUPABASE_SERVICE_ROLE_KEY="$SERVICE_ROLE_KEY"
  export SUPABASE_DB_URL="$FUNCTIONS_POOLER_URL" SUPABASE_JWT_SECRET="$JWT_SECRET" REDIS_URL PRESENCE_WEBHOOK_SECRET
  # Reads that may lag by a second go to the replica's pool (db.ts, docs/replica.md).
  export SLTR_DB_REPLICA_URL="$FUNCTIONS_REPLICA_POOLER_URL"
  # The local stand-ins for platform services (Realtime's authorization, the PostgREST gateway,
  # the demo) connect as the platform does, not as the functions' role.
  export REALTIME_DB_URL="$POOLER_URL" SLTR_GATEWAY_DB_URL="$POOLER_URL"
  export FUNCTIONS_PORT REALTIME_PORT
  # The local Realtime endpoint runs in a process of its own (realtime/main.ts, loopback only);
  # the functions' workers relay /realtime/v1 to it. Database broadcasts by logical
  # replication need a direct connection (a pooler cannot replicate).
  export SLTR_REALTIME_UPSTREAM="http://127.0.0.1:$REALTIME_PORT"
  export REALTIME_REPLICATION_DB_URL="$DB_URL"
  # The demo page at /demo/ and its local sign-in (never outside the local stack).
  export SLTR_DEMO=true
  # One functions worker per core (deno serve --parallel), as the Edge Runtime runs many
  # isolates; SLTR_WORKERS lets one /metrics scrape sum them all.
  export DENO_JOBS="$FUNCTIONS_WORKERS" SLTR_WORKERS="$FUNCTIONS_WORKERS"
}

# FUNCTIONS_WORKERS: from the environment (e.g. 1 to compare), else one per core.
FUNCTIONS_WORKERS="${FUNCTIONS_WORKERS:-$(nproc)}"
serve_cmd=("$NODE_BIN/deno" serve --parallel --host 127.0.0.1 --port "$FUNCTIONS_PORT"
  --allow-net --allow-env --allow-read --allow-sys "$ROOT/functions/_serve/serve.ts")
realtime_cmd=("$NODE_BIN/deno" run --allow-net --allow-env --allow-read --allow-sys "$ROOT/realtime/main.ts")

start_realtime() {
  pid_alive "$RUN_DIR/realtime.pid" && return 0
  require_free_port "$REALTIME_PORT" "Realtime endpoint" REALTIME_PORT
  functions_env
  log "starting the Realtime endpoint (127.0.0.1:$REALTIME_PORT, relayed at ${API_URL/http/ws}/realtime/v1)"
  (cd "$ROOT" && exec nohup "${realtime_cmd[@]}" >>"$LOG_DIR/realtime.log" 2>&1) &
  echo $! >"$RUN_DIR/realtime.pid"
  wait_for "the Realtime endpoint" 150 port_open "$REALTIME_PORT"
}

# The per-user limits the functions run with: production's unless SLTR_STACK_PROFILE=suites.
limits_fingerprint() {
  echo "${SLTR_QUOTA_NEARBY:-}|${SLTR_QUOTA_STATUS:-}|${SLTR_QUOTA_SELF_REPORT:-}|${SLTR_NEARBY_MAX_PROBE_KM:-}"
}

start_functions() {
  if pid_alive "$RUN_DIR/functions.pid"; then
    [ "$(cat "$RUN_DIR/functions.limits" 2>/dev/null)" = "$(limits_fingerprint)" ] && return 0
    log "the functions run with other per-user limits (profile ${SLTR_STACK_PROFILE:-production} asked): restarting them"
    stop_one functions "$RUN_DIR/functions.pid"
  fi
  limits_fingerprint >"$RUN_DIR/functions.limits"
  require_free_port "$FUNCTIONS_PORT" "edge functions" FUNCTIONS_PORT
  functions_env
  log "serving functions on $FUNCTIONS_URL ($FUNCTIONS_WORKERS workers)"
  (cd "$ROOT" && exec nohup "${serve_cmd[@]}" >>"$LOG_DIR/functions.log" 2>&1) &
  echo $! >"$RUN_DIR/functions.pid"
  wait_for "the functions server" 150 curl -fsS "$FUNCTIONS_URL/health"
}

bridge_env() {
  export SUPABASE_URL="$API_URL" SUPABASE_SERVICE_ROLE_KEY="$SERVICE_ROLE_KEY" PRESENCE_WEBHOOK_SECRET
  export BRIDGE_HEALTH_PORT BRIDGE_HEALTH_HOST=127.0.0.1
}

bridge_cmd=("$NODE_BIN/deno" run --allow-net --allow-env "$ROOT/workers/presence-bridge/main.ts")

# The presence bridge against the local Realtime endpoint; `wait` = until it has joined.
start_bridge() {
  pid_alive "$RUN_DIR/bridge.pid" && return 0
  require_free_port "$BRIDGE_HEALTH_PORT" "presence bridge health" BRIDGE_HEALTH_PORT
  bridge_env
  log "starting the presence bridge (Realtime at $API_URL/realtime/v1, health on 127.0.0.1:$BRIDGE_HEALTH_PORT)"
  (cd "$ROOT" && exec nohup "${bridge_cmd[@]}" >>"$LOG_DIR/bridge.log" 2>&1) &
  echo $! >"$RUN_DIR/bridge.pid"
  if [ "${1:-}" = wait ]; then
    wait_for "the presence bridge" 150 curl -fsS "http://127.0.0.1:$BRIDGE_HEALTH_PORT/health"
  fi
}

# The demo driver (make dev): seed users coming and going through the real Realtime path.
start_demo() {
  pid_alive "$RUN_DIR/demo.pid" && return 0
  log "starting the demo driver (seed users 101-300 come and go; page at $API_URL/demo/)"
  (cd "$ROOT" && exec nohup "$NODE_BIN/deno" run -A "$ROOT/demo/driver.ts" >>"$LOG_DIR/demo.log" 2>&1) &
  echo $! >"$RUN_DIR/demo.pid"
}

stop_one() {
  local name=$1 pidfile=$2
  if pid_alive "$pidfile"; then
    log "stopping $name"
    kill "$(head -n1 "$pidfile")" 2>/dev/null || true
    for _ in $(seq 50); do pid_alive "$pidfile" || break; sleep 0.1; done
    # `deno serve` drains open keep-alive connections on SIGTERM and may never end; a server
    # left behind would go on answering beside its successor (the port is shared: reusePort).
    if pid_alive "$pidfile"; then
      log "$name did not stop within 5 s: killing it"
      kill -9 "$(head -n1 "$pidfile")" 2>/dev/null || true
      for _ in $(seq 20); do pid_alive "$pidfile" || break; sleep 0.1; done
    fi
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start|db)
    prepare_dirs
    init_postgres
    start_postgres
    start_replica
    start_pgbouncer
    start_redis
    bootstrap_db
    "$ROOT/scripts/db.sh" migrate
    # The functions' role gets its login here, as the platform would give it (docs/deploy.md).
    echo "alter role sltr_functions login password :'pw'" |
      psql_db -d postgres -v pw="$FUNCTIONS_DB_PASSWORD" >/dev/null
    psql_db -d postgres -f "$ROOT/seed.sql" >/dev/null
    if [ "$1" = start ]; then
      start_realtime
      start_functions
      start_bridge wait
    fi
    log "ready: $FUNCTIONS_URL, Realtime at ${API_URL/http/ws}/realtime/v1 (make status for URLs and keys)"
    ;;
  functions)
    prepare_dirs
    start_realtime
    functions_env
    require_free_port "$FUNCTIONS_PORT" "edge functions" FUNCTIONS_PORT
    log "serving functions on $FUNCTIONS_URL and Realtime on ${API_URL/http/ws}/realtime/v1 (Ctrl-C stops them; make stop stops the rest)"
    cd "$ROOT" && exec "${serve_cmd[@]}"
    ;;
  bridge)
    prepare_dirs
    start_bridge
    ;;
  demo)
    prepare_dirs
    start_demo
    ;;
  restart-functions)
    stop_one functions "$RUN_DIR/functions.pid"
    stop_one "Realtime endpoint" "$RUN_DIR/realtime.pid"
    prepare_dirs
    start_realtime
    start_functions
    ;;
  stop)
    stop_one "demo driver" "$RUN_DIR/demo.pid"
    stop_one "presence bridge" "$RUN_DIR/bridge.pid"
    stop_one functions "$RUN_DIR/functions.pid"
    stop_one "Realtime endpoint" "$RUN_DIR/realtime.pid"
    stop_one Redis "$RUN_DIR/redis.pid"
    stop_one PgBouncer "$RUN_DIR/pgbouncer.pid"
    stop_replica
    if [ -f "$PGDATA_DIR/PG_VERSION" ] && as_db "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
      log "stopping Postgres"
      as_db "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
    fi
    ;;
  status)
    cat <<ENV
API_URL=$API_URL
FUNCTIONS_URL=$FUNCTIONS_URL
REALTIME_URL=${API_URL/http/ws}/realtime/v1
DB_URL=$DB_URL
POOLER_URL=$POOLER_URL
REPLICA_DB_URL=$REPLICA_DB_URL
REPLICA_POOLER_URL=$REPLICA_POOLER_URL
REDIS_URL=$REDIS_URL
JWT_SECRET=$JWT_SECRET
ANON_KEY=$ANON_KEY
SERVICE_ROLE_KEY=$SERVICE_ROLE_KEY
PRESENCE_WEBHOOK_SECRET=$PRESENCE_WEBHOOK_SECRET
ENV
    running() { if "$@" >/dev/null 2>&1; then echo running; else echo stopped; fi; }
    echo "POSTGRES_STATUS=$(running port_open "$PG_PORT")"
    echo "REPLICA_STATUS=$(running psql_replica_streaming)"
    echo "PGBOUNCER_STATUS=$(running port_open "$PGBOUNCER_PORT")"
    echo "REDIS_STATUS=$(running port_open "$REDIS_PORT")"
    echo "FUNCTIONS_STATUS=$(running curl -fsS "$FUNCTIONS_URL/health")"
    echo "BRIDGE_STATUS=$(running curl -fsS "http://127.0.0.1:$BRIDGE_HEALTH_PORT/health")"
    echo "DEMO_STATUS=$(running pid_alive "$RUN_DIR/demo.pid")"
    echo "DEMO_URL=$API_URL/demo/"
    ;;
  replica-stop)
    stop_replica
    ;;
  replica-start)
    start_replica
    ;;
  *) die "usage: $0 start|stop|status|functions|bridge|demo|restart-functions|replica-stop|replica-start" ;;
esac
