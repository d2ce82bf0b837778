#!/usr/bin/env bash
# Migrations with dbmate over the Supabase-CLI layout: each migrations/X is composed with
# rollbacks/X into one dbmate file (up and down sections). One tracking table,
# supabase_migrations.schema_migrations, shared with the Supabase CLI.
#   db.sh migrate | rollback | status | up-to VERSION | compose DIR
. "$(dirname "$0")/lib.sh"

URL="${DATABASE_URL:-$DB_URL}"

compose() {
  local out=$1
  rm -rf "$out"
  mkdir -p "$out"
  local m name
  for m in "$ROOT"/migrations/*.sql; do
    name=$(basename "$m")
    [ -f "$ROOT/rollbacks/$name" ] || die "migrations/$name has no rollback in rollbacks/$name"
    {
      echo "-- migrate:up"
      cat "$m"
      echo
      echo "-- migrate:down"
      cat "$ROOT/rollbacks/$name"
    } >"$out/$name"
  done
}

dbmate() {
  local dir="$STATE/dbmate"
  compose "$dir"
  "$NODE_BIN/dbmate" --url "${URL}?sslmode=disable" --migrations-dir "$dir" \
    --migrations-table supabase_migrations.schema_migrations --no-dump-schema "$@"
}

case "${1:-}" in
  migrate) dbmate --wait migrate ;;
  rollback) dbmate rollback ;;
  status) dbmate status ;;
  compose) compose "$2" ;;
  *) die "usage: $0 migrate|rollback|status|compose DIR" ;;
esac
