#!/usr/bin/env bash
# Installs what the local stack and the test suites need, idempotently:
# Debian packages (Postgres 15 extensions, PgBouncer, Redis, pg_prove) and `npm ci`.
. "$(dirname "$0")/lib.sh"

APT_PACKAGES=(
  postgresql-15 postgresql-client-15 postgresql-15-cron postgresql-15-postgis-3
  postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl pgbouncer redis-server curl
  chromium
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  is_root || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # The packages' maintainer scripts try to start system services; we run our own.
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef "${missing[@]}" >/dev/null
fi

# npm ci only when the lock changed since the last install.
stamp="$ROOT/node_modules/.sltr-lock"
if [ ! -f "$stamp" ] || ! cmp -s "$ROOT/package-lock.json" "$stamp"; then
  log "npm ci"
  (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$ROOT/package-lock.json" "$stamp"
fi
