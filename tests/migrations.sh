#!/usr/bin/env bash
# Migration test (TAP): on a scratch database with the platform layer and the Supabase
# bootstrap, for every migration up -> down -> up leaves a byte-identical schema, rolling
# back everything leaves nothing of ours, data survives the v4 rollback, dbmate applies
# and rolls back the composed files, and a failing migration changes nothing.
. "$(dirname "$0")/../scripts/lib.sh"

TEST_DB=sltr_migration_test
URL="postgresql://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${PG_PORT}/$TEST_DB"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

n=0
failures=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failures=$((failures + 1)); echo "not ok $n - $1"; }
check() { local what=$1; shift; if "$@" >"$WORK/out" 2>&1; then ok "$what"; else not_ok "$what"; sed 's/^/# /' "$WORK/out" | head -40; fi; }

q() { psql_db -d "$TEST_DB" "$@"; }
dump() { pg_dump --schema-only --restrict-key=sltr "$URL" >"$1"; }
same() { diff -u "$1" "$2"; }
apply() { q -1 -f "$1" >/dev/null; }

fresh_db() {
  psql_db -d postgres -c "drop database if exists $TEST_DB with (force)" -c "create database $TEST_DB" >/dev/null
  q -c "alter database $TEST_DB set search_path to \"\$user\", public, extensions" \
    -c "create schema if not exists extensions" \
    -c "create extension if not exists postgis with schema extensions" >/dev/null
  q -f "$ROOT/supabase/bootstrap.sql" >/dev/null
}

mapfile -t migrations < <(cd "$ROOT/migrations" && ls -1 ./*.sql | sed 's|^\./||')
echo "1..$(( ${#migrations[@]} * 2 + 11 ))"

fresh_db
dump "$WORK/base.sql"

# Up, down, up, one migration at a time.
prev="$WORK/base.sql"
for m in "${migrations[@]}"; do
  apply "$ROOT/migrations/$m"
  dump "$WORK/up1.sql"
  apply "$ROOT/rollbacks/$m"
  dump "$WORK/down.sql"
  check "$m: the rollback restores the schema it started from" same "$prev" "$WORK/down.sql"
  apply "$ROOT/migrations/$m"
  dump "$WORK/up2.sql"
  check "$m: up, down, up leaves a byte-identical schema" same "$WORK/up1.sql" "$WORK/up2.sql"
  cp "$WORK/up2.sql" "$WORK/after-$m"
  prev="$WORK/after-$m"
done

# Rolling back everything, newest first, leaves nothing of ours.
for (( i=${#migrations[@]}-1; i>=0; i-- )); do apply "$ROOT/rollbacks/${migrations[i]}"; done
dump "$WORK/all-down.sql"
check "rolling back every migration leaves the bootstrap schema only" same "$WORK/base.sql" "$WORK/all-down.sql"

# Data survives the v4 rollback (online <-> is_online).
v4=$(printf '%s\n' "${migrations[@]}" | grep -m1 standardize_columns)
for m in "${migrations[@]}"; do apply "$ROOT/migrations/$m"; [ "$m" = "$v4" ] && break; done
q -c "insert into auth.users (id, email) values ('00000000-0000-4000-a000-000000000001', 'keep@sltr.test'), ('00000000-0000-4000-a000-000000000002', 'off@sltr.test')" \
  -c "insert into public.profiles (id, display_name, is_online, latitude, longitude) values
      ('00000000-0000-4000-a000-000000000001', 'keep', true, 52.5, 13.4),
      ('00000000-0000-4000-a000-000000000002', 'off', false, null, null)" >/dev/null
apply "$ROOT/rollbacks/$v4"
check "the v4 rollback keeps every profile's online flag" \
  test "$(q -tAc "select string_agg(display_name || '=' || online, ',' order by display_name) from public.profiles")" = "keep=true,off=false"
apply "$ROOT/migrations/$v4"
check "re-applying v4 carries the flag into is_online" \
  test "$(q -tAc "select string_agg(display_name || '=' || is_online, ',' order by display_name) from public.profiles")" = "keep=true,off=false"

# dbmate over the composed files, with the tracking table shared with the Supabase CLI.
fresh_db
dbm() { DATABASE_URL="$URL" "$ROOT/scripts/db.sh" "$@"; }
check "dbmate applies every migration" dbm migrate
check "dbmate records them in supabase_migrations.schema_migrations" \
  test "$(q -tAc "select count(*) from supabase_migrations.schema_migrations")" = "${#migrations[@]}"
for _ in "${migrations[@]}"; do dbm rollback >/dev/null; done
dump "$WORK/dbmate-down.sql"
check "dbmate rolls every migration back to the bootstrap schema" same "$WORK/base.sql" "$WORK/dbmate-down.sql"

# A failing migration leaves the database as before it and names itself.
dbm migrate >/dev/null
dump "$WORK/before-fail.sql"
mkdir -p "$WORK/bad"
"$ROOT/scripts/db.sh" compose "$WORK/bad"
printf -- '-- migrate:up\ncreate table public.half_done (id int);\nselect 1/0;\n-- migrate:down\ndrop table public.half_done;\n' \
  >"$WORK/bad/29991231000000_broken.sql"
if "$NODE_BIN/dbmate" --url "$URL?sslmode=disable" --migrations-dir "$WORK/bad" \
  --migrations-table supabase_migrations.schema_migrations --no-dump-schema migrate >"$WORK/fail.log" 2>&1; then
  not_ok "a failing migration is reported as failed"
else
  dump "$WORK/after-fail.sql"
  if grep -q 29991231000000_broken "$WORK/fail.log" && same "$WORK/before-fail.sql" "$WORK/after-fail.sql" >/dev/null; then
    ok "a failing migration names itself and leaves the schema as it was"
  else
    not_ok "a failing migration names itself and leaves the schema as it was"; sed 's/^/# /' "$WORK/fail.log"
  fi
fi

# The deploy path: the Supabase CLI pushes migrations/ (through supabase/migrations) to a fresh
# database, and dbmate (make db-status) agrees that everything is applied.
fresh_db
check "supabase db push --db-url applies every migration to a fresh database" \
  env DO_NOT_TRACK=1 "$NODE_BIN/supabase" db push --workdir "$ROOT" --db-url "$URL?sslmode=disable" --include-all --yes
check "make db-status agrees: all applied, none pending" \
  bash -c "DATABASE_URL='$URL' '$ROOT/scripts/db.sh' status | grep -q 'Applied: ${#migrations[@]}' &&
           DATABASE_URL='$URL' '$ROOT/scripts/db.sh' status | grep -q 'Pending: 0'"

# dbmate turns TLS off for the local stack only: a remote database keeps it.
check "dbmate gets sslmode=disable for a loopback database" \
  test "$("$ROOT/scripts/db.sh" dbmate-url postgresql://u:p@127.0.0.1:54322/postgres)" = \
  "postgresql://u:p@127.0.0.1:54322/postgres?sslmode=disable"
check "a remote database keeps TLS (no sslmode added) and a given sslmode is kept" \
  test "$("$ROOT/scripts/db.sh" dbmate-url postgresql://u:p@db.ref.supabase.co:5432/postgres)
$("$ROOT/scripts/db.sh" dbmate-url 'postgresql://u:p@localhost/postgres?sslmode=require')" = \
  "postgresql://u:p@db.ref.supabase.co:5432/postgres
postgresql://u:p@localhost/postgres?sslmode=require"

psql_db -d postgres -c "drop database if exists $TEST_DB with (force)" >/dev/null
[ "$failures" -eq 0 ]
