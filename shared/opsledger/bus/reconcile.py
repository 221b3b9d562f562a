"""Start-up reconciliation of the outbox against the log, run by every service before its relay,
so a crash between the relay's publish and its "mark sent" commit does not put a second copy of
an event on the log.

The relay publishes the oldest unsent rows in id order with an idempotent producer, so only the
first `relay_batch_size` unsent rows can be on the log unmarked. Before the relay starts, each
partition those rows' topics have is read backwards until one of this service's events that is
not a candidate turns up (everything of ours before it was marked sent); candidates seen on the
way are marked sent. Bounded in records and time: if the bound is hit, the rest is left to the
relay (a duplicate then is absorbed by the consumers' inboxes, as before). Events are recognised
as "ours" by the envelope's `producer`, which must be the service name."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from opsledger.bus.outbox import RELAY_LEASE
from opsledger.db import outbox_table
from opsledger.lease import Lease
from opsledger.settings import ServiceSettings

log = logging.getLogger(__name__)

CHUNK = 500
MAX_SCANNED_PER_PARTITION = 50_000


async def reconcile_outbox(settings: ServiceSettings) -> int:
    """Mark unsent outbox rows that are already on the log as sent; returns how many."""
    engine = create_async_engine(settings.database_url, poolclass=sa.pool.NullPool)
    lease = Lease(RELAY_LEASE, settings.relay_lease_seconds)
    # The lease may still name this service's previous process, killed (the case this is for):
    # wait for it to expire. One that stays held belongs to another replica's live relay, which
    # is publishing these rows itself: nothing to do then.
    deadline = asyncio.get_running_loop().time() + settings.relay_lease_seconds + 1
    try:
        while True:
            async with engine.begin() as conn:
                exists = await conn.scalar(sa.select(sa.func.to_regclass("outbox")))
                if exists is None:
                    return 0  # first start: not migrated yet, nothing was ever published
                # Held by this transaction while scanning, and given up at its end for the relay.
                if await lease.acquire(conn):
                    return await _reconcile(conn, settings, lease)
            if asyncio.get_running_loop().time() > deadline:
                log.info("outbox reconciliation skipped: another replica's relay holds the lease")
                return 0
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


async def _reconcile(conn: AsyncConnection, settings: ServiceSettings, lease: Lease) -> int:
    try:
        rows = (
            await conn.execute(
                sa.select(outbox_table.c.event_id, outbox_table.c.topic)
                .where(outbox_table.c.sent_at.is_(None))
                .order_by(outbox_table.c.id)
                .limit(settings.relay_batch_size)
            )
        ).all()
        if not rows:
            return 0
        found = await _on_the_log(settings, {str(r.event_id) for r in rows}, sorted({r.topic for r in rows}))
        if found:
            await conn.execute(
                sa.update(outbox_table)
                .where(outbox_table.c.event_id.in_([uuid.UUID(e) for e in found]))
                .values(sent_at=sa.func.now())
            )
            log.info("outbox reconciliation: %d event(s) were already on the log; marked sent", len(found))
        return len(found)
    finally:
        await lease.release(conn)


async def _on_the_log(settings: ServiceSettings, candidates: set[str], topics: Sequence[str]) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    found: set[str] = set()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return found
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            await _scan_back(consumer, tp, ends[tp], candidates, settings.service_name, found)
    finally:
        await consumer.stop()
    return found


async def _scan_back(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, candidates: set[str], producer: str, found: set[str]
) -> None:
    upper = end
    while upper > 0 and end - upper < MAX_SCANNED_PER_PARTITION:
        lower = max(0, upper - CHUNK)
        consumer.seek(tp, lower)
        chunk: list[ConsumerRecord] = []
        while not chunk or chunk[-1].offset < upper - 1:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records = batch.get(tp, [])
            if not records:
                break
            chunk.extend(r for r in records if r.offset < upper)
        for record in reversed(chunk):
            try:
                head = orjson.loads(record.value)
                event_id, who = str(head["event_id"]), head.get("producer")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if event_id in candidates:
                found.add(event_id)
            elif who == producer:
                return  # an older event of ours that was marked sent: nothing unmarked before it
        upper = lower


async def reconcile_quietly(settings: ServiceSettings, timeout: float = 30.0) -> None:
    try:
        await asyncio.wait_for(reconcile_outbox(settings), timeout)
    except Exception as exc:  # never block the start: the relay's at-least-once still holds
        log.warning("outbox reconciliation skipped: %r", exc)
