#!/usr/bin/env bash
# A private, throwaway PostgreSQL server for the sweep tests: its own data folder, 127.0.0.1 only, a free
# port, trust authentication. Debian's `postgresql` package provides the binaries (.ci/run installs it).
#
#   url=$(.ci/postgres.sh start DIR)   # initdb + start in DIR (created), print postgresql://... on stdout
#   .ci/postgres.sh stop DIR           # stop the server and delete DIR
#
# PostgreSQL refuses to run as root, so as root (CI) the server runs as the `postgres` user via runuser.
set -euo pipefail

action=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/pg_ctl" ] || { echo "postgres.sh: no PostgreSQL in /usr/lib/postgresql (apt-get install postgresql)" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 700 "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  # listen on 127.0.0.1 only, the Unix socket inside DIR (not /var/run), no fsync: a test database
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=50" start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres densa_test
  echo "postgresql://postgres@127.0.0.1:$port/densa_test"
  ;;
stop)
  if [ -d "$dir/data" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: postgres.sh start|stop DIR" >&2
  exit 2
  ;;
esac
