# Shared settings and helpers for the local stack scripts. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${SLTR_STATE_DIR:-$ROOT/.state}"
RUN_DIR="$STATE/run"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PGDATA_DIR="$STATE/pg"
REPLICA_DIR="$STATE/pg-replica"
NODE_BIN="$ROOT/node_modules/.bin"

# Local defaults (committed, local-only); a variable already in the environment wins. With
# SLTR_STACK_PROFILE=suites (the test suites, the benchmarks), supabase/suites.env first.
load_env_file() {
  local key value
  while IFS='=' read -r key value; do
    case "$key" in ''|\#*) continue ;; esac
    [ -n "${!key:-}" ] || export "$key=$value"
  done <"$1"
}
[ "${SLTR_STACK_PROFILE:-}" = suites ] && load_env_file "$ROOT/supabase/suites.env"
load_env_file "$ROOT/supabase/local.env"

DB_URL="postgresql://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${PG_PORT}/postgres"
POOLER_URL="postgresql://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${PGBOUNCER_PORT}/postgres"
# What the edge functions connect as: their own role, through the pooler.
FUNCTIONS_POOLER_URL="postgresql://sltr_functions:${FUNCTIONS_DB_PASSWORD}@127.0.0.1:${PGBOUNCER_PORT}/postgres"
REPLICA_DB_URL="postgresql://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${REPLICA_PORT}/postgres"
REPLICA_POOLER_URL="postgresql://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${PGBOUNCER_PORT}/postgres_replica"
FUNCTIONS_REPLICA_POOLER_URL="postgresql://sltr_functions:${FUNCTIONS_DB_PASSWORD}@127.0.0.1:${PGBOUNCER_PORT}/postgres_replica"
REDIS_URL="redis://127.0.0.1:${REDIS_PORT}"
API_URL="http://127.0.0.1:${FUNCTIONS_PORT}"
FUNCTIONS_URL="$API_URL/functions/v1"
export DB_URL POOLER_URL FUNCTIONS_POOLER_URL REPLICA_DB_URL REPLICA_POOLER_URL FUNCTIONS_REPLICA_POOLER_URL REDIS_URL API_URL FUNCTIONS_URL DO_NOT_TRACK=1

log() { printf '\033[1m[sltr]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[sltr] error:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# Postgres and PgBouncer refuse to run as root: run them as the postgres system user then.
as_db() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

# Refuse to start a service on a port that somebody else holds, naming both.
require_free_port() {
  local port=$1 what=$2
  if port_open "$port"; then
    die "port $port ($what) is already in use by another process; stop it or change ${3:-the port} in supabase/local.env"
  fi
}

wait_for() {
  local what=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not become ready; see the logs in $STATE/log"
}

psql_db() { PGOPTIONS="-c client_min_messages=warning" PGPASSWORD="$POSTGRES_PASSWORD" psql -X -v ON_ERROR_STOP=1 -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

# The environment the Deno suites and benchmarks run in: the stack's URLs and keys under the
# names the functions and supabase-js code read.
export_app_env() {
  export SUPABASE_URL="$API_URL" SUPABASE_ANON_KEY="$ANON_KEY" SUPABASE_SERVICE_ROLE_KEY="$SERVICE_ROLE_KEY" \
    SUPABASE_DB_URL="$FUNCTIONS_POOLER_URL" REALTIME_DB_URL="$POOLER_URL" SLTR_GATEWAY_DB_URL="$POOLER_URL" \
    SUPABASE_JWT_SECRET="$JWT_SECRET" REDIS_URL \
    PRESENCE_WEBHOOK_SECRET SLTR_ROOT="$ROOT" DB_URL
}
