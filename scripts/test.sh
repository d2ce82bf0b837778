#!/usr/bin/env bash
# Every suite, against the real local stack (started here if it is not running).
#   test.sh all | lint | db | advisors | deploy | migrations | deno [deno test args...] | faults | fuzz
# The suites drive thousands of requests per user: the stack's suites profile (supabase/suites.env).
export SLTR_STACK_PROFILE="${SLTR_STACK_PROFILE:-suites}"
. "$(dirname "$0")/lib.sh"

failed=()
passed=()
SUITE_LOGS="$STATE/log/suites"
# Each suite's output also goes to $SUITE_LOGS/<name>.log; the summary repeats a failed suite's
# errors at the end, where a CI log's tail shows them.
suite() {
  local name=$1; shift
  log "suite: $name"
  mkdir -p "$SUITE_LOGS"
  if "$@" 2>&1 | tee "$SUITE_LOGS/$name.log"; then
    passed+=("$name")
  else
    failed+=("$name"); log "suite $name FAILED"
  fi
}

# What a failed suite said went wrong: Deno's ERRORS section, else the suite's last lines.
suite_errors() {
  local plain
  plain=$(sed 's/\x1b\[[0-9;]*m//g' "$SUITE_LOGS/$1.log")
  if grep -q '^ ERRORS ' <<<"$plain"; then
    awk '/^ ERRORS /{p=1} /^ FAILURES /{p=0} p' <<<"$plain" | head -120
  else
    tail -40 <<<"$plain"
  fi
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

# Supabase's advisors (splinter's lints, as the Supabase CLI runs them) on the migrated local
# database: no error and no warning; each info-level lint must be explained in docs/advisors.md.
advisors() {
  local out="$STATE/advisors.json"
  DO_NOT_TRACK=1 "$NODE_BIN/supabase" db advisors --db-url "${DB_URL}?sslmode=disable" \
    --type all --level info -o json >"$out" 2>"$STATE/advisors.log" || { cat "$STATE/advisors.log"; return 1; }
  python3 - "$out" "$ROOT/docs/advisors.md" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
documented = open(sys.argv[2]).read()
bad = [f for f in findings if f["level"] != "INFO"]
undocumented = sorted({f["name"] for f in findings if f["level"] == "INFO" and f"`{f['name']}`" not in documented})
for f in findings:
    print(f"{f['level']:5} {f['name']}: {f['detail']}")
print(f"advisors: {len(findings)} findings, {len(bad)} errors or warnings, undocumented info lints: {undocumented or 'none'}")
sys.exit(1 if bad or undocumented else 0)
PY
}

# Deploys as written: every function entry point type-checks the way the hosted Edge Runtime
# resolves it, through functions/import_map.json (npm: specifiers fetched from the registry)
# with no node_modules at all. Its own DENO_DIR (kept in the state folder between runs).
deploy_check() {
  local entries=("$ROOT"/functions/[a-z]*/index.ts)
  (cd "$ROOT" && DENO_DIR="$STATE/deno-deploy-check" "$NODE_BIN/deno" check --quiet --no-config \
    --node-modules-dir=none --import-map functions/import_map.json "${entries[@]}") &&
    echo "deploy check: ${#entries[@]} entry points type-check with the import map and no node_modules"
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
  advisors) "$ROOT/scripts/stack.sh" db >/dev/null && advisors ;;
  deploy) deploy_check ;;
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
    suite advisors advisors
    suite deploy deploy_check
    suite deno deno_tests --ignore="$SELF_CONTAINED"
    suite faults fault_tests
    suite fuzz fuzz_tests
    log "finished in $(( $(date +%s) - started )) s"
    echo "suites: ${#passed[@]} passed, ${#failed[@]} failed"
    [ ${#failed[@]} -eq 0 ] && exit 0
    for name in "${failed[@]}"; do log "suite $name, what failed:"; suite_errors "$name"; done
    log "failed suites: ${failed[*]} (whole output in ${SUITE_LOGS#"$ROOT"/})"
    exit 1
    ;;
  *) die "usage: $0 all|lint|db|advisors|deploy|migrations|deno|faults|fuzz" ;;
esac
