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


def test_the_log_and_the_databases_live_in_named_volumes() -> None:
    """`docker compose down && up` keeps the log (the source of truth) and the databases: each is
    written where a named volume is mounted, not inside the container."""
    named = set(COMPOSE.get("volumes") or {})
    kafka = COMPOSE["services"]["kafka"]
    mounts = dict(v.split(":", 1) for v in kafka["volumes"])
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(mounts.get(volume) == log_dirs for volume in named), f"{log_dirs} is not a named volume's mount"
    postgres = COMPOSE["services"]["postgres"]
    data = postgres.get("environment", {}).get("PGDATA", "/var/lib/postgresql/data")
    pg_mounts = dict(v.split(":", 1) for v in postgres["volumes"] if ":" in v)
    assert any(data.startswith(pg_mounts.get(volume, "\0")) for volume in named), "PostgreSQL data not in a volume"


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


INTERPOLATION = re.compile(r"^\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<rest>.*))?\}$", re.S)


def interpolated(value: str) -> tuple[str, str | None, str]:
    """`${NAME:-default}` / `${NAME:?message}` as (NAME, operator, default or message)."""
    match = INTERPOLATION.match(value)
    assert match, f"{value!r} is not taken from the environment"
    return match["name"], match["op"], match["rest"] or ""


@pytest.mark.parametrize("service", SERVICES)
def test_people_are_verified_with_keys_from_the_environment_and_no_default_that_works(service: str) -> None:
    env = COMPOSE["services"][service]["environment"]
    assert not {"OPSLEDGER_ADMIN_TOKEN", "OPSLEDGER_ANALYST_TOKEN"} & set(env), "the static shared tokens are gone"
    # The issuer and audience must be given: compose refuses to start without them.
    for name in ("OPSLEDGER_AUTH_ISSUER", "OPSLEDGER_AUTH_AUDIENCE"):
        assert interpolated(env[name])[:2] == (name, ":?"), env[name]
    # The JWKS URL and the public key come from the environment, with an empty default only.
    for name in ("OPSLEDGER_AUTH_JWKS_URL", "OPSLEDGER_AUTH_PUBLIC_KEY"):
        assert interpolated(env[name]) == (name, ":-", ""), env[name]
    # Every credential-like variable defaults to nothing.
    for name, value in env.items():
        if any(word in name for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")) and "$" in str(value):
            assert interpolated(value)[2] == "" or interpolated(value)[1] == ":?", f"{name} has a default: {value}"
    # With those defaults the service trusts no token: empty means unset, and the algorithms parse.
    algorithms = interpolated(env["OPSLEDGER_AUTH_ALGORITHMS"])[2]
    settings = settings_of(service)(
        auth_issuer="https://issuer.example", auth_audience="opsledger", auth_jwks_url="", auth_public_key="",
        auth_algorithms=algorithms, auth_roles_claim=interpolated(env["OPSLEDGER_AUTH_ROLES_CLAIM"])[2],
    )  # fmt: skip
    assert settings.auth_jwks_url is None and settings.auth_public_key is None
    assert all(not a.startswith("HS") for a in settings.auth_algorithms)


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_ship_inside_the_service_package(service: str) -> None:
    """The image installs each service as a plain package: its migrations must be package data."""
    package = ROOT / "services" / service / service
    assert (package / "migrations" / "env.py").exists()
    assert list((package / "migrations" / "versions").glob("0001_*.py"))
    assert package / "migrations" == importlib.import_module(f"{service}.app").MIGRATIONS
    pyproject = (ROOT / "services" / service / "pyproject.toml").read_text()
    assert '"migrations/*.py"' in pyproject and '"migrations/versions/*.py"' in pyproject
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    assert f"pip install --no-deps ./services/{service}" in dockerfile
