# OpsLedger: `make up` runs the platform, `make test` runs every check. See README.md.
SHELL := /bin/bash
PY := .venv/bin/python
SERVICES := intake triage assignment sla resolution reporting

.PHONY: help venv up down test unit lint format typecheck bench catalog rebuild-reporting clean

help:
	@echo "make up | down | test | unit | lint | format | typecheck | bench | catalog | rebuild-reporting | clean"

# The virtualenv is rebuilt when the pins or any package's metadata change. Debian ships venv
# support (ensurepip) in its own package, python3-venv: both are installed here when missing.
.venv/.installed: requirements.txt shared/pyproject.toml $(foreach s,$(SERVICES),services/$(s)/pyproject.toml)
	@command -v python3 >/dev/null && python3 -c 'import ensurepip' 2>/dev/null || { \
	  echo "installing python3 and python3-venv from Debian packages"; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null; }
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e shared $(foreach s,$(SERVICES),-e services/$(s))
	touch $@

venv: .venv/.installed

up: venv
	deploy/local/up.sh

down:
	deploy/local/down.sh

test: venv
	deploy/local/test.sh

# Fast feedback: unit tests only (no Kafka, no PostgreSQL).
unit: venv
	.venv/bin/pytest -q -m "not integration"

lint: venv
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: venv
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

typecheck: venv
	.venv/bin/mypy shared/opsledger $(foreach s,$(SERVICES),services/$(s)/$(s))

# Regenerate the checked-in event catalog (JSON Schema) and AsyncAPI document after changing an event schema.
catalog: venv
	$(PY) -m opsledger.events.catalog --write docs/events/catalog.json --asyncapi docs/events/asyncapi.yaml

# Replay the whole log into a new reporting projection version, then switch to it atomically.
rebuild-reporting: venv
	@test -f $${OPSLEDGER_STATE_DIR:-.local}/opsledger.env || { echo "nothing is up: run make up first"; exit 1; }
	set -a; . $${OPSLEDGER_STATE_DIR:-.local}/opsledger.env; set +a; \
	$(PY) -m reporting rebuild --url "$$OPSLEDGER_REPORTING_URL"

bench: venv
	deploy/local/bench.sh

clean: down
	rm -rf .local .venv
