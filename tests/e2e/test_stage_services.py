"""The later-stage services (assignment, sla, resolution) each start on their own database, become
ready, and follow the incident log: an IncidentLogged on the topic reaches their own tables."""

from __future__ import annotations

import importlib
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from opsledger.events import Stream, new_event
from opsledger.events.intake import IncidentLogged
from opsledger.testing import TestInfra, eventually, running_app

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("service", ["assignment", "sla", "resolution"])
async def test_service_starts_and_follows_the_incident_log(
    service: str, infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    app_module = importlib.import_module(f"{service}.app")
    store = importlib.import_module(f"{service}.store")
    settings = importlib.import_module(f"{service}.settings").Settings(
        database_url=await make_database(), kafka_bootstrap=infra.kafka_bootstrap, topic_prefix=topic_prefix
    )
    now = datetime.now(UTC)
    logged = new_event(
        IncidentLogged(
            source="generic", occurred_at=now, received_at=now, title="api 5xx", severity="high", dedup_key="k"
        ),
        producer="intake",
        actor="integration:test",
        incident_id=uuid.uuid4(),
    )
    app = app_module.build(settings)
    async with running_app(app) as client:
        assert (await client.get("/healthz")).json()["service"] == service
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
        await producer.start()
        await producer.send_and_wait(settings.topic(Stream.INCIDENTS), logged.to_bytes(), key=logged.key)
        await producer.stop()

        table = store.incidents if service == "resolution" else store.known_incidents  # what it knows of incidents

        async def seen() -> list[Any]:
            async with app.state.runtime.engine.connect() as conn:
                return list((await conn.execute(sa.select(table))).all())

        rows = await eventually(seen, what=f"{service} applied IncidentLogged")
        assert [r.incident_id for r in rows] == [logged.incident_id]
