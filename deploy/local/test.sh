#!/usr/bin/env bash
# make test: lint, types, then every test against a real Kafka and PostgreSQL of its own
# (ports 19092 and 15432, data under .local/test), stopped afterwards if this script started them.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$REPO"
TEST_DIR=$STATE_DIR/test
export PG_PORT=${TEST_PG_PORT:-15432} KAFKA_PORT=${TEST_KAFKA_PORT:-19092}
export PG_DIR=$TEST_DIR/postgres KAFKA_DIR=$TEST_DIR/kafka

echo "== ruff"  # two commands: under set -e, a failure on the left of && would not stop the run
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy shared/ and every service"
.venv/bin/mypy shared/opsledger $(for s in "${SERVICES[@]}"; do echo "services/$s/$s"; done)

started=()
cleanup() {
  for what in "${started[@]}"; do "$REPO/deploy/local/$what.sh" stop || true; done
}
trap cleanup EXIT
deploy/local/postgres.sh status 2>/dev/null || { deploy/local/postgres.sh start; started+=(postgres); }
# A broker this script starts starts empty: every run's topics have names of their own, and a
# day of runs left tens of thousands of partitions behind, until the broker ran out of file
# descriptors and a run hung. (One already running is the developer's: left as it is.)
deploy/local/kafka.sh status >/dev/null 2>&1 || { rm -rf "$KAFKA_DIR/data"; deploy/local/kafka.sh start; started+=(kafka); }

export OPSLEDGER_TEST_KAFKA=127.0.0.1:$KAFKA_PORT OPSLEDGER_TEST_POSTGRES=postgresql://opsledger@127.0.0.1:$PG_PORT
echo "== pytest"
.venv/bin/pytest -q -p no:randomly --durations=10 "$@"
