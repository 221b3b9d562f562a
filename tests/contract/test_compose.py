"""docker-compose.yml and the Dockerfile agree with the services' settings (no Docker engine
here, so the file itself is checked: services, ports, environment, health, build targets)."""

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["intake", "triage", "assignment", "sla", "resolution", "reporting"]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def settings_of(service: str) -> type:
    return importlib.import_module(f"{service}.settings").Settings  # type: ignore[no-any-return]


def test_compose_runs_kafka_postgres_and_every_service() -> None:
    assert set(COMPOSE["services"]) == {"kafka", "postgres", *SERVICES}


def test_kafka_image_is_the_version_run_locally() -> None:
    script = (ROOT / "deploy/local/kafka.sh").read_text()
    match = re.search(r'KAFKA_VERSION=\$\{KAFKA_VERSION:-([0-9.]+)\}|KAFKA_VERSION="?([0-9.]+)"?', script)
    assert match, "kafka.sh pins no KAFKA_VERSION"
    local_version = match.group(1) or match.group(2)
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{local_version}"
    assert COMPOSE["services"]["kafka"]["environment"]["KAFKA_LOG_RETENTION_MS"] == "-1"


@pytest.mark.parametrize("service", SERVICES)
def test_service_matches_its_settings(service: str) -> None:
    spec = COMPOSE["services"][service]
    settings_cls = settings_of(service)
    defaults = settings_cls()
    env = spec["environment"]
    known = {f"OPSLEDGER_{name.upper()}" for name in settings_cls.model_fields}
    unknown = sorted(set(env) - known)
    assert not unknown, f"{service}: environment variables its settings do not read: {unknown}"
    assert env["OPSLEDGER_SERVICE_NAME"] == service == defaults.service_name
    assert int(env["OPSLEDGER_PORT"]) == defaults.port
    assert spec["ports"] == [f"{defaults.port}:{defaults.port}"]
    assert env["OPSLEDGER_DATABASE_URL"].endswith(f"@postgres:5432/opsledger_{service}")
    assert env["OPSLEDGER_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert spec["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert "/readyz" in " ".join(spec["healthcheck"]["test"]) and str(defaults.port) in " ".join(
        spec["healthcheck"]["test"]
    )
    assert spec["build"]["target"] == service


def test_dockerfile_has_a_target_per_service_and_databases_exist() -> None:
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    created = (ROOT / "deploy/docker/create-databases.sql").read_text()
    for service in SERVICES:
        assert re.search(rf"^FROM base AS {service}$", dockerfile, re.M), f"no build target {service}"
        assert f'CMD ["python", "-m", "{service}"]' in dockerfile
        assert f"CREATE DATABASE opsledger_{service};" in created
