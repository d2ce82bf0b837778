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

# The URL dbmate gets: sslmode=disable only for the local stack on loopback (it has no TLS);
# any other host keeps TLS (dbmate's default, or whatever sslmode the URL already names).
dbmate_url() {
  local url=$1 hostport host
  hostport=${url#*://}
  hostport=${hostport#*@}
  hostport=${hostport%%/*}
  if [[ $hostport == \[* ]]; then host=${hostport#[}; host=${host%%]*}; else host=${hostport%:*}; fi
  if [[ $url != *sslmode=* ]] && [[ $host == 127.0.0.1 || $host == localhost || $host == ::1 ]]; then
    [[ $url == *\?* ]] && url="$url&sslmode=disable" || url="$url?sslmode=disable"
  fi
  echo "$url"
}

dbmate() {
  local dir="$STATE/dbmate"
  compose "$dir"
  "$NODE_BIN/dbmate" --url "$(dbmate_url "$URL")" --migrations-dir "$dir" \
    --migrations-table supabase_migrations.schema_migrations --no-dump-schema "$@"
}

case "${1:-}" in
  migrate) dbmate --wait migrate ;;
  rollback) dbmate rollback ;;
  status) dbmate status ;;
  compose) compose "$2" ;;
  dbmate-url) dbmate_url "$2" ;;
  *) die "usage: $0 migrate|rollback|status|compose DIR|dbmate-url URL" ;;
esac
