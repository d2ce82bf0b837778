#!/usr/bin/env bash
# The local stack's own behaviour (TAP): start is idempotent, status speaks env lines,
# a taken port is refused with a message naming it.
. "$(dirname "$0")/../scripts/lib.sh"

echo "1..5"
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); echo "not ok $n - $1"; failed=1; }
failed=0

pids() { cat "$RUN_DIR"/{pgbouncer,redis,functions,bridge}.pid "$PGDATA_DIR/postmaster.pid" 2>/dev/null | grep -E '^[0-9]+$' | sort; }

"$ROOT/scripts/stack.sh" start >/dev/null 2>&1
before=$(pids)
if "$ROOT/scripts/stack.sh" start >/dev/null 2>&1 && [ "$(pids)" = "$before" ] && [ -n "$before" ]; then
  ok "make start twice is harmless: same processes, exit 0"
else
  not_ok "make start twice is harmless: same processes, exit 0"
fi

status=$("$ROOT/scripts/stack.sh" status)
missing=""
for k in API_URL FUNCTIONS_URL REALTIME_URL DB_URL POOLER_URL REDIS_URL JWT_SECRET ANON_KEY SERVICE_ROLE_KEY PRESENCE_WEBHOOK_SECRET; do
  grep -qE "^$k=.+" <<<"$status" || missing+=" $k"
done
if [ -z "$missing" ]; then ok "make status prints every NAME=value line"; else not_ok "make status lacks:$missing"; fi
if grep -q '^POSTGRES_STATUS=running$' <<<"$status" && grep -q '^FUNCTIONS_STATUS=running$' <<<"$status" \
  && grep -q '^BRIDGE_STATUS=running$' <<<"$status" && grep -q "^REALTIME_URL=ws://127.0.0.1:$FUNCTIONS_PORT/realtime/v1$" <<<"$status"; then
  ok "make status reports the services running"
else
  not_ok "make status reports the services running"
fi

# A second stack whose Postgres port is taken (by our own Redis) must refuse, naming it.
tmp=$(mktemp -d)
chmod 755 "$tmp"
out=$(SLTR_STATE_DIR="$tmp/state" PG_PORT="$REDIS_PORT" PGBOUNCER_PORT=1 REDIS_PORT=1 FUNCTIONS_PORT=1 \
  "$ROOT/scripts/stack.sh" start 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ] && grep -q "port $REDIS_PORT (Postgres) is already in use" <<<"$out"; then
  ok "a taken port stops start with a message naming the port and the service"
else
  not_ok "a taken port stops start with a message naming the port and the service (rc=$rc)"; sed 's/^/# /' <<<"$out"
fi
if redis-cli -p "$REDIS_PORT" ping >/dev/null; then ok "the service holding the port is left alone"; else not_ok "the service holding the port is left alone"; fi
rm -rf "$tmp"
exit "$failed"
