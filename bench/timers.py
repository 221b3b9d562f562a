"""Durable timer benchmark: 100,000 pending timers, 10,000 of them falling due within the same
second. Prints the fire lag (due time -> the firing transaction committed, events in the outbox)
p50/p99/max, timers fired per second, and the runner process's CPU while idle and while firing.

    make bench              (or)   .venv/bin/python bench/timers.py --pending 100000 --due 10000
Needs PostgreSQL: uses OPSLEDGER_TEST_POSTGRES (what `make test` starts), creating its own database."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from opsledger import migrations
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.db import after_commit, make_engine, make_sessionmaker
from opsledger.events import EventPayload, Stream, event, new_event
from opsledger.settings import ServiceSettings
from opsledger.testing import TestInfra
from opsledger.timers import FiredTimer, Timer, TimerRunner, schedule_many

MIGRATIONS = Path(__file__).resolve().parent.parent / "shared" / "tests" / "sample_migrations"


@event("BenchTimerFired", 1, Stream.INCIDENTS)
class BenchTimerFired(EventPayload):
    key: str
    due_at: datetime
    fired_at: datetime


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(pending: int, due: int, lead: float, idle_seconds: float) -> None:
    infra = TestInfra.from_env()
    name = infra.unique("bench_timers_")
    url = await infra.create_database(name)
    settings = ServiceSettings(service_name="bench-timers", database_url=url)
    await migrations.upgrade_async(MIGRATIONS, url)
    engine = make_engine(settings)
    sessionmaker = make_sessionmaker(engine)
    outbox = Outbox(settings)
    lags: list[float] = []

    async def fire(session: AsyncSession, timers: list[FiredTimer]) -> None:
        # What a stage does: one event per timer, ids derived from the timer, staged in the outbox.
        events = [
            new_event(
                BenchTimerFired(key=t.key, due_at=t.due_at, fired_at=t.fired_at),
                producer="bench",
                actor="system:bench",
                subject=t.key,
                event_id=t.event_id("BenchTimerFired"),
            )
            for t in timers
        ]
        await outbox.add(session, events)
        dues = [t.due_at for t in timers]
        after_commit(session, lambda: lags.extend((datetime.now(UTC) - d).total_seconds() for d in dues))

    try:
        started = time.perf_counter()
        far = datetime.now(UTC) + timedelta(days=1)
        async with sessionmaker() as session, session.begin():
            for chunk in range(0, pending - due, 10_000):
                items = [
                    Timer(f"bench:far:{i}", far + timedelta(seconds=i))
                    for i in range(chunk, min(chunk + 10_000, pending - due))
                ]
                await schedule_many(session, items)
        print(f"scheduled {pending - due:,} far-future timers in {time.perf_counter() - started:.1f} s")

        runner = TimerRunner("bench", sessionmaker, {"bench": fire}, Clock(), batch_size=500)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))

        # Idle: 90,000 pending, nothing due for a day.
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(idle_seconds)
        idle_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)

        print(f"pending timers: {pending:,}; batch 500; 2 cores shared with PostgreSQL")
        idle = f"{idle_cpu * 100:.2f} % of one core over {idle_seconds:.0f} s"
        print(f"runner CPU while idle: {idle} ({pending - due:,} pending, none due)")
        # Two shapes of "10,000 fall due in the same second": spread over that second, and all at
        # one instant (the burst shows the raw firing rate). Scheduled from another transaction
        # of this process `lead` seconds ahead, the way a stage schedules them.
        for shape in ("spread over one second", "all at one instant"):
            lags.clear()
            second = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead + 1)
            offsets = [random.randrange(1_000_000) if shape.startswith("spread") else 0 for _ in range(due)]
            soon = [Timer(f"bench:{shape[:3]}:{i}", second + timedelta(microseconds=o)) for i, o in enumerate(offsets)]
            async with sessionmaker() as session, session.begin():
                await schedule_many(session, soon)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            while len(lags) < due and time.perf_counter() < wall1 + lead + 60:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            firing_cpu, firing_wall = time.process_time() - cpu1, time.perf_counter() - wall1
            spread = (max(t.due_at for t in soon) - second).total_seconds() + max(lags)
            print(f"{due:,} due {shape}: fired {len(lags):,}")
            print(
                f"  fire lag (due -> committed with its event): p50 {statistics.median(lags) * 1000:.0f} ms,"
                f" p99 {pct(lags, 99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
            )
            print(f"  {len(lags) / spread:,.0f} timers/s (first due -> last committed: {spread:.2f} s)")
            print(f"  runner CPU {firing_cpu:.2f} s over {firing_wall:.1f} s (includes the wait until due)")
        stop.set()
        await task
    finally:
        await engine.dispose()
        await infra.drop_database(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--lead", type=float, default=2.0, help="seconds between scheduling and falling due")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to measure idle CPU")
    args = parser.parse_args()
    asyncio.run(main(args.pending, args.due, args.lead, args.idle))
