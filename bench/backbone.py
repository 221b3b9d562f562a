"""Backbone benchmark: outbox -> Kafka publish rate and consume -> apply rate (events/s), with the
raw aiokafka produce and consume rates measured in the same run beside them.

    make bench              (or)   .venv/bin/python bench/backbone.py --events 50000
Needs Kafka and PostgreSQL: uses OPSLEDGER_TEST_KAFKA / OPSLEDGER_TEST_POSTGRES (what `make test`
starts), creating its own database and topic prefix."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.consumer import ConsumerSpec, Delivery, EventConsumer
from opsledger.bus.outbox import Outbox, OutboxRelay
from opsledger.bus.producer import make_producer
from opsledger.bus.topics import ensure_topics
from opsledger.db import backbone_metadata, make_engine, make_sessionmaker
from opsledger.events import EventPayload, Stream, event, new_event
from opsledger.settings import ServiceSettings
from opsledger.testing import TestInfra


@event("BenchTicked", 1, Stream.INCIDENTS)
class BenchTicked(EventPayload):
    n: int
    note: str


metadata = sa.MetaData()
applied = sa.Table(
    "bench_applied",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("n", sa.Integer),
)


async def apply_batch(session: AsyncSession, deliveries: list[Delivery]) -> None:
    rows = [{"event_id": d.envelope.event_id, "n": d.envelope.payload["n"]} for d in deliveries]
    if rows:
        await session.execute(sa.insert(applied), rows)


async def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def raw_produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    for i in range(0, len(values), 1000):
        futures = [await producer.send(topic, v, key=k) for k, v in values[i : i + 1000]]
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await producer.stop()
    return elapsed


async def raw_consume(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    started, seen = time.perf_counter(), 0
    while seen < count:
        batch = await consumer.getmany(timeout_ms=500, max_records=5000)
        seen += sum(len(v) for v in batch.values())
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return elapsed


async def main(events: int) -> None:
    infra = TestInfra.from_env()
    prefix, db = infra.unique("bench"), infra.unique("bench_")
    settings = ServiceSettings(
        service_name="bench",
        database_url=await infra.create_database(db),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=prefix,
        relay_batch_size=1000,
        consumer_batch_size=1000,
    )
    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(backbone_metadata.create_all)
            await conn.run_sync(metadata.create_all)
        await ensure_topics(settings, [settings.topic(Stream.INCIDENTS), settings.deadletter_topic, f"{prefix}.raw"])
        incidents = [uuid.uuid4() for _ in range(1000)]
        envelopes = [
            new_event(
                BenchTicked(n=i, note="x" * 200), producer="bench", actor="bench", incident_id=incidents[i % 1000]
            )
            for i in range(events)
        ]
        sessions, outbox = make_sessionmaker(engine), Outbox(settings)
        staged = time.perf_counter()
        for i in range(0, events, 1000):
            async with sessions() as session, session.begin():
                await outbox.add(session, envelopes[i : i + 1000])
        stage_s = time.perf_counter() - staged

        producer = make_producer(settings)
        await producer.start()
        relay = OutboxRelay(settings, sessions, producer, outbox)
        started = time.perf_counter()
        while await relay.publish_batch():
            pass
        relay_s = time.perf_counter() - started

        raw_s = await raw_produce(infra.kafka_bootstrap, f"{prefix}.raw", [(e.key, e.to_bytes()) for e in envelopes])
        raw_consume_s = await raw_consume(infra.kafka_bootstrap, settings.topic(Stream.INCIDENTS), events)

        spec = ConsumerSpec(name="bench", topics=[settings.topic(Stream.INCIDENTS)], batch_handler=apply_batch)
        consumer = EventConsumer(spec, settings, sessions, producer)
        await consumer.start()
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(consumer.run(stop))
        while True:
            async with engine.connect() as conn:
                done = await conn.scalar(sa.select(sa.func.count()).select_from(applied))
            if done >= events:
                break
            await asyncio.sleep(0.05)
        apply_s = time.perf_counter() - started
        stop.set()
        await task
        await consumer.stop()
        await producer.stop()

        print(f"backbone benchmark: {events} events of {len(envelopes[0].to_bytes())} bytes, 1000 incidents")
        print(f"{'stage':<42}{'events/s':>12}{'seconds':>10}")
        for name, secs in [
            ("outbox insert (1000 per transaction)", stage_s),
            ("outbox -> Kafka (relay, acks=all)", relay_s),
            ("raw aiokafka produce (idempotent)", raw_s),
            ("raw aiokafka consume", raw_consume_s),
            ("consume -> apply (inbox + batch tx)", apply_s),
        ]:
            print(f"{name:<42}{events / secs:>12,.0f}{secs:>10.2f}")
    finally:
        await engine.dispose()
        await infra.drop_database(db)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    asyncio.run(main(parser.parse_args().events))
