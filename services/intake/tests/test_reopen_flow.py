"""An alert firing again after its incident was resolved reopens that incident (within the reopen
window) instead of logging a new one: intake and the resolution stage in-process against the real
Kafka and PostgreSQL, talking only through the incidents topic."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from intake import store
from opsledger.events import Envelope, Stream, new_event
from opsledger.events.intake import AlertCorrelated
from opsledger.testing import TestInfra, eventually, running_app
from resolution.app import build as build_resolution
from resolution.settings import Settings as ResolutionSettings

from .harness import TOKENS, Intake, intake, make_settings, topic_events
from .samples import alertmanager_body, am_alert, generic_alert

pytestmark = pytest.mark.integration

RESPONDER = TOKENS.headers("alice", "responder", name="Alice Ops")
ANALYST = TOKENS.headers("ana", "analyst")


@contextlib.asynccontextmanager
async def resolution(infra: TestInfra, make_database: Any, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = ResolutionSettings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=prefix,
        topic_partitions=1,
        relay_poll_seconds=0.05,
        log_json=False,
        **TOKENS.settings(),
    )
    async with running_app(build_resolution(settings)) as client:
        yield client


async def state_of(client: httpx.AsyncClient, incident_id: str, expected: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        response = await client.get(f"/v1/incidents/{incident_id}/state", headers=ANALYST)
        body: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return body if body.get("state") == expected else {}

    return await eventually(check, timeout=60, what=f"{incident_id} {expected}")


async def key_state(svc: Intake, dedup_key: str) -> dict[str, Any]:
    async with svc.runtime.sessionmaker() as session:
        row = (
            (await session.execute(sa.select(store.alert_state).where(store.alert_state.c.dedup_key == dedup_key)))
            .mappings()
            .one()
        )
    return dict(row)


async def logged_in_both(svc: Intake, res: httpx.AsyncClient, dedup_key: str) -> tuple[dict[str, Any], str]:
    """A generic alert posted to intake (body, incident id), once the resolution stage knows its incident."""
    body = {**generic_alert(), "dedup_key": dedup_key}
    first = await svc.post("/v1/alerts", body)
    assert first.status_code == 202 and first.json()["action"] == "logged", first.text
    incident_id: str = first.json()["incident_id"]
    await state_of(res, incident_id, "logged")
    return body, incident_id


async def close_for_good(res: httpx.AsyncClient, svc: Intake, incident_id: str, dedup_key: str) -> None:
    """Resolve and close the incident, and wait until intake has forgotten its key."""
    for action, payload in (("resolve", {"code": "fixed", "root_cause": "bigger disk"}), ("close", {})):
        done = await res.post(f"/v1/incidents/{incident_id}/{action}", json=payload, headers=RESPONDER)
        assert done.status_code == 200, done.text

    async def forgotten() -> bool:
        row = await key_state(svc, dedup_key)
        return row["status"] == "resolved" and row["reopenable_until"] is None

    await eventually(forgotten, timeout=60, what="intake heard of the closure")


async def resolution_events(svc: Intake, incident_id: str, event_type: str, count: int) -> list[Envelope]:
    async def check() -> list[Envelope]:
        found = [
            e
            for e in await topic_events(svc.settings.kafka_bootstrap, svc.settings.topic(Stream.INCIDENTS))
            if str(e.incident_id) == incident_id and e.event_type == event_type
        ]
        return found if len(found) >= count else []

    return await eventually(check, timeout=60, what=f"{count} x {event_type} of {incident_id}")


async def test_resolve_then_refire_reopens_and_after_closure_a_new_incident_is_logged(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with resolution(infra, make_database, topic_prefix) as res, intake(settings) as svc:
        body, incident_id = await logged_in_both(svc, res, "db-1-disk")

        # A person resolves it while the alert still fires at its source.
        resolved = await res.post(
            f"/v1/incidents/{incident_id}/resolve",
            json={"code": "fixed", "root_cause": "log rotation"},
            headers=RESPONDER,
        )
        assert resolved.status_code == 200, resolved.text

        async def reopenable() -> bool:
            row = await key_state(svc, "db-1-disk")
            return row["status"] == "resolved" and row["reopenable_until"] is not None

        await eventually(reopenable, timeout=60, what="intake heard of the resolution")

        # The source sends it again: the fix did not hold. Same incident, reopened.
        again = await svc.post("/v1/alerts", body)
        assert again.status_code == 202, again.text
        assert (again.json()["action"], again.json()["incident_id"]) == ("correlated", incident_id)
        (reopened,) = await resolution_events(svc, incident_id, "IncidentReopened", 1)
        assert reopened.payload["by"] == {"kind": "alert_refired", "person": None, "dedup_key": "db-1-disk"}
        assert reopened.producer == "resolution"
        state = await state_of(res, incident_id, "in_progress")
        assert state["reopened"] == 1
        row = await key_state(svc, "db-1-disk")
        assert (row["status"], row["reopenable_until"], str(row["incident_id"])) == ("firing", None, incident_id)

        # Resolved and closed for good: the next trigger is a new problem.
        await close_for_good(res, svc, incident_id, "db-1-disk")
        new = await svc.post("/v1/alerts", body)
        assert new.json()["action"] == "logged" and new.json()["incident_id"] != incident_id, new.text
        await state_of(res, new.json()["incident_id"], "logged")
        await resolution_events(svc, incident_id, "IncidentClosed", 1)
        assert len(await resolution_events(svc, incident_id, "IncidentReopened", 1)) == 1


async def test_a_new_episode_after_auto_resolution_reopens_and_the_ha_resend_is_ignored(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with resolution(infra, make_database, topic_prefix) as res, intake(settings) as svc:
        firing = alertmanager_body(am_alert("fp-re"))
        opened = await svc.post("/v1/integrations/alertmanager", firing)
        assert opened.status_code == 202, opened.text
        [incident_id] = opened.json()["incident_ids"]
        await state_of(res, incident_id, "logged")
        gone = await svc.post("/v1/integrations/alertmanager", alertmanager_body(am_alert("fp-re", status="resolved")))
        assert gone.json()["alerts"][0]["action"] == "resolved", gone.text
        (auto,) = await resolution_events(svc, incident_id, "IncidentResolved", 1)
        assert auto.payload["auto"] is True

        async def reopenable() -> bool:
            return (await key_state(svc, "fp-re"))["reopenable_until"] is not None

        await eventually(reopenable, timeout=60, what="intake heard of the auto-resolution")
        # The HA pair's late 'firing' of the resolved episode: still ignored.
        late = await svc.post("/v1/integrations/alertmanager", firing)
        assert late.json()["alerts"][0]["action"] == "ignored", late.text
        # A new episode of the same alert: the same incident, reopened.
        next_episode = {**am_alert("fp-re"), "startsAt": "2026-03-01T12:00:00.000Z"}
        refire = await svc.post("/v1/integrations/alertmanager", alertmanager_body(next_episode))
        assert refire.json()["alerts"][0] == {"dedup_key": "fp-re", "action": "correlated", "incident_id": incident_id}
        (reopened,) = await resolution_events(svc, incident_id, "IncidentReopened", 1)
        assert reopened.payload["by"]["kind"] == "alert_refired"
        await state_of(res, incident_id, "in_progress")
        logged = [e for e in await svc.events() if e.event_type == "IncidentLogged"]
        assert [str(e.incident_id) for e in logged] == [incident_id]
        assert uuid.UUID(incident_id)


async def test_an_alert_attached_to_an_incident_closed_meanwhile_opens_a_new_one(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    """Intake learns of a closure from the log, so a trigger it takes meanwhile goes to the closed
    incident. The resolution stage refuses it (CorrelationRefused), and intake opens the new
    incident the alert belongs to, which then goes down the pipeline like any other. The race is
    set up by publishing the AlertCorrelated such a trigger makes, once the incident is closed."""
    settings = await make_settings(infra, make_database, topic_prefix)
    async with resolution(infra, make_database, topic_prefix) as res, intake(settings) as svc:
        body, closed_id = await logged_in_both(svc, res, "db-2-disk")
        await close_for_good(res, svc, closed_id, "db-2-disk")
        [logged] = [e for e in await svc.events() if e.event_type == "IncidentLogged"]
        racing = await publish_correlated(svc, logged, occurrence=2)

        # Refused by the stage that closed it; the alert opens a new incident, told like the first.
        (refusal,) = await resolution_events(svc, closed_id, "CorrelationRefused", 1)
        assert refusal.payload["alert"] == racing.payload and "closed" in refusal.payload["reason"]
        assert refusal.causation_id == racing.event_id

        async def reopened_elsewhere() -> list[Envelope]:
            return [e for e in await svc.events() if e.event_type == "IncidentLogged" and e.causation_id]

        (new,) = await eventually(reopened_elsewhere, timeout=60, what="a new incident for the refused alert")
        assert new.causation_id == refusal.event_id and new.correlation_id == refusal.correlation_id
        assert new.incident_id != logged.incident_id and new.actor == logged.actor
        same = ("title", "description", "service", "environment", "labels", "severity", "dedup_key", "integration_id")
        assert {k: new.payload[k] for k in same} == {k: logged.payload[k] for k in same}
        await state_of(res, str(new.incident_id), "logged")
        row = await key_state(svc, "db-2-disk")
        assert (row["status"], row["incident_id"]) == ("firing", new.incident_id)
        again = await svc.post("/v1/alerts", body)
        assert (again.json()["action"], again.json()["incident_id"]) == ("correlated", str(new.incident_id))

        # Another trigger that raced the closure: refused too, but the new incident has the key now.
        late = await publish_correlated(svc, logged, occurrence=3)
        (_, second) = await resolution_events(svc, closed_id, "CorrelationRefused", 2)
        assert second.causation_id == late.event_id

        async def applied() -> bool:
            query = sa.text("SELECT count(*) FROM inbox WHERE event_id = :id")
            async with svc.runtime.engine.connect() as conn:
                return bool(await conn.scalar(query, {"id": second.event_id}))

        await eventually(applied, timeout=60, what="intake applied the second refusal")
        assert len(await reopened_elsewhere()) == 1
        assert (await key_state(svc, "db-2-disk"))["incident_id"] == new.incident_id


async def publish_correlated(svc: Intake, logged: Envelope, occurrence: int) -> Envelope:
    """The AlertCorrelated intake makes of a trigger of `logged`'s key that it attaches to
    `logged`'s incident, published as intake's relay would."""
    told = {k: v for k, v in logged.payload.items() if k in AlertCorrelated.model_fields}
    told.update(occurrence_count=occurrence, first_seen=logged.payload["received_at"], last_seen=datetime.now(UTC))
    payload = AlertCorrelated.model_validate(told)
    envelope = new_event(
        payload,
        producer="intake",
        actor=logged.actor,
        incident_id=logged.incident_id,
        correlation_id=f"race-{occurrence}",
    )
    producer = AIOKafkaProducer(bootstrap_servers=svc.settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(svc.settings.topic(Stream.INCIDENTS), envelope.to_bytes(), key=envelope.key)
    finally:
        await producer.stop()
    return envelope
