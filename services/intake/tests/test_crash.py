"""Durable before 2xx: intake runs as a real process, is SIGKILLed right after answering, and
restarts; every acknowledged alert is on the log exactly once."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from opsledger.bus.outbox import Outbox
from opsledger.bus.producer import make_producer
from opsledger.db import make_engine, make_sessionmaker, outbox_table
from opsledger.events import new_event
from opsledger.events.intake import AlertFlapping
from opsledger.testing import ServiceProcess, TestInfra, eventually

from .harness import intake, make_settings, process_env, topic_events
from .samples import generic_alert

pytestmark = pytest.mark.integration
KEY = "crash-test-key-0123456789abcdef"


async def test_sigkill_after_2xx_loses_and_doubles_nothing(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    # The killed process's relay lease must expire before the restarted one publishes.
    env = process_env(infra, await make_database(), topic_prefix, KEY, relay_lease_seconds="1")
    process = ServiceProcess("intake", env)
    process.start()
    acknowledged: list[str] = []
    try:
        await process.wait_ready()
        async with httpx.AsyncClient(base_url=process.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            for i in range(20):
                response = await client.post("/v1/alerts", json=generic_alert(dedup_key=f"crash-{i}"))
                assert response.status_code == 202, response.text
                acknowledged.append(response.json()["incident_id"])
        process.kill(signal.SIGKILL)  # right after the last 2xx: the relay may not have published it
        process.start()
        await process.wait_ready()
        logged_topic = f"{topic_prefix}.incidents"
        events = await topic_events(infra.kafka_bootstrap, logged_topic, at_least=len(acknowledged))
    finally:
        process.kill(signal.SIGKILL)
    counts = Counter(str(e.incident_id) for e in events if e.event_type == "IncidentLogged")
    assert sorted(counts) == sorted(acknowledged), "every acknowledged alert is on the log"
    assert set(counts.values()) == {1}, f"no alert twice: {counts}"
    assert len({e.event_id for e in events}) == len(events)


async def test_events_published_but_not_marked_sent_are_not_published_again(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    """The crash window the SIGKILL test can only hit by chance: the relay published a batch and
    died before committing "sent". The restart must notice and not publish it a second time."""
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings):
        pass  # migrated, topics created
    events = [
        new_event(
            AlertFlapping(dedup_key=f"k{i}", transitions=7, window_seconds=60, since=datetime.now(UTC)),
            producer="intake",
            actor="system:test",
            incident_id=uuid.uuid4(),
        )
        for i in range(5)
    ]
    engine = make_engine(settings)
    outbox = Outbox(settings)
    async with make_sessionmaker(engine)() as session, session.begin():
        await outbox.add(session, events)
    producer = make_producer(settings)
    await producer.start()
    for e in events:  # what the relay did before it was killed
        await producer.send_and_wait(outbox.topic_for(e), e.to_bytes(), key=e.key)
    await producer.stop()
    async with intake(settings) as svc:

        async def all_marked() -> bool:
            async with engine.connect() as conn:
                unsent = await conn.scalar(
                    sa.select(sa.func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
                )
            return unsent == 0

        await eventually(all_marked, timeout=20, what="outbox drained")
        on_log = await svc.events(at_least=len(events))
    await engine.dispose()
    assert Counter(e.event_id for e in on_log) == {e.event_id: 1 for e in events}
