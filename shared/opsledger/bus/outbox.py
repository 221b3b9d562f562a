"""Transactional outbox: events are written in the same DB transaction as the state they explain,
and a relay publishes them to Kafka in insertion order. A crash repeats a publish (the consumer's
inbox absorbs the duplicate) but never loses one. An event too large for its stream goes to the
dead-letter topic instead of holding back every event behind it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger import metrics
from opsledger.bus.deadletter import DeadLetter, send_dead_letters
from opsledger.bus.producer import Message, send_all
from opsledger.bus.topics import MAX_EVENT_BYTES
from opsledger.db import outbox_table
from opsledger.events.envelope import Envelope
from opsledger.events.registry import registry
from opsledger.settings import ServiceSettings

log = logging.getLogger(__name__)

# One relay per database publishes at a time, so a second replica cannot interleave (and so
# reorder) one incident's events. Transaction-scoped: released on commit, rollback or crash.
RELAY_LOCK_ID = zlib.crc32(b"opsledger.outbox.relay")


class EventTooLarge(ValueError):
    """An event larger than a stream takes: refused when staged, so the caller's transaction
    rolls back instead of committing an event that could never be published."""


class Outbox:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._wake = asyncio.Event()

    def topic_for(self, envelope: Envelope) -> str:
        return self.settings.topic(registry.model(envelope.event_type).stream)

    async def add(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """Stage events in the caller's transaction. An event id already staged is skipped, which
        is what makes re-deriving an event (same deterministic id) harmless."""
        if not envelopes:
            return
        rows = []
        for e in envelopes:
            value = e.to_bytes()
            if len(value) > MAX_EVENT_BYTES:
                raise EventTooLarge(f"{e.event_type} {e.event_id}: {len(value)} bytes, over {MAX_EVENT_BYTES}")
            rows.append({"event_id": e.event_id, "topic": self.topic_for(e), "key": e.key, "value": value})
        await session.execute(pg_insert(outbox_table).on_conflict_do_nothing(index_elements=["event_id"]), rows)

    def wake(self) -> None:
        """Tell the relay in this process there is something new (call after commit)."""
        self._wake.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()


class OutboxRelay:
    def __init__(
        self,
        settings: ServiceSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        producer: AIOKafkaProducer,
        outbox: Outbox,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.producer = producer
        self.outbox = outbox
        self._purge_countdown = 0

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                sent = await self.publish_batch()
                backoff = 0.1
            except Exception:
                log.exception("outbox relay: publish failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self.settings.relay_batch_size:
                await self.outbox.wait(self.settings.relay_poll_seconds)

    async def publish_batch(self) -> int:
        """Publish the oldest unsent rows and mark them sent; returns how many."""
        async with self.sessionmaker() as session, session.begin():
            if not await session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(RELAY_LOCK_ID))):
                return 0
            rows = (
                await session.execute(
                    sa.select(outbox_table.c.id, outbox_table.c.topic, outbox_table.c.key, outbox_table.c.value)
                    .where(outbox_table.c.sent_at.is_(None))
                    .order_by(outbox_table.c.id)
                    .limit(self.settings.relay_batch_size)
                )
            ).all()
            backlog_left = len(rows) == self.settings.relay_batch_size
            if rows:
                await self._publish(rows)
                metrics.EVENTS_PRODUCED.labels(self.settings.service_name).inc(len(rows))
                await self._mark_sent(session, [r.id for r in rows])
            await self._maybe_purge(session)
            if not backlog_left:
                metrics.OUTBOX_BACKLOG.labels(self.settings.service_name).set(0)
            return len(rows)

    async def _publish(self, rows: Sequence[Any]) -> None:
        """Publish `rows` (each on its topic, or on the dead-letter topic if too large for it);
        raises, so that nothing is marked sent, unless every one was acknowledged."""
        fit: list[Message] = []
        oversized: list[DeadLetter] = []
        for r in rows:
            if len(r.value) <= MAX_EVENT_BYTES:
                fit.append(Message(r.topic, r.value, r.key))
            else:
                # Only a row staged before Outbox.add checked sizes. It is never sent to its stream:
                # a message the broker refuses breaks the idempotent producer's sequence.
                error = f"{len(r.value)} bytes, over the {MAX_EVENT_BYTES} a stream takes"
                log.error("outbox relay: an event of %s goes to the dead-letter topic", error)
                oversized.append(DeadLetter(r.value, r.key, error, {"source.topic": r.topic}))
        await send_all(self.producer, fit)
        await send_dead_letters(self.producer, self.settings, oversized, "outbox-relay")

    async def _mark_sent(self, session: AsyncSession, ids: list[int]) -> None:
        await session.execute(sa.update(outbox_table).where(outbox_table.c.id.in_(ids)).values(sent_at=sa.func.now()))

    async def _maybe_purge(self, session: AsyncSession) -> None:
        # Sent rows are kept a day for inspection; purge now and then, not on every pass.
        self._purge_countdown -= 1
        if self._purge_countdown > 0:
            return
        self._purge_countdown = 500
        await session.execute(
            sa.delete(outbox_table).where(outbox_table.c.sent_at < sa.func.now() - sa.text("interval '1 day'"))
        )
        backlog = await session.scalar(
            sa.select(sa.func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
        )
        metrics.OUTBOX_BACKLOG.labels(self.settings.service_name).set(backlog or 0)
