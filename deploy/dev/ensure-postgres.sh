#!/usr/bin/env bash
# Prints a Postgres URL the tests can create databases on. Uses the server on 127.0.0.1:5432 when it
# accepts the postgres user without a password (as on the CI machines); otherwise starts a private server
# (trust auth, loopback only) under the cache directory. Fails loudly when neither works.
set -euo pipefail
cache="${KEYMESH_CACHE:-$HOME/.cache/keymesh}"
if psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  echo "postgres://postgres@127.0.0.1:5432/postgres"; exit 0
fi
# A server that is installed but stopped (as after a reboot): start it.
if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql/*/main >/dev/null 2>&1; then
  ver=$(ls /etc/postgresql | head -n1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start >/dev/null 2>&1 || true
  for _ in $(seq 1 20); do
    psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1 \
      && { echo "postgres://postgres@127.0.0.1:5432/postgres"; exit 0; }
    sleep 0.5
  done
fi
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$bin" ] || { echo "ensure-postgres: no PostgreSQL found; run deploy/dev/install-deps.sh test" >&2; exit 1; }
port=55432
dir="$cache/postgres"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # initdb refuses to run as root; the postgres user cannot enter /root, so the cluster lives elsewhere.
  as_pg=(runuser -u postgres --)
  dir=/var/tmp/keymesh-postgres
fi
if ! "${as_pg[@]}" "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  mkdir -p "$cache"
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"; if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
    "${as_pg[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
  fi
  "${as_pg[@]}" "$bin/pg_ctl" -D "$dir" -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" -l "$dir/server.log" -w start >/dev/null
fi
psql -w -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'select 1' >/dev/null \
  || { echo "ensure-postgres: the private server on port $port does not answer; see $dir/server.log" >&2; exit 1; }
echo "postgres://postgres@127.0.0.1:$port/postgres"
