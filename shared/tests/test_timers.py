"""Durable timers on the real PostgreSQL: scheduled in the caller's transaction, fired exactly once
in the transaction of the events they cause, across two replicas, a SIGKILL and downtime."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from opsledger import metrics, timers
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock, ManualClock
from opsledger.db import make_engine, make_sessionmaker, outbox_table
from opsledger.events import Envelope
from opsledger.service import create_app
from opsledger.settings import ServiceSettings
from opsledger.testing import TestInfra, eventually, running_app
from opsledger.timers import Timer, TimerRunner
from opsledger.uow import unit_of_work

from . import timer_app  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
async def settings(infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str) -> ServiceSettings:
    s = ServiceSettings(
        service_name="timer-test", database_url=await make_database(), kafka_bootstrap=infra.kafka_bootstrap
    )
    await timer_app.prepare(s)
    return s


@pytest.fixture
async def engine(settings: ServiceSettings) -> AsyncIterator[AsyncEngine]:
    e = make_engine(settings)
    yield e
    await e.dispose()


def runner(engine: AsyncEngine, settings: ServiceSettings, clock: Clock, **kw: Any) -> TimerRunner:
    handler = timer_app.recorder(Outbox(settings), **kw)
    return TimerRunner("timer-test", make_sessionmaker(engine), {"demo": handler}, clock, batch_size=50)


async def fired_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(sa.select(timer_app.fired).order_by(timer_app.fired.c.id)))


async def outbox_events(engine: AsyncEngine) -> list[Envelope]:
    async with engine.connect() as conn:
        values = (await conn.execute(sa.select(outbox_table.c.value).order_by(outbox_table.c.id))).scalars()
        return [Envelope.from_bytes(v) for v in values]


async def schedule(engine: AsyncEngine, settings: ServiceSettings, items: list[Timer]) -> None:
    async with unit_of_work(make_sessionmaker(engine), Outbox(settings), Clock()) as uow:
        uow.schedule(*items)


async def test_nothing_is_scheduled_when_the_caller_rolls_back(engine: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with make_sessionmaker(engine)() as session, session.begin():
            await timers.schedule(session, "demo:a", T0)
            raise RuntimeError("the caller's work failed")
    async with make_sessionmaker(engine)() as session:
        assert await timers.pending(session) == {}


async def test_a_key_is_unique_rescheduling_replaces_and_cancel_removes(
    engine: AsyncEngine, settings: ServiceSettings
) -> None:
    await schedule(engine, settings, [Timer("demo:a", T0), Timer("demo:b", T0)])
    await schedule(engine, settings, [Timer("demo:a", T0 + timedelta(hours=1), {"v": 2})])
    async with make_sessionmaker(engine)() as session, session.begin():
        await timers.cancel(session, "demo:b", "demo:unknown")
    async with make_sessionmaker(engine)() as session:
        assert await timers.pending(session) == {"demo:a": T0 + timedelta(hours=1)}
    clock = ManualClock(T0 + timedelta(minutes=59))
    r = runner(engine, settings, clock)
    assert await r.run_due(clock.now()) == 0
    clock.advance(timedelta(minutes=1))
    assert await r.run_due(clock.now()) == 1


async def test_keys_name_their_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        timers.kind_of("no-kind")
    assert timers.kind_of("sla:123:response") == "sla"


async def test_due_timers_fire_once_with_their_events_and_derived_ids(
    engine: AsyncEngine, settings: ServiceSettings
) -> None:
    await schedule(engine, settings, [Timer(f"demo:{i}", T0 + timedelta(minutes=i)) for i in range(10)])
    clock = ManualClock(T0 + timedelta(minutes=4, seconds=30))
    r = runner(engine, settings, clock)
    assert await r.run_due(clock.now()) == 5  # minutes 0..4
    assert await r.run_due(clock.now()) == 0  # fired ones are gone
    clock.advance(timedelta(hours=1))  # "downtime": everything later catches up at once
    assert await r.run_due(clock.now()) == 5
    rows = await fired_rows(engine)
    assert sorted(row.key for row in rows) == sorted(f"demo:{i}" for i in range(10))
    events = await outbox_events(engine)
    assert [e.event_id for e in events] == [row.event_id for row in rows]
    first = next(e for e in events if e.payload["key"] == "demo:0")
    assert first.payload["due_at"] == T0.isoformat()
    assert first.payload["fired_at"] == (T0 + timedelta(minutes=4, seconds=30)).isoformat()
    # The id depends only on the key and due time: a re-derivation yields the same event.
    again = timers.FiredTimer("demo:0", T0, {}, T0 + timedelta(days=1)).event_id("DemoTimerFired")
    assert first.event_id == again


async def test_a_failing_handler_costs_only_its_timer_which_is_retried_with_its_due_time(
    engine: AsyncEngine, settings: ServiceSettings
) -> None:
    await schedule(engine, settings, [Timer(f"demo:{i}", T0) for i in range(5)])
    clock = ManualClock(T0)
    failing = runner(engine, settings, clock, fail_keys=frozenset({"demo:3"}))
    assert await failing.run_due(clock.now()) == 5
    assert sorted(row.key for row in await fired_rows(engine)) == ["demo:0", "demo:1", "demo:2", "demo:4"]
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(timers.timers_table))).one()
    assert (row.key, row.due_at, row.attempts) == ("demo:3", T0, 1)
    assert row.fire_at > T0 and "poison" in row.last_error
    healthy = runner(engine, settings, clock)
    assert await healthy.run_due(clock.now()) == 0  # not before its retry time
    clock.advance(timedelta(minutes=1))
    assert await healthy.run_due(clock.now()) == 1
    retried = [e for e in await outbox_events(engine) if e.payload["key"] == "demo:3"]
    assert len(retried) == 1 and retried[0].payload["due_at"] == T0.isoformat()


async def test_two_replicas_fire_each_timer_exactly_once(engine: AsyncEngine, settings: ServiceSettings) -> None:
    count = 2000
    await schedule(engine, settings, [Timer(f"demo:{i}", T0 + timedelta(milliseconds=i)) for i in range(count)])
    other = make_engine(settings)
    try:
        clock = ManualClock(T0 + timedelta(hours=1))
        a, b = runner(engine, settings, clock), runner(other, settings, clock)
        fired_a, fired_b = await asyncio.gather(a.run_due(clock.now()), b.run_due(clock.now()))
    finally:
        await other.dispose()
    assert fired_a + fired_b == count
    assert fired_a > 0 and fired_b > 0, "both replicas should have taken a share"
    rows = await fired_rows(engine)
    assert len(rows) == count and len({row.key for row in rows}) == count
    assert len(await outbox_events(engine)) == count


async def test_a_runner_killed_mid_batch_loses_and_doubles_nothing(
    engine: AsyncEngine, settings: ServiceSettings
) -> None:
    now = datetime.now(UTC)
    await schedule(engine, settings, [Timer(f"demo:{i}", now - timedelta(seconds=i)) for i in range(500)])
    env = {**os.environ, "OPSLEDGER_DATABASE_URL": settings.database_url, "OPSLEDGER_SERVICE_NAME": "timer-test"}
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(HERE / "timer_app.py")], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert len(await fired_rows(engine)) == 100  # two batches of 50 committed, the third died
    await runner(engine, settings, Clock()).run_due()
    rows = await fired_rows(engine)
    assert len(rows) == 500 and len({row.key for row in rows}) == 500
    events = await outbox_events(engine)
    assert len(events) == 500 and len({e.event_id for e in events}) == 500


async def test_a_sleeping_runner_is_woken_by_an_earlier_timer_committed_in_this_process(
    engine: AsyncEngine, settings: ServiceSettings
) -> None:
    await schedule(engine, settings, [Timer("demo:far", datetime.now(UTC) + timedelta(hours=1))])
    r = TimerRunner(
        "timer-test",
        make_sessionmaker(engine),
        {"demo": timer_app.recorder(Outbox(settings))},
        Clock(),
        max_idle_seconds=600,  # without the wake-up it would sleep for 10 minutes
    )
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    try:
        await eventually(lambda: _is_sleeping(r), timeout=30, what="runner asleep until the far timer")
        due = datetime.now(UTC) + timedelta(milliseconds=200)
        await schedule(engine, settings, [Timer("demo:soon", due)])
        rows = await eventually(lambda: fired_rows(engine), timeout=60, what="the earlier timer fired")
        assert [row.key for row in rows] == ["demo:soon"]
        # Woken by the commit, not left to its 10-minute sleep (how soon is bench/timers.py's to say).
        assert rows[0].fired_at - due < timedelta(minutes=1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_gauges_count_timers_pending_and_those_due_but_not_fired(
    engine: AsyncEngine, settings: ServiceSettings
) -> None:
    """A due timer another replica holds (locked) is skipped, and counted as due: the backlog a
    dashboard watches, apart from the timers merely scheduled for later."""
    now = datetime.now(UTC)
    await schedule(engine, settings, [Timer("demo:held", now - timedelta(minutes=1))])
    await schedule(engine, settings, [Timer(f"demo:later-{n}", now + timedelta(hours=1)) for n in range(3)])
    r = runner(engine, settings, Clock())
    r.service = "gauges-test"
    stop = asyncio.Event()
    async with engine.connect() as other_replica, other_replica.begin():
        await other_replica.execute(sa.text("SELECT 1 FROM timers WHERE key = 'demo:held' FOR UPDATE"))
        task = asyncio.create_task(r.run(stop))
        try:
            await eventually(lambda: _is_sleeping(r), timeout=30, what="runner asleep, the held timer skipped")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert metrics.TIMERS_PENDING.labels("gauges-test")._value.get() == 4
    assert metrics.TIMERS_DUE.labels("gauges-test")._value.get() == 1
    assert await fired_rows(engine) == []


async def _is_sleeping(r: TimerRunner) -> bool:
    return r._next_wake is not None


async def test_a_rolled_back_schedule_does_not_wake_and_a_committed_one_does(
    engine: AsyncEngine, settings: ServiceSettings
) -> None:
    woken: list[datetime] = []

    class Spy(TimerRunner):
        def wake_for(self, due_at: datetime) -> None:
            woken.append(due_at)

    spy = Spy("timer-test", make_sessionmaker(engine), {}, Clock())
    with pytest.raises(RuntimeError):
        async with make_sessionmaker(engine)() as session, session.begin():
            await timers.schedule(session, "demo:x", T0)
            raise RuntimeError("rolled back")
    assert woken == []
    await schedule(engine, settings, [Timer("demo:y", T0 + timedelta(minutes=1)), Timer("demo:z", T0)])
    assert woken == [T0]
    del spy


async def test_a_service_built_with_timer_handlers_runs_them(
    infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str
) -> None:
    settings = ServiceSettings(
        service_name="timer-test",
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
    )
    app = create_app(
        settings,
        title="t",
        migrations_dir=timer_app.MIGRATIONS,
        timers=lambda runtime: {"demo": timer_app.recorder(runtime.outbox)},
        on_ready=lambda runtime: timer_app.create_fired_table(runtime.engine),
    )
    async with running_app(app):
        runtime = app.state.runtime
        async with runtime.unit_of_work() as uow:
            uow.schedule(Timer("demo:now", datetime.now(UTC)))
        rows = await eventually(lambda: fired_rows(runtime.engine), timeout=10, what="fired by the service's runner")
        assert [row.key for row in rows] == ["demo:now"]
