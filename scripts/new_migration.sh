#!/usr/bin/env bash
# make migration NAME=<what_it_does>: a new migration and its rollback, from the house template
# (lock_timeout, statement_timeout), timestamped now (UTC). See migrations/README.md.
. "$(dirname "$0")/lib.sh"

name=${1:-}
[[ $name =~ ^[a-z][a-z0-9_]*$ ]] || die "usage: make migration NAME=<lower_snake_case>, got '${name}'"
# Now, or one second after the latest migration when that one is dated later (append-only:
# a new migration always sorts last).
version=$(date -u +%Y%m%d%H%M%S)
latest=$(cd "$ROOT/migrations" && ls -1 ./*.sql | sed 's|^\./||' | tail -n 1)
latest_version=${latest%%_*}
if [[ ! "$version" > "$latest_version" ]]; then
  version=$(date -u -d "$(sed -E 's/(....)(..)(..)(..)(..)(..)/\1-\2-\3 \4:\5:\6/' <<<"$latest_version") UTC + 1 second" +%Y%m%d%H%M%S)
fi
file="${version}_${name}.sql"
for dir in migrations rollbacks; do
  [ -e "$ROOT/$dir/$file" ] && die "$dir/$file exists"
done

cat >"$ROOT/migrations/$file" <<SQL
-- ${name//_/ }: what this migration changes and why (one paragraph; the table in
-- migrations/README.md gets a line too).
set local lock_timeout = '5s';
set local statement_timeout = '5min';

SQL
cat >"$ROOT/rollbacks/$file" <<SQL
-- Undo ${file%.sql}: back to the schema before it, keeping the data.
set local lock_timeout = '5s';
set local statement_timeout = '5min';

SQL
log "wrote migrations/$file and rollbacks/$file"
