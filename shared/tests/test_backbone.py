"""The backbone against the real Kafka and PostgreSQL: outbox -> relay -> Kafka -> consumer with
inbox, exactly-once effect through relay crashes, redelivery, poison messages, replay from 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from opsledger.bus.consumer import ConsumerSpec, EventConsumer, dead_letter_error
from opsledger.bus.outbox import Outbox, OutboxRelay
from opsledger.bus.producer import make_producer
from opsledger.bus.reconcile import reconcile_outbox
from opsledger.bus.topics import ensure_topics
from opsledger.db import make_engine, make_sessionmaker
from opsledger.events import Stream
from opsledger.settings import ServiceSettings
from opsledger.testing import TestInfra, eventually, read_topic

from . import backbone_app as app  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


async def make_settings(infra: TestInfra, make_database: Callable[..., Any], prefix: str) -> ServiceSettings:
    url = await make_database()
    settings = ServiceSettings(
        service_name="backbone-test",
        database_url=url,
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=prefix,
        topic_partitions=3,
        relay_poll_seconds=0.05,
    )
    await app.create_tables(settings)
    await ensure_topics(settings)
    return settings


async def stage_ticks(settings: ServiceSettings, count: int, incidents: int = 4) -> list[uuid.UUID]:
    engine = make_engine(settings)
    outbox = Outbox(settings)
    keys = [str(uuid.uuid4()) for _ in range(incidents)]
    ticks = [app.tick(i, keys[i % incidents]) for i in range(count)]
    async with make_sessionmaker(engine)() as session, session.begin():
        await outbox.add(session, ticks)
    await engine.dispose()
    return [t.event_id for t in ticks]


@contextlib.asynccontextmanager
async def consuming(settings: ServiceSettings, group: str | None = None) -> AsyncIterator[EventConsumer]:
    """Run the Ticked consumer (with inbox) against `settings`' database until the block ends."""
    engine = make_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    spec = ConsumerSpec(name="ticks", topics=[settings.topic(Stream.INCIDENTS)], handler=app.apply_tick, group_id=group)
    consumer = EventConsumer(spec, settings, make_sessionmaker(engine), producer)
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await consumer.stop()
        await producer.stop()
        await engine.dispose()


async def applied_rows(settings: ServiceSettings) -> list[tuple[uuid.UUID, int]]:
    engine = make_engine(settings)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(app.applied.c.event_id, app.applied.c.n))).all()
    await engine.dispose()
    return sorted((r.event_id, r.n) for r in rows)


async def applied_in_order(settings: ServiceSettings) -> list[int]:
    engine = make_engine(settings)
    async with engine.connect() as conn:
        ns = list((await conn.execute(sa.select(app.applied.c.n).order_by(app.applied.c.id))).scalars())
    await engine.dispose()
    return ns


def run_relay_process(settings: ServiceSettings, mode: str) -> int:
    env = {
        **os.environ,
        "OPSLEDGER_DATABASE_URL": settings.database_url,
        "OPSLEDGER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OPSLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "OPSLEDGER_SERVICE_NAME": "relay-process",
    }
    done = subprocess.run([sys.executable, str(HERE / "backbone_app.py"), mode], env=env, timeout=120, check=False)
    return done.returncode


async def topic_event_ids(settings: ServiceSettings, topic: str, expected: int) -> list[uuid.UUID]:
    records = await read_topic(settings.kafka_bootstrap, topic, until=lambda rs: len(rs) >= expected)
    return [uuid.UUID(orjson.loads(r.value)["event_id"]) for r in records]


async def test_outbox_events_reach_kafka_and_are_applied_once(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    ids = await stage_ticks(settings, 50)
    engine = make_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    relay = OutboxRelay(settings, make_sessionmaker(engine), producer, Outbox(settings))
    assert await relay.publish_batch() == 50
    assert await relay.publish_batch() == 0, "sent rows must not be published again"
    await producer.stop()
    await engine.dispose()

    on_wire = await topic_event_ids(settings, settings.topic(Stream.INCIDENTS), 50)
    assert sorted(on_wire) == sorted(ids)
    async with consuming(settings):
        rows = await eventually(lambda: _rows_if(settings, 50), what="50 ticks applied")
    assert sorted(r[0] for r in rows) == sorted(ids)


async def _rows_if(settings: ServiceSettings, count: int) -> list[tuple[uuid.UUID, int]] | None:
    rows = await applied_rows(settings)
    assert len(rows) <= count, f"applied {len(rows)} > {count}: an event took effect twice"
    return rows if len(rows) == count else None


async def test_relay_killed_after_publish_before_marking_sent_duplicates_wire_not_effect(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    ids = await stage_ticks(settings, 30)
    assert run_relay_process(settings, "relay-die-after-publish") == -9, "the relay should have died by SIGKILL"
    topic = settings.topic(Stream.INCIDENTS)
    assert sorted(await topic_event_ids(settings, topic, 30)) == sorted(ids)

    assert run_relay_process(settings, "relay") == 0
    on_wire = await topic_event_ids(settings, topic, 60)
    assert len(on_wire) == 60 and set(on_wire) == set(ids), "every event twice on the wire"

    async with consuming(settings):
        rows = await eventually(lambda: _rows_if(settings, 30), what="30 ticks applied")
        # The duplicates arrive too; give the consumer the chance to (wrongly) apply them.
        await eventually(lambda: _lag_zero(settings), what="consumer caught up")
        assert len(await applied_rows(settings)) == 30
    assert sorted(r[0] for r in rows) == sorted(ids)


async def _lag_zero(settings: ServiceSettings) -> bool:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    group = f"{settings.group_id}.ticks"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic(Stream.INCIDENTS)
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            committed = await consumer.committed(tp)
            if ends[tp] and (committed or 0) < ends[tp]:
                return False
        return True
    finally:
        await consumer.stop()


async def test_process_killed_between_commit_and_publish_loses_nothing(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    # The events are committed to the outbox; the relay reads them and is killed before publishing.
    ids = await stage_ticks(settings, 25)
    assert run_relay_process(settings, "relay-die-before-publish") == -9
    topic = settings.topic(Stream.INCIDENTS)
    assert await read_topic(settings.kafka_bootstrap, topic) == [], "nothing may be published yet"
    # A restarted relay finds the committed rows and publishes them.
    assert run_relay_process(settings, "relay") == 0
    assert sorted(await topic_event_ids(settings, topic, 25)) == sorted(ids)
    async with consuming(settings):
        rows = await eventually(lambda: _rows_if(settings, 25), what="25 ticks applied")
    assert sorted(r[0] for r in rows) == sorted(ids)


async def test_same_event_delivered_twice_is_applied_once(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    incident = str(uuid.uuid4())
    first, second = app.tick(1, incident), app.tick(2, incident)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    topic = settings.topic(Stream.INCIDENTS)
    for env in (first, first, second, first):
        await producer.send_and_wait(topic, env.to_bytes(), key=env.key)
    await producer.stop()
    async with consuming(settings):
        await eventually(lambda: _lag_zero(settings), what="consumer caught up")
    assert await applied_rows(settings) == sorted([(first.event_id, 1), (second.event_id, 2)])


async def test_poison_messages_go_to_dead_letter_topic_and_consumer_carries_on(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    incident = str(uuid.uuid4())
    good_before, failing, good_after = app.tick(1, incident), app.tick(-1, incident), app.tick(2, incident)
    bad_payload = {**orjson.loads(good_before.to_bytes()), "event_id": str(uuid.uuid4()), "payload": {"n": "many"}}
    unknown = {**orjson.loads(good_before.to_bytes()), "event_id": str(uuid.uuid4()), "event_type": "NoSuchEvent"}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    topic = settings.topic(Stream.INCIDENTS)
    key = incident.encode()
    for value in (
        good_before.to_bytes(),
        b"{not json",
        orjson.dumps(bad_payload),
        orjson.dumps(unknown),
        failing.to_bytes(),
        good_after.to_bytes(),
    ):
        await producer.send_and_wait(topic, value, key=key)
    await producer.stop()

    async with consuming(settings):
        await eventually(lambda: _rows_if(settings, 2), what="both good ticks applied")
    assert await applied_in_order(settings) == [1, 2], "applied in log order, the poison skipped"
    dead = await read_topic(settings.kafka_bootstrap, settings.deadletter_topic, until=lambda rs: len(rs) >= 4)
    errors = [dead_letter_error(r.headers) or "" for r in dead]
    assert len(dead) == 4
    assert "malformed envelope" in errors[0]
    assert "invalid payload" in errors[1] and "n" in errors[1]
    assert "unknown event" in errors[2] and "NoSuchEvent" in errors[2]
    assert "negative tick is poison" in errors[3]
    assert dead[3].value == failing.to_bytes(), "the dead letter carries the original message"


async def test_fresh_consumer_replays_from_offset_zero_into_the_same_state(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    await stage_ticks(settings, 40, incidents=7)
    engine = make_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    await OutboxRelay(settings, make_sessionmaker(engine), producer, Outbox(settings)).publish_batch()
    await producer.stop()
    await engine.dispose()
    async with consuming(settings):
        live = await eventually(lambda: _rows_if(settings, 40))

    rebuilt = settings.model_copy(update={"database_url": await make_database()})
    await app.create_tables(rebuilt)
    async with consuming(rebuilt, group=f"{topic_prefix}.rebuild"):
        replayed = await eventually(lambda: _rows_if(rebuilt, 40), what="replay from offset 0")
    assert replayed == live


async def test_reconciliation_at_start_keeps_a_crashed_batch_off_the_log_a_second_time(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    settings = settings.model_copy(update={"service_name": "test"})  # the producer name on the ticks
    ids = await stage_ticks(settings, 30)
    assert run_relay_process(settings, "relay-die-after-publish") == -9
    assert await reconcile_outbox(settings) == 30, "all 30 published events are found on the log"
    assert run_relay_process(settings, "relay") == 0
    topic = settings.topic(Stream.INCIDENTS)
    on_wire = await topic_event_ids(settings, topic, 30)
    assert sorted(on_wire) == sorted(ids), "each event exactly once on the log"
