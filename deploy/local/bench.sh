#!/usr/bin/env bash
# make bench: every benchmark under bench/, against the test Kafka and PostgreSQL (started if needed).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$REPO"
export PG_PORT=${TEST_PG_PORT:-15432} KAFKA_PORT=${TEST_KAFKA_PORT:-19092}
export PG_DIR=$STATE_DIR/test/postgres KAFKA_DIR=$STATE_DIR/test/kafka
deploy/local/postgres.sh status 2>/dev/null || deploy/local/postgres.sh start
deploy/local/kafka.sh status >/dev/null 2>&1 || deploy/local/kafka.sh start
export OPSLEDGER_TEST_KAFKA=127.0.0.1:$KAFKA_PORT OPSLEDGER_TEST_POSTGRES=postgresql://opsledger@127.0.0.1:$PG_PORT
for b in bench/*.py; do echo "== $b"; "$PY" "$b"; done
