"""Triage's stage against the real PostgreSQL (no Kafka): a batch costs one query to load its
incidents with the versions in force and one statement to save, and the policy is compiled again
only when a configuration version changed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from opsledger import migrations
from opsledger.bus.consumer import Delivery
from opsledger.bus.outbox import Outbox
from opsledger.clock import ManualClock
from opsledger.db import make_sessionmaker, outbox_table
from opsledger.events import Envelope, new_event, registry
from opsledger.events.intake import AlertCorrelated, IncidentLogged
from opsledger.testing import TestInfra
from opsledger.uow import unit_of_work
from triage import store
from triage.app import MIGRATIONS
from triage.handlers import Triage
from triage.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
async def engine(infra: TestInfra, make_database: Callable[..., Any]) -> AsyncIterator[AsyncEngine]:
    url = await make_database()
    await migrations.upgrade_async(MIGRATIONS, url)
    e = create_async_engine(url, connect_args={"connection_class": DriverConnection})
    yield e
    await e.dispose()


class DriverConnection(asyncpg.Connection):
    """Notes the statements sent with `execute` or `fetch` on the driver connection (the set-based
    writes, the hot reads), but for transaction control."""

    sent: ClassVar[list[str]] = []

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        word = query.split(None, 1)[0].upper().rstrip(";")
        if word not in ("BEGIN", "COMMIT", "ROLLBACK"):
            self.sent.append(word)
        return await super().execute(query, *args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:
        self.sent.append(query.split(None, 1)[0].upper())
        return await super().fetch(query, *args, timeout=timeout, record_class=record_class)


class Statements:
    """The SQL statements an engine runs, by their first word: SQLAlchemy's, and those sent on the
    driver connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.seen = DriverConnection.sent
        self.seen.clear()
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement.split(None, 1)[0].upper())

    def take(self) -> list[str]:
        seen = list(self.seen)
        self.seen.clear()
        return seen


def logged(incident_id: uuid.UUID, severity: str = "medium") -> Envelope:
    payload = IncidentLogged.model_validate(
        dict(
            source="alertmanager",
            occurred_at=T0,
            received_at=T0,
            title="Checkout error rate above 5%",
            service="shop",
            severity=severity,
            dedup_key=f"dk-{incident_id}",
        )
    )
    return new_event(
        payload, producer="intake", actor="integration:am", incident_id=incident_id, correlation_id=f"a-{incident_id}"
    )


def correlated(incident_id: uuid.UUID, severity: str) -> Envelope:
    payload = AlertCorrelated.model_validate(
        dict(
            source="alertmanager",
            dedup_key=f"dk-{incident_id}",
            occurrence_count=2,
            first_seen=T0,
            last_seen=T0,
            severity=severity,
        )
    )
    return new_event(payload, producer="intake", actor="integration:am", incident_id=incident_id)


def delivery(envelope: Envelope) -> Delivery:
    return Delivery(record=None, envelope=envelope, payload=registry.decode(envelope))  # type: ignore[arg-type]


async def test_a_batch_loads_once_saves_once_and_reuses_the_compiled_policy(engine: AsyncEngine) -> None:
    settings = Settings(database_url="unused", service_criticality={"payments": 1})
    clock = ManualClock(T0)
    outbox = Outbox(settings)
    triage = Triage(settings, outbox, clock)
    sessionmaker = make_sessionmaker(engine)
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await triage.seed_defaults(uow)
    statements = Statements(engine)

    incidents = [uuid.uuid4() for _ in range(5)]
    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await triage.stage.handle(uow, [delivery(logged(i)) for i in incidents])
    # Load with the versions in force (one query), configs at those versions (first build), one
    # upsert of the five states, one insert of their events into the outbox.
    assert statements.take() == ["WITH", "SELECT", "INSERT", "INSERT"]
    assert triage.policies.builds == 1

    async with unit_of_work(sessionmaker, outbox, clock) as uow:
        await triage.stage.handle(uow, [delivery(correlated(i, "critical")) for i in incidents])
    # The policy came from the cache: the one query of states and versions, none for the bodies.
    assert statements.take() == ["WITH", "INSERT", "INSERT"]
    assert triage.policies.builds == 1

    async with sessionmaker() as session:
        states = await store.load_states(session, incidents)
        sent = (await session.execute(sa.select(sa.func.count()).select_from(outbox_table))).scalar_one()
    assert sorted(states) == sorted(incidents)
    assert all(
        (s.priority, s.facts.severity, s.facts.occurrence_count, s.correlation_id) == ("P2", "critical", 2, f"a-{i}")
        for i, s in states.items()
    )
    assert sent == 3 + 5 * 2 + 5  # defaults, logged reactions, reprioritizations

    # A new version of the matrix is compiled once, then cached again.
    matrix = {f"{i}/{u}": "P1" for i in (1, 2, 3) for u in (1, 2, 3)}
    async with sessionmaker() as session, session.begin():
        await triage.change_config(session, "matrix", {"matrix": matrix}, "user:admin", None)
    async with sessionmaker() as session:
        assert (await triage.policy(session)).matrix.version == 2
        assert (await triage.policy(session)).matrix.version == 2
    assert triage.policies.builds == 2


async def test_a_refused_configuration_change_leaves_the_cached_policy_in_force(engine: AsyncEngine) -> None:
    settings = Settings(database_url="unused")
    clock = ManualClock(T0)
    triage = Triage(settings, Outbox(settings), clock)
    sessionmaker = make_sessionmaker(engine)
    async with unit_of_work(sessionmaker, triage.outbox, clock) as uow:
        await triage.seed_defaults(uow)
    async with sessionmaker() as session:
        before = await triage.policy(session)
    # Rolled back after the new version was written: the cache never saw it.
    with pytest.raises(RuntimeError):
        async with sessionmaker() as session, session.begin():
            await triage.change_config(session, "rules", {"rules": [{"id": "r", "set": {"impact": 1}}]}, "u", None)
            raise RuntimeError("rolled back")
    async with sessionmaker() as session:
        assert await triage.policy(session) is before
        assert await store.versions_in_force(session) == {"categories": 1, "rules": 1, "matrix": 1}


async def test_the_batch_read_gives_what_the_two_queries_give_and_locks_the_rows(engine: AsyncEngine) -> None:
    settings = Settings(database_url="unused")
    clock = ManualClock(T0)
    triage = Triage(settings, Outbox(settings), clock)
    sessionmaker = make_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        # No configuration yet, nothing triaged: no versions, no states, still one row to read.
        assert await store.load_states_and_versions(session, [uuid.uuid4()]) == ({}, {})
    async with unit_of_work(sessionmaker, triage.outbox, clock) as uow:
        await triage.seed_defaults(uow)
    incidents = [uuid.uuid4() for _ in range(3)]
    async with unit_of_work(sessionmaker, triage.outbox, clock) as uow:
        await triage.stage.handle(uow, [delivery(logged(i)) for i in incidents])

    wanted = [*incidents[:2], uuid.uuid4()]  # two triaged, one unknown
    async with sessionmaker() as session, session.begin():
        states, versions = await store.load_states_and_versions(session, wanted)
        assert states == await store.load_states(session, wanted)
        assert sorted(states) == sorted(incidents[:2])
        assert versions == await store.versions_in_force(session) == {"categories": 1, "rules": 1, "matrix": 1}
        assert await store.load_states_and_versions(session, []) == ({}, versions)
        # The rows read are locked until this transaction ends; the one not read is not.
        other = await asyncpg.connect(engine.url.render_as_string(hide_password=False).replace("+asyncpg", ""))
        try:
            lock = "SELECT 1 FROM triage_incidents WHERE incident_id = $1 FOR UPDATE NOWAIT"
            with pytest.raises(asyncpg.LockNotAvailableError):
                await other.fetch(lock, incidents[0])
            assert await other.fetch(lock, incidents[2])
        finally:
            await other.close()
