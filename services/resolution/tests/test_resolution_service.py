"""Resolution against the real Kafka and PostgreSQL, run in-process: auto-resolution from the
source's signals and reopening on a re-fire, resolve/close/reopen over HTTP with their refusals,
auto-close moved by a ManualClock, and the review a P1 needs before closure."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from opsledger.clock import ManualClock
from opsledger.events import Envelope, EventPayload, Stream, new_event
from opsledger.events.assignment import IncidentAcknowledged, IncidentAssigned
from opsledger.events.common import PersonRef
from opsledger.events.intake import AlertCorrelated, AlertResolved, IncidentLogged
from opsledger.events.triage import IncidentPrioritized, PriorityInputs
from opsledger.testing import TestInfra, eventually, read_topic, running_app, session_tokens
from opsledger.testing.helpers import envelopes
from resolution.app import build
from resolution.runtime import ResolutionRuntime
from resolution.settings import Settings

pytestmark = pytest.mark.integration

TOKENS = session_tokens()
RESPONDER = TOKENS.headers("alice", "responder", name="Alice Ops")
MANAGER = TOKENS.headers("mia", "manager", name="Mia Manager")
ANALYST = TOKENS.headers("ana", "analyst")
RITA = TOKENS.headers("rita", "reporter")
RON = TOKENS.headers("ron", "reporter")
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
async def settings(infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str) -> Settings:
    settings = Settings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        relay_poll_seconds=0.05,
        log_json=False,
        **TOKENS.settings(),
    )
    return settings


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def app(settings: Settings, clock: ManualClock) -> FastAPI:
    return build(settings, clock)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(app) as c:
        yield c


@pytest.fixture
async def publish(settings: Settings, client: httpx.AsyncClient) -> AsyncIterator[Callable[..., Any]]:
    """Put events on the incidents topic the way the other stages' relays would (keyed by incident)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()

    async def send(incident_id: uuid.UUID, *payloads: EventPayload, actor: str = "system:test") -> list[Envelope]:
        sent = []
        for p in payloads:
            e = new_event(p, producer="test", actor=actor, incident_id=incident_id, occurred_at=T0)
            await producer.send_and_wait(settings.topic(Stream.INCIDENTS), e.to_bytes(), key=e.key)
            sent.append(e)
        return sent

    yield send
    await producer.stop()


def logged(incident_id: uuid.UUID, source: str = "alertmanager") -> IncidentLogged:
    return IncidentLogged(
        source=source,
        integration_id="int-am" if source != "manual" else None,
        occurred_at=T0,
        received_at=T0,
        title="db-1 disk 95% full",
        service="payments-db",
        severity="critical",  # type: ignore[arg-type]
        dedup_key=f"disk-{incident_id}",
    )


def prioritized(priority: str) -> IncidentPrioritized:
    return IncidentPrioritized(
        priority=priority, major=priority == "P1", inputs=PriorityInputs(impact=1, urgency=1), matrix_version=1
    )


def correlated(dedup_key: str) -> AlertCorrelated:
    return AlertCorrelated(
        source="alertmanager",
        integration_id="int-am",
        dedup_key=dedup_key,
        occurrence_count=2,
        first_seen=T0,
        last_seen=T0,
        severity="critical",  # type: ignore[arg-type]
    )


def alert_resolved(dedup_key: str) -> AlertResolved:
    return AlertResolved(source="alertmanager", integration_id="int-am", dedup_key=dedup_key, resolved_at=T0)


async def ours(settings: Settings, incident_id: uuid.UUID, event_type: str, count: int = 1) -> list[Envelope]:
    """The resolution service's events of `event_type` about the incident, once there are `count`."""

    async def check() -> list[Envelope]:
        records = await read_topic(settings.kafka_bootstrap, settings.topic(Stream.INCIDENTS))
        found = [
            e
            for e in envelopes(records)
            if e.incident_id == incident_id and e.producer == "resolution" and e.event_type == event_type
        ]
        return found if len(found) >= count else []

    return await eventually(check, timeout=60, what=f"{count} x {event_type} for {incident_id}")


async def state_of(client: httpx.AsyncClient, incident_id: uuid.UUID, expected: str | None = None) -> dict[str, Any]:
    """GET .../state once the service knows the incident (and, if given, it is in `expected`)."""

    async def check() -> dict[str, Any]:
        response = await client.get(f"/v1/incidents/{incident_id}/state", headers=ANALYST)
        if response.status_code != 200:
            return {}
        body: dict[str, Any] = response.json()
        return body if expected is None or body["state"] == expected else {}

    return await eventually(check, timeout=60, what=f"state of {incident_id} {expected or ''}")


async def test_alerts_resolving_at_the_source_resolve_and_a_re_fire_reopens(
    settings: Settings, client: httpx.AsyncClient, publish: Callable[..., Any]
) -> None:
    incident_id = uuid.uuid4()
    key, other = f"disk-{incident_id}", f"inodes-{incident_id}"
    await publish(incident_id, logged(incident_id), correlated(other), alert_resolved(key))

    async def one_still_firing() -> bool:
        state = await state_of(client, incident_id)
        return bool(state["alerts"] == {key: False, other: True} and state["state"] == "logged")

    await eventually(one_still_firing, timeout=60, what="the first alert resolved, the incident open")
    await publish(incident_id, alert_resolved(other))

    (resolved,) = await ours(settings, incident_id, "IncidentResolved")
    assert resolved.payload["auto"] is True and resolved.actor == "system:resolution"
    state = await state_of(client, incident_id, "resolved")
    assert state["alerts"] == {key: False, other: False} and state["resolution"]["auto"] is True
    assert state["auto_close_at"] == (T0 + timedelta(days=7)).isoformat().replace("+00:00", "Z")

    # The alert fires again within the window: the fix did not hold.
    (refire,) = await publish(incident_id, correlated(key))
    (reopened,) = await ours(settings, incident_id, "IncidentReopened")
    assert reopened.payload["by"] == {"kind": "alert_refired", "person": None, "dedup_key": key}
    assert reopened.causation_id == refire.event_id
    state = await state_of(client, incident_id, "in_progress")
    assert state["reopened"] == 1 and state["auto_close_at"] is None


async def test_resolve_close_reopen_over_http_with_auto_close_on_a_manual_clock(
    settings: Settings,
    app: FastAPI,
    client: httpx.AsyncClient,
    clock: ManualClock,
    publish: Callable[..., Any],
) -> None:
    incident_id = uuid.uuid4()
    url = f"/v1/incidents/{incident_id}"
    bob = PersonRef(sub="bob", name="Bob")
    await publish(incident_id, logged(incident_id, source="manual"), actor="user:rita")
    await publish(
        incident_id,
        prioritized("P3"),
        IncidentAssigned(team_id="dba", assignee=bob, reason="on call"),
        IncidentAcknowledged(via="api", by=bob),  # type: ignore[arg-type]
    )
    state = await state_of(client, incident_id, "acknowledged")
    assert [t["action"] for t in state["transitions"] if t["allowed"]] == ["resolve", "update"]

    # Unknown incident, closing unresolved, bad bodies.
    unknown = await client.post(
        f"/v1/incidents/{uuid.uuid4()}/resolve", json={"code": "fixed", "root_cause": "x"}, headers=RESPONDER
    )
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "path.incident_id"
    early = await client.post(f"{url}/close", json={}, headers=RESPONDER)
    assert early.status_code == 409, early.text
    assert early.json()["state"] == "acknowledged" and early.json()["missing"] == ["a resolution (POST .../resolve)"]
    no_cause = await client.post(f"{url}/resolve", json={"code": "fixed"}, headers=RESPONDER)
    assert no_cause.status_code == 422 and no_cause.json()["errors"][0]["field"] == "body.root_cause"
    blank = await client.post(f"{url}/updates", json={"audience": "stakeholders", "message": "  "}, headers=RESPONDER)
    assert blank.status_code == 422 and blank.json()["errors"][0]["field"] == "body.message"
    assert (
        await client.post(f"{url}/resolve", json={"code": "fixed", "root_cause": "x"}, headers=RITA)
    ).status_code == 403

    update = await client.post(
        f"{url}/updates", json={"audience": "stakeholders", "message": "restoring"}, headers=RESPONDER
    )
    assert update.status_code == 201 and update.json()["events"][0]["event_type"] == "IncidentStatusUpdated"

    clock.advance(timedelta(minutes=30))
    resolved = await client.post(f"{url}/resolve", json={"code": "fixed", "root_cause": "full disk"}, headers=RESPONDER)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["state"] == "resolved"
    again = await client.post(f"{url}/resolve", json={"code": "fixed", "root_cause": "x"}, headers=RESPONDER)
    assert again.status_code == 409 and again.json()["state"] == "resolved"
    assert again.json()["missing"] == ["reopen it first (POST .../reopen)"]

    # Only its reporter (or a responder) reopens it; then it is resolved again.
    assert (await client.post(f"{url}/reopen", json={"reason": "still down"}, headers=RON)).status_code == 403
    reopened = await client.post(f"{url}/reopen", json={"reason": "still down"}, headers=RITA)
    assert reopened.status_code == 200 and reopened.json()["state"] == "in_progress"
    resolved = await client.post(f"{url}/resolve", json={"code": "workaround", "root_cause": "disk"}, headers=RESPONDER)
    assert resolved.status_code == 200

    # Seven days later the durable timer closes it; reopening is refused after that.
    clock.advance(timedelta(days=7, seconds=1))
    runtime = app.state.runtime
    assert isinstance(runtime, ResolutionRuntime) and runtime.timers is not None
    await runtime.timers.run_due(clock.now())
    (closed,) = await ours(settings, incident_id, "IncidentClosed")
    assert closed.payload["auto"] is True and closed.payload["due_at"] is not None
    state = await state_of(client, incident_id, "closed")
    late = await client.post(f"{url}/reopen", json={"reason": "again"}, headers=RESPONDER)
    assert late.status_code == 409 and late.json()["state"] == "closed"
    assert (
        await client.post(f"{url}/resolve", json={"code": "fixed", "root_cause": "x"}, headers=RESPONDER)
    ).status_code == 409
    assert [e.event_type for e in await ours(settings, incident_id, "IncidentResolved", 2)] == ["IncidentResolved"] * 2


async def test_a_p1_closes_only_with_its_approved_review(
    settings: Settings, client: httpx.AsyncClient, publish: Callable[..., Any]
) -> None:
    incident_id = uuid.uuid4()
    url = f"/v1/incidents/{incident_id}"
    sent = await publish(incident_id, logged(incident_id), prioritized("P1"))

    async def p1() -> bool:
        return (await state_of(client, incident_id))["priority"] == "P1"

    await eventually(p1, timeout=60, what="the priority known")
    assert (
        await client.post(f"{url}/resolve", json={"code": "fixed", "root_cause": "disk"}, headers=RESPONDER)
    ).status_code == 200
    refused = await client.post(f"{url}/close", json={}, headers=RESPONDER)
    assert refused.status_code == 409, refused.text
    assert refused.json()["missing"] == ["an approved post-incident review (POST .../review)"]

    draft = await client.post(f"{url}/review/draft", headers=RESPONDER)
    assert draft.status_code == 200, draft.text
    timeline = draft.json()["timeline"]
    assert [e["event_id"] for e in timeline[:2]] == [str(e.event_id) for e in sent]
    assert timeline[-1]["event_type"] == "IncidentResolved" and draft.json()["review_required"] is True

    body = {
        "summary": "disk filled",
        "impact": "payments slow",
        "root_cause": "log rotation off",
        "action_items": [{"title": "Alert at 80%", "owner": {"sub": "bob"}, "due": "2026-12-15"}],
    }
    assert (await client.post(f"{url}/review", json=body, headers=RESPONDER)).status_code == 403
    approved = await client.post(f"{url}/review", json=body, headers=MANAGER)
    assert approved.status_code == 200, approved.text
    assert approved.json()["review"]["action_items"][0]["item_id"] == "A1"
    closed = await client.post(f"{url}/close", json={"code": "resolved"}, headers=RESPONDER)
    assert closed.status_code == 200 and closed.json()["state"] == "closed"

    markdown = await client.get(f"{url}/review.md", headers=ANALYST)
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert "approved by Mia Manager" in markdown.text and "| A1 | Alert at 80% | bob | 2026-12-15 |" in markdown.text
    (completed,) = await ours(settings, incident_id, "PostIncidentReviewCompleted")
    assert completed.actor == "user:mia" and completed.payload["timeline"][0]["event_id"] == str(sent[0].event_id)
