"""A minimal timer user for the timer tests: firing a `demo:` timer records one row per firing
(plain insert, so a double firing would show as two rows) and stages one event whose id is derived
from the timer. Run as a script, it fires due timers and SIGKILLs itself inside its third batch,
before that batch commits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from opsledger import migrations
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.db import make_engine, make_sessionmaker
from opsledger.events import EventPayload, Stream, event, new_event, registry
from opsledger.settings import ServiceSettings
from opsledger.timers import FiredTimer, TimerHandler, TimerRunner

MIGRATIONS = Path(__file__).parent / "sample_migrations"

if not registry.knows("DemoTimerFired"):

    @event("DemoTimerFired", 1, Stream.INCIDENTS)
    class DemoTimerFired(EventPayload):
        key: str
        due_at: str
        fired_at: str


DemoTimerFired = registry.model("DemoTimerFired")  # type: ignore[misc]

metadata = sa.MetaData()
fired = sa.Table(
    "fired",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
)


async def prepare(settings: ServiceSettings) -> None:
    await migrations.upgrade_async(MIGRATIONS, settings.database_url)
    engine = make_engine(settings)
    await create_fired_table(engine)
    await engine.dispose()


async def create_fired_table(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


def recorder(outbox: Outbox, fail_keys: frozenset[str] = frozenset(), die_in_batch: int = 0) -> TimerHandler:
    batches = 0

    async def handle(session: AsyncSession, timers: list[FiredTimer]) -> None:
        nonlocal batches
        batches += 1
        rows, events = [], []
        for t in timers:
            if t.key in fail_keys:
                raise RuntimeError(f"{t.key} is poison")
            event_id = t.event_id("DemoTimerFired")
            rows.append({"key": t.key, "due_at": t.due_at, "fired_at": t.fired_at, "event_id": event_id})
            payload = DemoTimerFired(key=t.key, due_at=t.due_at.isoformat(), fired_at=t.fired_at.isoformat())
            events.append(
                new_event(payload, producer="timer-test", actor="system:test", subject=t.key, event_id=event_id)
            )
        await session.execute(sa.insert(fired), rows)
        await outbox.add(session, events)
        if batches == die_in_batch:
            os.kill(os.getpid(), signal.SIGKILL)  # inside the transaction, before it commits

    return handle


async def fire_until_killed(settings: ServiceSettings) -> None:
    engine = make_engine(settings)
    runner = TimerRunner(
        "timer-test",
        make_sessionmaker(engine),
        {"demo": recorder(Outbox(settings), die_in_batch=3)},
        Clock(),
        batch_size=50,
    )
    await runner.run_due()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(fire_until_killed(ServiceSettings()))
    sys.exit(0)
