"""The SLA service against the real Kafka and PostgreSQL, run in-process with a ManualClock: clocks
started from the other stages' events, warnings and breaches through the durable timers (exactly
once with two runners on one database, caught up after a restart), re-targeting, the policy API
with optimistic concurrency and bad input, the clocks read over HTTP, and what-if replays."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from opsledger import migrations
from opsledger.clock import ManualClock
from opsledger.db import make_engine, make_sessionmaker, outbox_table
from opsledger.events import Envelope, Stream
from opsledger.testing import TestInfra, eventually, read_topic, running_app, session_tokens
from opsledger.testing.helpers import envelopes
from opsledger.timers import FiredTimer, TimerRunner
from sla import store
from sla.app import MIGRATIONS, build
from sla.settings import Settings

from .sla_events import acknowledged, logged, on_hold, prioritized, reprioritized, resumed

pytestmark = pytest.mark.integration

TOKENS = session_tokens()
ADMIN = TOKENS.headers("test-admin", "admin")
ANALYST = TOKENS.headers("test-analyst", "analyst")
RESPONDER = TOKENS.headers("test-responder", "responder")
T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # a Monday
MIN = timedelta(minutes=1)


@pytest.fixture
async def settings(infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str) -> Settings:
    return Settings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        relay_poll_seconds=0.05,
        # The tests fire timers themselves (run_due at the ManualClock's time); the service's own
        # runner fires only what is due when it starts (catch-up) or when a commit wakes it.
        timer_max_idle_seconds=3600,
        log_json=False,
        **TOKENS.settings(),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def app(settings: Settings, clock: ManualClock) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    service = build(settings, clock=clock)
    async with running_app(service) as client:
        yield service, client


@pytest.fixture
async def publish(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    """Put envelopes on the incidents topic the way the other stages' relays would (keyed by incident)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()

    async def send(*events: Envelope) -> None:
        for e in events:
            await producer.send_and_wait(settings.topic(Stream.INCIDENTS), e.to_bytes(), key=e.key)

    yield send
    await producer.stop()


async def sla_events(settings: Settings, incident_id: uuid.UUID | None = None) -> list[Envelope]:
    records = await read_topic(settings.kafka_bootstrap, settings.topic(Stream.INCIDENTS))
    return [e for e in envelopes(records) if e.producer == "sla" and incident_id in (None, e.incident_id)]


async def wait_for(
    settings: Settings, incident_id: uuid.UUID, event_type: str, count: int = 1, timeout: float = 60
) -> list[Envelope]:
    async def check() -> list[Envelope]:
        found = [e for e in await sla_events(settings, incident_id) if e.event_type == event_type]
        return found if len(found) >= count else []

    return await eventually(check, timeout=timeout, what=f"{count} x {event_type} for {incident_id}")


async def fire_due(service: FastAPI, clock: ManualClock) -> int:
    runner: TimerRunner = service.state.runtime.timers
    return await runner.run_due(clock.now())


async def test_warnings_and_breach_fire_through_durable_timers(
    settings: Settings, app: tuple[FastAPI, httpx.AsyncClient], clock: ManualClock, publish: Callable[..., Any]
) -> None:
    service, client = app
    incident = uuid.uuid4()
    await publish(logged(incident, T0), prioritized(incident, T0 + MIN, "P1"))
    started = await wait_for(settings, incident, "SlaClockStarted", 2)
    assert {e.payload["target"]: datetime.fromisoformat(e.payload["due_at"]) for e in started} == {
        "response": T0 + 15 * MIN,
        "resolution": T0 + 240 * MIN,
    }

    clock.advance(8 * MIN)  # response 50 % (7 min 30 s)
    await fire_due(service, clock)
    warning = (await wait_for(settings, incident, "SlaWarning"))[0]
    w = warning.payload
    assert (w["target"], w["threshold_percent"], w["policy_version"]) == ("response", 50, 1)
    assert datetime.fromisoformat(w["threshold_at"]) == T0 + timedelta(minutes=7, seconds=30)
    assert datetime.fromisoformat(w["due_at"]) == T0 + 15 * MIN
    assert datetime.fromisoformat(w["fired_at"]) == T0 + 8 * MIN
    key = f"sla:{incident}:response:50"
    assert warning.event_id == FiredTimer(key, T0 + timedelta(minutes=7, seconds=30), {}, T0).event_id("SlaWarning")

    clock.advance(10 * MIN)  # past 75 % and the due time
    await fire_due(service, clock)
    breach = (await wait_for(settings, incident, "SlaBreached"))[0]
    assert breach.payload["target"] == "response"
    assert datetime.fromisoformat(breach.payload["due_at"]) == T0 + 15 * MIN
    assert datetime.fromisoformat(breach.payload["fired_at"]) == T0 + 18 * MIN
    # A late acknowledgement does not meet it; the resolution clock keeps running.
    await publish(acknowledged(incident, T0 + 20 * MIN))

    async def acknowledged_seen() -> dict[str, Any]:
        body: dict[str, Any] = (await client.get(f"/v1/incidents/{incident}/sla", headers=RESPONDER)).json()
        return body if body.get("acknowledged_at") else {}

    body = await eventually(acknowledged_seen, timeout=60, what="acknowledgement applied")
    targets = {t["target"]: t for t in body["targets"]}
    assert targets["response"]["state"] == "breached" and targets["response"]["warned"] == [50, 75]
    assert targets["resolution"]["state"] == "running"
    assert targets["resolution"]["elapsed_seconds"] == 18 * 60
    assert targets["resolution"]["remaining_seconds"] == (240 - 18) * 60
    assert [e.event_type for e in await sla_events(settings, incident)].count("SlaMet") == 0
    assert (await client.get(f"/v1/incidents/{incident}/sla")).status_code == 401
    assert (await client.get(f"/v1/incidents/{uuid.uuid4()}/sla", headers=RESPONDER)).status_code == 404


async def test_a_hold_moves_the_due_time_and_the_paused_time_is_excluded(
    settings: Settings, app: tuple[FastAPI, httpx.AsyncClient], clock: ManualClock, publish: Callable[..., Any]
) -> None:
    service, client = app
    incident = uuid.uuid4()
    await publish(
        logged(incident, T0),
        prioritized(incident, T0, "P2"),
        on_hold(incident, T0 + 5 * MIN),
        resumed(incident, T0 + 65 * MIN),
    )
    resumed_events = await wait_for(settings, incident, "SlaClockResumed", 2)
    due = {e.payload["target"]: datetime.fromisoformat(e.payload["due_at"]) for e in resumed_events}
    assert due == {"response": T0 + 90 * MIN, "resolution": T0 + 9 * 60 * MIN}
    clock.advance(80 * MIN)  # the response target would have breached at 30 min without the hold
    await fire_due(service, clock)
    body = (await client.get(f"/v1/incidents/{incident}/sla", headers=ANALYST)).json()
    response = next(t for t in body["targets"] if t["target"] == "response")
    assert response["paused_seconds"] == 3600 and response["elapsed_seconds"] == 20 * 60
    assert response["state"] == "warned" and response["warned"] == [50]  # 15 min counted by 75 min
    assert [e.event_type for e in await sla_events(settings, incident)].count("SlaBreached") == 0


async def test_reprioritizing_retargets_the_running_clocks(
    settings: Settings, app: tuple[FastAPI, httpx.AsyncClient], clock: ManualClock, publish: Callable[..., Any]
) -> None:
    service, client = app
    incident = uuid.uuid4()
    await publish(logged(incident, T0), prioritized(incident, T0, "P3"), reprioritized(incident, T0 + MIN, "P1", "P3"))
    started = await wait_for(settings, incident, "SlaClockStarted", 4)
    cancelled = await wait_for(settings, incident, "SlaCancelled", 2)
    assert {e.payload["reason"] for e in cancelled} == {"retargeted"}
    retargeted = [e.payload for e in started if e.payload["retargeted"]]
    assert {p["priority"] for p in retargeted} == {"P1"} and len(retargeted) == 2
    assert all(datetime.fromisoformat(p["counted_from"]) == T0 for p in retargeted)
    clock.advance(20 * MIN)
    await fire_due(service, clock)
    breach = (await wait_for(settings, incident, "SlaBreached"))[0]
    assert breach.payload["priority"] == "P1" and datetime.fromisoformat(breach.payload["due_at"]) == T0 + 15 * MIN
    body = (await client.get(f"/v1/incidents/{incident}/sla", headers=ANALYST)).json()
    assert [t["state"] for t in body["previous"]] == ["cancelled", "cancelled"]
    assert {t["priority"] for t in body["targets"]} == {"P1"}


async def wait_started(settings: Settings, count: int) -> None:
    engine = make_engine(settings)
    try:

        async def all_started() -> bool:
            async with engine.connect() as conn:
                n = await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(store.known_incidents)
                    .where(store.known_incidents.c.priority.is_not(None))
                )
            return n == count

        await eventually(all_started, timeout=60, what=f"{count} incidents with clocks")
    finally:
        await engine.dispose()


async def outbox_types(settings: Settings) -> list[tuple[str, uuid.UUID]]:
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            # In id order: the relay marking rows sent moves them in the heap, so a scan's order changes.
            values = (await conn.execute(sa.select(outbox_table.c.value).order_by(outbox_table.c.id))).scalars().all()
    finally:
        await engine.dispose()
    found = [Envelope.from_bytes(v) for v in values]
    return [(e.event_type, e.event_id) for e in found]


async def test_two_runners_on_one_database_announce_each_breach_exactly_once(
    settings: Settings, app: tuple[FastAPI, httpx.AsyncClient], clock: ManualClock, publish: Callable[..., Any]
) -> None:
    service, _ = app
    incidents = [uuid.uuid4() for _ in range(30)]
    await publish(*(e for i in incidents for e in (logged(i, T0), prioritized(i, T0, "P1"))))
    await wait_started(settings, len(incidents))
    clock.advance(5 * 60 * MIN)  # every warning and breach of both targets is due
    other_engine = make_engine(settings)
    try:
        other = TimerRunner(
            "sla", make_sessionmaker(other_engine), service.state.runtime.sla.timer_handlers(), clock, batch_size=7
        )
        mine = TimerRunner(
            "sla", service.state.runtime.sessionmaker, service.state.runtime.sla.timer_handlers(), clock, batch_size=7
        )
        fired = await asyncio.gather(mine.run_due(clock.now()), other.run_due(clock.now()), fire_due(service, clock))
    finally:
        await other_engine.dispose()
    # The service's own runner may fire some too: woken by the commit that scheduled the clocks,
    # it can look at the time just after the advance. Every timer fires once, whoever fires it.
    assert sum(fired) <= len(incidents) * 6  # 2 warnings + a breach, per target

    async def all_announced() -> list[tuple[str, uuid.UUID]]:
        found = await outbox_types(settings)
        return found if sum(t in ("SlaBreached", "SlaWarning") for t, _ in found) >= len(incidents) * 6 else []

    found = await eventually(all_announced, what="every warning and breach in the outbox")
    breaches = [event_id for t, event_id in found if t == "SlaBreached"]
    warnings = [event_id for t, event_id in found if t == "SlaWarning"]
    assert len(breaches) == len(set(breaches)) == len(incidents) * 2
    assert len(warnings) == len(set(warnings)) == len(incidents) * 4
    on_log = await eventually(
        lambda: _breaches_on_log(settings, len(incidents) * 2), timeout=60, what="breaches on the log"
    )
    assert len(on_log) == len(incidents) * 2


async def _breaches_on_log(settings: Settings, count: int) -> list[Envelope]:
    found = [e for e in await sla_events(settings) if e.event_type == "SlaBreached"]
    return found if len(found) >= count else []


async def test_what_fell_due_during_downtime_fires_after_a_restart(
    settings: Settings, clock: ManualClock, publish: Callable[..., Any]
) -> None:
    incident = uuid.uuid4()
    async with running_app(build(settings, clock=clock)):
        await publish(logged(incident, T0), prioritized(incident, T0, "P1"))
        await wait_for(settings, incident, "SlaClockStarted", 2)
    clock.advance(30 * MIN)  # down while the response target falls due
    async with running_app(build(settings, clock=clock)):
        # Nobody calls the runner: the restarted service's own runner catches up.
        breach = (await wait_for(settings, incident, "SlaBreached"))[0]
        warnings = await wait_for(settings, incident, "SlaWarning", 2)
    assert breach.payload["target"] == "response"
    assert datetime.fromisoformat(breach.payload["fired_at"]) == T0 + 30 * MIN
    assert sorted(w.payload["threshold_percent"] for w in warnings) == [50, 75]


async def test_policy_versions_conflicts_bad_input_and_what_if(
    settings: Settings, app: tuple[FastAPI, httpx.AsyncClient], clock: ManualClock, publish: Callable[..., Any]
) -> None:
    service, client = app
    defaults = (await client.get("/v1/policies/defaults", headers=ANALYST)).json()
    current = (await client.get("/v1/policies", headers=RESPONDER)).json()
    assert current["version"] == 1 and current["rules"] == defaults["rules"]
    assert (await client.put("/v1/policies", json=defaults, headers=ANALYST)).status_code == 403

    # An incident acknowledged after 20 minutes breaches P1's 15-minute response target; one
    # acknowledged after 5 meets it; one put on hold for 10 of its first 20 minutes is open.
    incident, in_time, held = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await publish(
        *(e for i in (incident, in_time, held) for e in (logged(i, T0), prioritized(i, T0, "P1"))),
        acknowledged(in_time, T0 + 5 * MIN),
        on_hold(held, T0 + 2 * MIN),
        resumed(held, T0 + 12 * MIN),
    )
    await wait_for(settings, held, "SlaClockResumed", 2)
    await wait_for(settings, in_time, "SlaMet")
    clock.advance(20 * MIN)
    await fire_due(service, clock)
    await publish(acknowledged(incident, T0 + 20 * MIN))
    await wait_for(settings, incident, "SlaBreached")

    async def acknowledged_seen() -> bool:
        body = (await client.get(f"/v1/incidents/{incident}/sla", headers=RESPONDER)).json()
        return body["acknowledged_at"] is not None

    await eventually(acknowledged_seen, timeout=60, what="acknowledgement applied")
    real = {}
    for i in (incident, in_time, held):
        body = (await client.get(f"/v1/incidents/{i}/sla", headers=RESPONDER)).json()
        real[str(i)] = next(t["state"] for t in body["targets"] if t["target"] == "response")
    assert real == {str(incident): "breached", str(in_time): "met", str(held): "warned"}

    relaxed = [dict(r) for r in defaults["rules"]]
    relaxed[0]["response_seconds"] = 30 * 60
    window = {"start": (T0 - MIN).isoformat(), "end": (T0 + MIN).isoformat()}
    before = await outbox_types(settings)
    answer = await client.post("/v1/what-if", json={"rules": relaxed, **window}, headers=ANALYST)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["evaluated"] == 3 and result["current_policy_version"] == 1
    assert result["changes"] == [
        {
            "incident_id": str(incident),
            "priority": "P1",
            "target": "response",
            "current": "breached",
            "candidate": "met",
        }
    ]
    p1 = next(p for p in result["per_priority"] if (p["priority"], p["target"]) == ("P1", "response"))
    # The replay under the policy in force agrees with what the service really decided.
    assert p1["current"] == {"met": 1, "breached": 1, "open": 1, "cancelled": 0, "compliance": 0.5}
    assert p1["candidate"] == {"met": 2, "breached": 0, "open": 1, "cancelled": 0, "compliance": 1.0}
    assert await outbox_types(settings) == before  # emits nothing
    backwards = {"rules": relaxed, "start": window["end"], "end": window["start"]}
    refused = await client.post("/v1/what-if", json=backwards, headers=ANALYST)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.end"
    assert (await client.post("/v1/what-if", json=backwards, headers=RESPONDER)).status_code == 403

    # Optimistic concurrency, bad input naming the field, the previous version staying in force.
    changed = await client.put(
        "/v1/policies", json={"rules": relaxed, "expected_version": 1, "comment": "slower P1"}, headers=ADMIN
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2 and changed.json()["changed_by"] == "user:test-admin"
    stale = await client.put("/v1/policies", json={"rules": defaults["rules"], "expected_version": 1}, headers=ADMIN)
    assert stale.status_code == 409 and stale.json()["errors"][0]["field"] == "body.expected_version"
    bad_zone = [dict(r) for r in relaxed]
    bad_zone[2] = {**bad_zone[2], "calendar": {**bad_zone[2]["calendar"], "time_zone": "Mars/Olympus"}}
    bad = await client.put("/v1/policies", json={"rules": bad_zone}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.rules.2.calendar.time_zone"
    zero = [dict(r) for r in relaxed]
    zero[1] = {**zero[1], "resolution_seconds": 0}
    bad = await client.put("/v1/policies", json={"rules": zero}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.rules.1.resolution_seconds"
    missing = await client.put("/v1/policies", json={"rules": relaxed[1:]}, headers=ADMIN)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "body.rules"
    assert "P1" in missing.json()["detail"]
    assert (await client.get("/v1/policies", headers=ANALYST)).json()["version"] == 2
    history = (await client.get("/v1/policies/history", headers=ANALYST)).json()["versions"]
    assert [v["version"] for v in history] == [2, 1] and history[0]["comment"] == "slower P1"

    async def policy_events() -> list[Envelope]:
        found = envelopes(await read_topic(settings.kafka_bootstrap, settings.topic(Stream.CONFIG)))
        found = [e for e in found if e.event_type == "SlaPolicyChanged"]
        return found if len(found) == 2 else []

    announced = await eventually(policy_events, timeout=60, what="policy versions announced")
    assert [e.payload["version"] for e in announced] == [1, 2] and announced[1].actor == "user:test-admin"

    # New clocks run under the new version.
    later = uuid.uuid4()
    await publish(logged(later, T0 + 20 * MIN), prioritized(later, T0 + 20 * MIN, "P1"))
    started = await wait_for(settings, later, "SlaClockStarted", 2)
    assert {e.payload["policy_version"] for e in started} == {2}
    response = next(e for e in started if e.payload["target"] == "response")
    assert datetime.fromisoformat(response.payload["due_at"]) == T0 + 50 * MIN


async def test_incidents_known_before_clocks_existed_are_kept_by_the_migration(
    infra: TestInfra, make_database: Callable[..., Any]
) -> None:
    url = await make_database()
    await migrations.upgrade_async(MIGRATIONS, url, "0001")  # the skeleton's schema
    engine = create_async_engine(url)
    incident = uuid.uuid4()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO known_incidents VALUES (:id, :at, 'db-1 disk full')"), {"id": incident, "at": T0}
            )
        await migrations.upgrade_async(MIGRATIONS, url)
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(store.known_incidents))).one()
    finally:
        await engine.dispose()
    state = store.incident_from(row.state)
    assert (row.incident_id, state.logged_at, state.title, state.clocks) == (incident, T0, "db-1 disk full", ())
