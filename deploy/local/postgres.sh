#!/usr/bin/env bash
# Throwaway PostgreSQL cluster in a git-ignored project folder, no Docker, no system service.
#   deploy/local/postgres.sh start|stop|crash|status|createdb NAME...
# Env: PG_PORT (5432), PG_DIR (<repo>/.local/postgres), PG_USER (opsledger).
# PostgreSQL refuses to run as root, so as root the server runs as the unprivileged PG_OS_USER.
set -euo pipefail

REPO=$(readlink -f "$(dirname "$0")/../..")
PG_PORT=${PG_PORT:-5432}
PG_DIR=$(readlink -m "${PG_DIR:-$REPO/.local/postgres}")  # absolute: the owner walk below climbs to /
PG_USER=${PG_USER:-opsledger}
PG_OS_USER=${PG_OS_USER:-opsledger}
PG_START_TIMEOUT=${PG_START_TIMEOUT:-60}
DATA=$PG_DIR/data
LOG=$PG_DIR/postgres.log

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

ensure_installed() {
  if ! find_bindir >/dev/null; then
    echo "postgres.sh: installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  BIN=$(find_bindir)
}

# Runs a PostgreSQL binary as the cluster owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    # runuser keeps our environment minimal and needs no password; cd so the owner can read cwd.
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    "$@"
  fi
}

prepare_owner() {
  [ "$(id -u)" = 0 ] || return 0
  id -u "$PG_OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
  mkdir -p "$PG_DIR"
  chown "$PG_OS_USER" "$PG_DIR"
  # The owner must be able to reach PG_DIR through every parent folder.
  local p=$PG_DIR
  while [ "$p" != / ]; do p=$(dirname "$p"); chmod o+x "$p" 2>/dev/null || true; done
}

running() { [ -f "$DATA/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  ensure_installed
  mkdir -p "$PG_DIR"
  prepare_owner
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_owner "$BIN/initdb" -D "$DATA" -U "$PG_USER" --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
max_connections = 300
shared_buffers = 256MB
fsync = on
synchronous_commit = on
CONF
  fi
  if running; then
    echo "postgres: already running on port $PG_PORT"
  else
    # WAL: with the defaults (1 GB, 5 min) a storm of 200 alerts/s checkpointed every 22 s, and full
    # page images were half of the 205 kB of WAL an alert cost; with these it is half as much.
    # Given at every start, so a cluster made before them gets them too.
    wal="-c max_wal_size=4GB -c checkpoint_timeout=15min -c wal_compression=lz4"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -o "-p $PG_PORT $wal" -w -t "$PG_START_TIMEOUT" start >/dev/null || {
      echo "postgres: failed to start; last log lines:" >&2; tail -n 30 "$LOG" >&2; exit 1; }
    echo "postgres: started on 127.0.0.1:$PG_PORT (data $DATA, log $LOG)"
  fi
}

stop() {
  BIN=$(find_bindir) || return 0
  if running; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
    echo "postgres: stopped"
  fi
}

createdbs() {
  BIN=$(find_bindir)
  local db
  for db in "$@"; do
    if ! "$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
      "$BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$db"
    fi
  done
}

# Abrupt end, as a crash: every session cut at once, no checkpoint, crash recovery at the next
# start (fault tests). Unlike a SIGKILL of the postmaster it leaves no zombie holding the lock file.
crash() {
  BIN=$(find_bindir) || return 0
  if running; then as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate -w -t 60 stop >/dev/null; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  crash) crash ;;
  status) BIN=$(find_bindir) && running ;;
  createdb) shift; createdbs "$@" ;;
  *) echo "usage: $0 start|stop|crash|status|createdb NAME..." >&2; exit 2 ;;
esac
