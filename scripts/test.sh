#!/usr/bin/env bash
# Every suite, against the real local stack (started here if it is not running).
#   test.sh all | lint | db | migrations | deno [deno test args...] | faults | fuzz
. "$(dirname "$0")/lib.sh"

failed=()
passed=()
suite() {
  local name=$1; shift
  log "suite: $name"
  if "$@"; then passed+=("$name"); else failed+=("$name"); log "suite $name FAILED"; fi
}

lint() {
  "$NODE_BIN/squawk" "$ROOT"/migrations/*.sql
  local dirs=()
  for d in functions realtime tests bench client workers examples scripts demo; do [ -d "$ROOT/$d" ] && dirs+=("$d"); done
  (cd "$ROOT" && "$NODE_BIN/deno" lint -q && "$NODE_BIN/deno" fmt --check -q && "$NODE_BIN/deno" check -q "${dirs[@]}")
}

db_tests() {
  psql_db -d postgres -f "$ROOT/tests/db/_helpers.sql" >/dev/null
  (cd "$ROOT" && PGPASSWORD="$POSTGRES_PASSWORD" pg_prove -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    --ext .sql tests/db/*.test.sql)
}

migration_tests() {
  (cd "$ROOT" && prove --exec bash tests/stack.sh tests/migrations.sh)
}

deno_tests() {
  (cd "$ROOT" && export_app_env && "$NODE_BIN/deno" test -A --no-check=remote "$@")
}

# Fault injection (tests/faults) and fuzzing (tests/fuzz) start throwaway stacks of their own
# (temporary state dir, free ports) and are suites of their own, outside the main Deno run.
SELF_CONTAINED=tests/faults,tests/fuzz
fault_tests() { deno_tests tests/faults/; }
fuzz_tests() { deno_tests tests/fuzz/; }

case "${1:-all}" in
  lint) lint ;;
  db) "$ROOT/scripts/stack.sh" start >/dev/null && db_tests ;;
  migrations) "$ROOT/scripts/stack.sh" db >/dev/null && migration_tests ;;
  deno) shift; "$ROOT/scripts/stack.sh" start >/dev/null && deno_tests "$@" ;;
  faults) fault_tests ;;
  fuzz) fuzz_tests ;;
  all)
    started=$(date +%s)
    suite lint lint
    "$ROOT/scripts/stack.sh" start
    suite pgtap db_tests
    suite migrations migration_tests
    suite deno deno_tests --ignore="$SELF_CONTAINED"
    suite faults fault_tests
    suite fuzz fuzz_tests
    log "finished in $(( $(date +%s) - started )) s"
    echo "suites: ${#passed[@]} passed, ${#failed[@]} failed"
    [ ${#failed[@]} -eq 0 ] || { log "failed suites: ${failed[*]}"; exit 1; }
    ;;
  *) die "usage: $0 all|lint|db|migrations|deno|faults|fuzz" ;;
esac
