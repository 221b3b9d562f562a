"""A service whose database or broker is unreachable at start stays up, reports not-ready with the
reason, keeps retrying with a bounded wait, and becomes ready once the dependency is there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger.service import create_app
from opsledger.settings import ServiceSettings
from opsledger.testing import TestInfra, eventually
from opsledger.testing.helpers import free_port

pytestmark = pytest.mark.integration
MIGRATIONS = Path(__file__).parent / "sample_migrations"


async def not_ready_reason(client: httpx.AsyncClient, step: str) -> str:
    """The /readyz reason once it names `step` ("" before that)."""
    response = await client.get("/readyz")
    assert response.status_code == 503, "must not become ready"
    assert (await client.get("/healthz")).status_code == 200, "alive while not ready"
    reason = str(response.json()["reason"])
    return reason if reason.startswith(f"{step}:") else ""


async def test_missing_database_is_reported_then_picked_up(infra: TestInfra, topic_prefix: str) -> None:
    name = infra.unique("late_")
    settings = ServiceSettings(
        service_name="startup-test",
        database_url=infra.database_url(name),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        startup_retry_max_seconds=0.5,
    )
    app = create_app(settings, title="t", migrations_dir=MIGRATIONS)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            reason = await eventually(lambda: not_ready_reason(client, "database"), what="database failure reported")
            assert name in reason, reason
            await infra.create_database(name)
            try:
                response = await eventually(lambda: _ready(client), timeout=30, what="ready once the database exists")
                assert response.json()["status"] == "ready"
            finally:
                await infra.drop_database(name)


async def test_unreachable_kafka_is_reported(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = ServiceSettings(
        service_name="startup-test",
        database_url=await make_database(),
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        topic_prefix=topic_prefix,
        startup_retry_max_seconds=0.5,
    )
    app = create_app(settings, title="t", migrations_dir=MIGRATIONS)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            reason = await eventually(lambda: not_ready_reason(client, "kafka topics"), what="kafka failure reported")
            assert "KafkaConnectionError" in reason or "Unable to bootstrap" in reason, reason


async def _ready(client: httpx.AsyncClient) -> httpx.Response | None:
    response = await client.get("/readyz")
    return response if response.status_code == 200 else None
