#!/usr/bin/env bash
# make down: stop the services and the mail catcher, then the Kafka and PostgreSQL that `make up`
# started. Idempotent.
set -euo pipefail
source "$(dirname "$0")/common.sh"
for s in "${SERVICES[@]}"; do stop_pid_file "$STATE_DIR/run/$s.pid" "$s"; done
stop_pid_file "$STATE_DIR/run/devmail.pid" devmail
if [ -f "$STATE_DIR/run/kafka.started" ]; then
  KAFKA_DIR=${KAFKA_DIR:-$STATE_DIR/kafka} "$REPO/deploy/local/kafka.sh" stop
  rm -f "$STATE_DIR/run/kafka.started"
fi
if [ -f "$STATE_DIR/run/postgres.started" ]; then
  PG_DIR=${PG_DIR:-$STATE_DIR/postgres} "$REPO/deploy/local/postgres.sh" stop
  rm -f "$STATE_DIR/run/postgres.started"
fi
echo "OpsLedger is down."
