"""A minimal service on the shared backbone, used by the backbone tests: `Ticked` events are
written through the outbox and applied downstream to a counter table (one row per event id)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from opsledger.bus.outbox import Outbox, OutboxRelay
from opsledger.bus.producer import make_producer
from opsledger.db import backbone_metadata, make_engine, make_sessionmaker, outbox_table
from opsledger.events import Envelope, EventPayload, Stream, event, new_event, registry
from opsledger.settings import ServiceSettings

if not registry.knows("Ticked"):

    @event("Ticked", 1, Stream.INCIDENTS)
    class Ticked(EventPayload):
        n: int


Ticked = registry.model("Ticked")  # type: ignore[misc]

metadata = sa.MetaData()
applied = sa.Table(
    "applied",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
)


async def create_tables(settings: ServiceSettings) -> None:
    engine = make_engine(settings)
    async with engine.begin() as conn:
        await conn.run_sync(backbone_metadata.create_all)
        await conn.run_sync(metadata.create_all)
    await engine.dispose()


async def apply_tick(session: AsyncSession, envelope: Envelope, payload: EventPayload | None) -> None:
    """Not idempotent on its own (plain insert): duplicates are caught only by the inbox."""
    assert payload is not None
    if getattr(payload, "n", 0) < 0:
        raise ValueError("negative tick is poison")
    await session.execute(sa.insert(applied).values(event_id=envelope.event_id, n=payload.n))  # type: ignore[attr-defined]


def tick(n: int, incident: str) -> Envelope:
    import uuid

    return new_event(Ticked(n=n), producer="test", actor="test", incident_id=uuid.UUID(incident))


class DiesBeforePublish(OutboxRelay):
    """Dies by SIGKILL with the rows committed and read, before anything reaches Kafka."""

    async def _publish(self, rows: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class DiesAfterPublish(OutboxRelay):
    """Dies by SIGKILL right after Kafka acknowledged the batch but before the rows are marked
    sent: the next relay publishes the batch a second time."""

    async def _publish(self, rows: Any) -> None:
        await super()._publish(rows)
        os.kill(os.getpid(), signal.SIGKILL)


RELAYS: dict[str, type[OutboxRelay]] = {
    "relay": OutboxRelay,
    "relay-die-before-publish": DiesBeforePublish,
    "relay-die-after-publish": DiesAfterPublish,
}


async def unsent(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
        )
        return int(count or 0)


async def run_relay(settings: ServiceSettings, mode: str) -> None:
    engine = make_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    relay = RELAYS[mode](settings, make_sessionmaker(engine), producer, Outbox(settings))
    # Until the outbox is drained: a relay killed before may still hold the lease for a while.
    while await relay.publish_batch() or await unsent(engine):  # noqa: ASYNC110 (polls the database)
        await asyncio.sleep(0.1)
    await relay.release()
    await producer.stop()
    await engine.dispose()


if __name__ == "__main__":
    # python backbone_app.py <mode from RELAYS>  (settings from OPSLEDGER_* env)
    asyncio.run(run_relay(ServiceSettings(), sys.argv[1]))
