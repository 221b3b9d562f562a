"""The stage shape: a decider's pure reactions run over a whole batch with one load and one save,
events staged with derived ids, timers staged by decisions, timers and commands run the same way."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from opsledger import migrations, timers
from opsledger.bus.consumer import Delivery
from opsledger.bus.outbox import Outbox
from opsledger.clock import ManualClock
from opsledger.db import driver_connection, make_engine, make_sessionmaker, outbox_table, write_rows
from opsledger.events import Envelope, EventPayload, Stream, event, new_event, registry
from opsledger.settings import ServiceSettings
from opsledger.stage import Decider, Decision, Stage
from opsledger.testing import TestInfra, eventually
from opsledger.timers import FiredTimer, Timer
from opsledger.uow import UnitOfWork, unit_of_work

from .test_service_startup import MIGRATIONS

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

for name in ("StagePinged", "StageCounted", "StageNudged"):
    if not registry.knows(name):

        @event(name, 1, Stream.INCIDENTS)
        class _Model(EventPayload):
            n: int = 0


Pinged, Counted, Nudged = (registry.model(n) for n in ("StagePinged", "StageCounted", "StageNudged"))


@dataclass(frozen=True)
class Tally:
    count: int


decider: Decider[Tally, int] = Decider()


@decider.on(Pinged)
def on_pinged(state: Tally | None, event: Envelope, payload: Any, limit: int) -> Decision[Tally]:
    """Count pings; announce each count; at the limit, start a nudge timer (cancelled at 0)."""
    new = Tally((state.count if state else 0) + payload.n)
    key = f"nudge:{event.incident_id}"
    if new.count >= limit:
        return Decision(new, [Counted(n=new.count)], schedule=[Timer(key, T0, {"incident_id": str(event.incident_id)})])
    return Decision(new, [Counted(n=new.count)], cancel=[key])


@decider.on_timer("nudge")
def on_nudge(state: Tally | None, timer: FiredTimer, limit: int) -> Decision[Tally]:
    assert state is not None
    return Decision(replace(state, count=0), [Nudged(n=state.count), Nudged(n=0)])


def test_the_registry_lists_what_the_consumer_subscribes_to() -> None:
    assert decider.event_types == {"StagePinged"}
    assert decider.timer_kinds == {"nudge"}
    unknown = new_event(Counted(n=1), producer="t", actor="t", incident_id=uuid.uuid4())
    state = Tally(3)
    assert decider.decide(state, unknown, None, 10) == Decision(state)
    with pytest.raises(ValueError, match="already"):
        decider.on(Pinged)(on_pinged)


def test_decisions_are_pure_functions_of_state_and_event() -> None:
    ping = new_event(Pinged(n=2), producer="t", actor="t", incident_id=uuid.uuid4())
    first = decider.decide(None, ping, Pinged(n=2), 3)
    assert first.state == Tally(2) and first.cancel and not first.schedule
    second = decider.decide(first.state, ping, Pinged(n=2), 3)
    assert second.state == Tally(4) and [t.key for t in second.schedule] == [f"nudge:{ping.incident_id}"]


tallies = sa.Table(
    "tallies",
    sa.MetaData(),
    sa.Column("incident_id", sa.Uuid, primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)


@pytest.fixture
async def engine(infra: TestInfra, make_database: Callable[..., Any]) -> AsyncIterator[AsyncEngine]:
    url = await make_database()
    await migrations.upgrade_async(MIGRATIONS, url)
    e = make_engine(ServiceSettings(database_url=url))
    async with e.begin() as conn:
        await conn.run_sync(tallies.metadata.create_all)
    yield e
    await e.dispose()


def make_stage(saves: list[int], reactions: Decider[Tally, int] = decider) -> Stage[Tally, int]:
    async def load(uow: UnitOfWork, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Tally]:
        rows = await uow.session.execute(sa.select(tallies).where(tallies.c.incident_id.in_(ids)).with_for_update())
        return {r.incident_id: Tally(r.count) for r in rows}

    async def save(uow: UnitOfWork, changed: dict[uuid.UUID, Tally], loaded: Mapping[uuid.UUID, Tally]) -> None:
        saves.append(len(changed))
        if changed:
            stmt = pg_insert(tallies)
            await uow.session.execute(
                stmt.on_conflict_do_update(index_elements=["incident_id"], set_={"count": stmt.excluded.count}),
                [{"incident_id": k, "count": v.count} for k, v in changed.items()],
            )

    async def limit(uow: UnitOfWork) -> int:
        return 5

    return Stage("stagetest", reactions, load=load, save=save, context=limit)


def delivery(envelope: Envelope) -> Delivery:
    return Delivery(record=None, envelope=envelope, payload=registry.decode(envelope))  # type: ignore[arg-type]


async def staged(engine: AsyncEngine) -> list[Envelope]:
    async with engine.connect() as conn:
        values = (await conn.execute(sa.select(outbox_table.c.value).order_by(outbox_table.c.id))).scalars()
        return [Envelope.from_bytes(v) for v in values]


@pytest.mark.integration
async def test_a_batch_is_decided_in_memory_and_written_once(engine: AsyncEngine) -> None:
    saves: list[int] = []
    stage = make_stage(saves)
    a, b = uuid.uuid4(), uuid.uuid4()
    pings = [new_event(Pinged(n=n), producer="t", actor="t", incident_id=i) for n, i in [(2, a), (3, b), (4, a)]]
    sessionmaker, outbox, clock = make_sessionmaker(engine), Outbox(ServiceSettings()), ManualClock(T0)
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await stage.handle(uow, [delivery(p) for p in pings])
    assert saves == [2], "one save for the batch, with both incidents"
    events = await staged(engine)
    assert [(e.incident_id, e.payload["n"]) for e in events] == [(a, 2), (b, 3), (a, 6)]
    assert [e.causation_id for e in events] == [p.event_id for p in pings]
    assert all(e.actor == "system:stagetest" and e.occurred_at == T0 for e in events)
    async with sessionmaker() as session:
        assert await timers.pending(session) == {f"nudge:{a}": T0}  # a reached the limit, b did not

    # Redelivered: the same derived ids, so the outbox keeps one copy of each.
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await stage.handle(uow, [delivery(p) for p in pings[:1]])
    assert [e.event_id for e in await staged(engine)][:3] == [e.event_id for e in events]
    assert len(await staged(engine)) == 3


@pytest.mark.integration
async def test_timers_and_commands_run_through_the_same_decisions(engine: AsyncEngine) -> None:
    stage = make_stage([])
    a = uuid.uuid4()
    sessionmaker, outbox, clock = make_sessionmaker(engine), Outbox(ServiceSettings()), ManualClock(T0)
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await stage.handle(uow, [delivery(new_event(Pinged(n=7), producer="t", actor="t", incident_id=a))])
    runner = timers.TimerRunner("stagetest", sessionmaker, stage.timer_handlers(outbox, clock), clock)
    assert await runner.run_due(T0) == 1
    nudges = [e for e in await staged(engine) if e.event_type == "StageNudged"]
    assert [e.payload["n"] for e in nudges] == [7, 0]
    fired = FiredTimer(f"nudge:{a}", T0, {}, T0)
    assert [e.event_id for e in nudges] == [fired.event_id("StageNudged", 0), fired.event_id("StageNudged", 1)]

    def reset_to(value: int) -> Callable[[Tally | None, int], Decision[Tally]]:
        def command(state: Tally | None, limit: int) -> Decision[Tally]:
            if state is None:
                raise LookupError("unknown incident")
            return Decision(Tally(value), [Counted(n=value)])

        return command

    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        state, events = await stage.execute(uow, a, reset_to(1), actor="user:alice", correlation_id="req-1")
    assert state == Tally(1)
    assert events[0].actor == "user:alice" and events[0].causation_id is None and events[0].correlation_id == "req-1"
    with pytest.raises(LookupError):
        async with unit_of_work(sessionmaker, outbox, clock) as uow:
            await stage.execute(uow, uuid.uuid4(), reset_to(1), actor="user:alice", correlation_id=None)
    assert len(await staged(engine)) == 4  # the refused command wrote nothing


@pytest.mark.integration
async def test_a_timer_cancelled_while_it_falls_due_neither_deadlocks_nor_fires(engine: AsyncEngine) -> None:
    """A consumer batch locks its incident, then cancels the incident's timer. The runner, firing
    that timer meanwhile, takes the incident first too: it waits for the batch and finds the timer
    gone. (When it claimed the timer first, the two deadlocked: PostgreSQL broke it after a second,
    and a runner picked as the victim put the cancelled timer back as a retry.)"""
    stage = make_stage([])
    a = uuid.uuid4()
    sessionmaker, outbox, clock = make_sessionmaker(engine), Outbox(ServiceSettings()), ManualClock(T0)
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await stage.handle(uow, [delivery(new_event(Pinged(n=7), producer="t", actor="t", incident_id=a))])
    runner = timers.TimerRunner("stagetest", sessionmaker, stage.timer_handlers(outbox, clock), clock)

    async def runner_waits_for_a_lock() -> bool:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        async with engine.connect() as conn:
            return bool(await conn.scalar(sa.text(query)))

    async with sessionmaker() as session, session.begin():
        await session.execute(sa.select(tallies).where(tallies.c.incident_id == a).with_for_update())
        firing = asyncio.create_task(runner.run_due(T0))
        await eventually(runner_waits_for_a_lock, timeout=10, what="the runner waiting for the incident")
        await timers.cancel(session, f"nudge:{a}")
    assert await asyncio.wait_for(firing, 10) == 0
    async with sessionmaker() as session:
        assert await timers.pending(session) == {}
    assert not [e for e in await staged(engine) if e.event_type == "StageNudged"]


@pytest.mark.integration
async def test_timers_of_two_kinds_on_one_incident_each_see_what_the_other_did(engine: AsyncEngine) -> None:
    """The runner calls a stage's handler once per kind. What the handler's lock read serves the
    first call only: the second decides on what the first saved."""
    arithmetic: Decider[Tally, int] = Decider()

    @arithmetic.on_timer("double")
    def on_double(state: Tally | None, timer: FiredTimer, limit: int) -> Decision[Tally]:
        assert state is not None
        return Decision(Tally(state.count * 2), [Counted(n=state.count * 2)])

    @arithmetic.on_timer("inc")
    def on_inc(state: Tally | None, timer: FiredTimer, limit: int) -> Decision[Tally]:
        assert state is not None
        return Decision(Tally(state.count + 1), [Counted(n=state.count + 1)])

    stage = make_stage([], arithmetic)
    a = uuid.uuid4()
    sessionmaker, outbox, clock = make_sessionmaker(engine), Outbox(ServiceSettings()), ManualClock(T0)
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await uow.session.execute(sa.insert(tallies).values(incident_id=a, count=3))
        uow.schedule(*(Timer(f"{kind}:{a}", T0, {"incident_id": str(a)}) for kind in ("double", "inc")))
    runner = timers.TimerRunner("stagetest", sessionmaker, stage.timer_handlers(outbox, clock), clock)
    assert await runner.run_due(T0) == 2
    # Fired in key order: doubled (6), then incremented from what the doubling saved (7, not 4).
    assert [e.payload["n"] for e in await staged(engine) if e.event_type == "StageCounted"] == [6, 7]
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(tallies.c.count).where(tallies.c.incident_id == a)) == 7


@pytest.mark.integration
async def test_a_statement_on_the_driver_connection_belongs_to_the_sessions_transaction(engine: AsyncEngine) -> None:
    sessionmaker = make_sessionmaker(engine)
    insert = "INSERT INTO tallies (incident_id, count) VALUES ($1, 1)"
    rolled_back, committed = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with sessionmaker() as session, session.begin():
            await (await driver_connection(session)).execute(insert, rolled_back)  # the first statement
            raise RuntimeError("rolled back")
    async with sessionmaker() as session, session.begin():
        conn = await driver_connection(session)
        assert conn.is_in_transaction()
        await conn.execute(insert, committed)
        assert await driver_connection(session) is conn
    async with engine.connect() as c:
        found = set((await c.execute(sa.select(tallies.c.incident_id))).scalars())
    assert committed in found and rolled_back not in found


@pytest.mark.integration
async def test_the_unit_of_work_wakes_the_relay_only_after_commit(engine: AsyncEngine) -> None:
    outbox = Outbox(ServiceSettings())
    outbox.relay_holds_lease = True  # else a commit leaves the relay asleep and notifies the holder
    sessionmaker = make_sessionmaker(engine)
    ping = new_event(Pinged(n=1), producer="t", actor="t", incident_id=uuid.uuid4())
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessionmaker, outbox, ManualClock(T0)) as uow:
            uow.emit(ping)
            await uow.flush()
            raise RuntimeError("rolled back")
    assert not outbox._wake.is_set()
    async with unit_of_work(sessionmaker, outbox, ManualClock(T0)) as uow:
        uow.emit(ping)
        assert not outbox._wake.is_set()
    assert outbox._wake.is_set()
    assert [e.event_id for e in await staged(engine)] == [ping.event_id]


@pytest.mark.integration
async def test_reactions_and_commands_can_carry_the_correlation_id_the_state_names(engine: AsyncEngine) -> None:
    stage = replace(make_stage([]), correlation=lambda tally: f"opened-by-{tally.count}")
    sessionmaker, outbox, clock = make_sessionmaker(engine), Outbox(ServiceSettings()), ManualClock(T0)
    a = uuid.uuid4()
    ping = new_event(Pinged(n=2), producer="t", actor="t", incident_id=a, correlation_id="request-9")
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await stage.handle(uow, [delivery(ping)])
        _, events = await stage.execute(uow, a, lambda state, limit: Decision(state, [Counted(n=0)]), actor="user:x")
    reaction = (await staged(engine))[0]
    assert reaction.correlation_id == "opened-by-2" and reaction.causation_id == ping.event_id
    assert events[0].correlation_id == "opened-by-2"


@pytest.mark.integration
async def test_a_stage_may_read_states_and_context_in_one_go(engine: AsyncEngine) -> None:
    plain = make_stage([])
    reads: list[set[uuid.UUID]] = []

    async def read(uow: UnitOfWork, ids: Collection[uuid.UUID]) -> tuple[dict[uuid.UUID, Tally], int]:
        assert plain.load is not None
        reads.append(set(ids))
        return await plain.load(uow, ids), 2  # a limit of 2, where `plain`'s context gives 5

    with pytest.raises(ValueError, match="either"):
        Stage("stagetest", decider, save=plain.save, load=plain.load)
    with pytest.raises(ValueError, match="either"):
        Stage("stagetest", decider, save=plain.save, load=plain.load, context=plain.context, read=read)
    stage = Stage("stagetest", decider, save=plain.save, read=read)
    a, b = uuid.uuid4(), uuid.uuid4()
    sessionmaker, outbox, clock = make_sessionmaker(engine), Outbox(ServiceSettings()), ManualClock(T0)
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        pings = [new_event(Pinged(n=n), producer="t", actor="t", incident_id=i) for n, i in [(2, a), (1, b)]]
        await stage.handle(uow, [delivery(p) for p in pings])
    assert reads == [{a, b}]
    async with sessionmaker() as session:
        assert await timers.pending(session) == {f"nudge:{a}": T0}  # the context `read` gave decided
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        state, _ = await stage.execute(uow, b, lambda state, limit: Decision(Tally(limit)), actor="user:alice")
    assert reads[-1] == {b} and state == Tally(2)


@pytest.mark.integration
async def test_a_consumed_batch_writes_its_states_events_and_timers_in_one_statement(engine: AsyncEngine) -> None:
    """Every statement that writes one of the three tables notes its statement_timestamp(), which
    differs between two statements: one round trip for the lot, not one a table."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE writes (target text, statement timestamptz)")
        await conn.exec_driver_sql(
            "CREATE FUNCTION note_write() RETURNS trigger LANGUAGE plpgsql AS"
            " 'BEGIN INSERT INTO writes VALUES (TG_TABLE_NAME, statement_timestamp()); RETURN NULL; END'"
        )
        for table in ("tallies", "timers", "outbox"):
            await conn.exec_driver_sql(
                f"CREATE TRIGGER note_write AFTER INSERT OR UPDATE OR DELETE ON {table}"
                " FOR EACH STATEMENT EXECUTE FUNCTION note_write()"
            )

    async def save(uow: UnitOfWork, changed: dict[uuid.UUID, Tally], loaded: Mapping[uuid.UUID, Tally]) -> None:
        rows = [{"incident_id": k, "count": v.count} for k, v in changed.items()]
        await write_rows(uow.session, tallies, rows, key=["incident_id"], update=["count"])

    plain = make_stage([])
    stage = Stage("stagetest", decider, save=save, load=plain.load, context=plain.context)
    spec = stage.consumer("incidents", ["t"], Outbox(ServiceSettings()), ManualClock(T0))
    assert spec.batch_handler is not None
    a = uuid.uuid4()
    pings = [new_event(Pinged(n=n), producer="t", actor="t", incident_id=a) for n in (2, 4)]
    async with make_sessionmaker(engine)() as session, session.begin():
        await spec.batch_handler(session, [delivery(p) for p in pings])
    async with engine.connect() as conn:
        written = (await conn.execute(sa.text("SELECT target, statement FROM writes"))).all()
        assert (await conn.execute(sa.text("SELECT count FROM tallies"))).scalar_one() == 6
    assert {t for t, _ in written} == {"outbox", "tallies", "timers"}  # an upsert notes INSERT and UPDATE
    assert len({s for _, s in written}) == 1, written
    assert [e.payload["n"] for e in await staged(engine)] == [2, 6]
