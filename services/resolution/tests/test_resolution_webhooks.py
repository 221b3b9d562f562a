"""Webhook delivery against the real Kafka and PostgreSQL and a local receiver: a subscription
created over HTTP (announced without its secret), signed deliveries, retries with backoff moved by a
ManualClock after the receiver fails, one idempotency key across attempts, every attempt visible by
API; refusals of bad subscriptions; and a SIGKILL of the service process while a delivery is in
flight, which repeats only that attempt, under the same key."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opsledger.clock import ManualClock
from opsledger.events import Envelope, EventPayload, Stream, new_event
from opsledger.events.assignment import IncidentAssigned
from opsledger.events.common import PersonRef
from opsledger.events.intake import IncidentLogged
from opsledger.testing import ServiceProcess, TestInfra, eventually, read_topic, running_app, session_tokens
from opsledger.testing.helpers import envelopes, free_port
from resolution import notify, store, webhooks
from resolution.app import build
from resolution.runtime import ResolutionRuntime
from resolution.settings import Settings

pytestmark = pytest.mark.integration

TOKENS = session_tokens()
MANAGER = TOKENS.headers("mia", "manager")
RESPONDER = TOKENS.headers("alice", "responder")
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
SECRET = "test-secret-0123456789abcdef"


@dataclass
class Receiver:
    """A local webhook receiver that fails its first `failures` requests with 503 (with
    `retry_after`: 429 and that Retry-After, as a rate-limited Slack answers); with `hold_first` its
    first request gets no answer until `release` is set."""

    failures: int = 0
    retry_after: str | None = None
    hold_first: bool = False
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def hook(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        if self.hold_first and len(self.received) == 1:
            await self.release.wait()
        if len(self.received) > self.failures:
            return Response(status_code=204)
        if self.retry_after is not None:
            return Response(status_code=429, headers={"Retry-After": self.retry_after})
        return Response(status_code=503)


@pytest.fixture
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[Receiver]:
    r = Receiver(**getattr(request, "param", {"failures": 2}))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=[Route("/hook", r.hook, methods=["POST"])]), port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), timeout=30, what="receiver started")
    r.url = f"http://127.0.0.1:{port}/hook"
    yield r
    r.release.set()
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


@pytest.fixture
async def settings(infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str) -> Settings:
    settings = Settings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        relay_poll_seconds=0.05,
        log_json=False,
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_retry_base_seconds=60,
        **TOKENS.settings(),
    )
    return settings


async def test_deliveries_are_signed_retried_with_one_key_and_recorded(settings: Settings, receiver: Receiver) -> None:
    clock = ManualClock(T0)
    app: FastAPI = build(settings, clock)
    async with running_app(app) as client:
        refused = await client.post(
            "/v1/subscriptions", json={"channel": "webhook", "target": "https://evil.test/x"}, headers=MANAGER
        )
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.target"
        email = await client.post(
            "/v1/subscriptions", json={"channel": "email", "target": "a@example.com"}, headers=MANAGER
        )
        assert email.status_code == 422 and email.json()["errors"][0]["field"] == "body.channel"
        assert (await client.post("/v1/subscriptions", json={}, headers=RESPONDER)).status_code == 403

        body = {
            "name": "dba pager",
            "channel": "webhook",
            "target": receiver.url,
            "filters": {"event_types": ["IncidentAssigned", "IncidentStatusUpdated"], "teams": ["dba"]},
            "secret": SECRET,
        }
        created = await client.post("/v1/subscriptions", json=body, headers=MANAGER)
        assert created.status_code == 201, created.text
        sub_id = created.json()["subscription_id"]
        assert created.json()["secret"] == SECRET and created.json()["version"] == 1

        incident_id = uuid.uuid4()
        await publish(
            settings,
            incident_id,
            IncidentLogged(
                source="manual",
                occurred_at=T0,
                received_at=T0,
                title="checkout blank",
                severity="high",  # type: ignore[arg-type]
                dedup_key=f"r-{incident_id}",
            ),
            IncidentAssigned(team_id="dba", assignee=PersonRef(sub="bob"), reason="on call"),
        )
        # The first attempt goes out at once and fails; each retry waits for its (manual) time.
        runtime = app.state.runtime
        assert isinstance(runtime, ResolutionRuntime) and runtime.timers is not None
        for expected in (1, 2, 3):
            if expected > 1:
                clock.advance(timedelta(hours=2))
                await runtime.timers.run_due(clock.now())
            await eventually(lambda n=expected: _count(receiver, n), timeout=60, what=f"{expected} request(s)")

        keys = {headers["idempotency-key"] for headers, _ in receiver.received}
        assert len(keys) == 1
        for headers, raw in receiver.received:
            assert notify.verify(SECRET, headers["x-opsledger-signature"], raw)
            assert headers["x-opsledger-event-type"] == "IncidentAssigned"
        headers, raw = receiver.received[-1]
        delivered = httpx.Response(200, content=raw).json()
        assert delivered["event"]["event_type"] == "IncidentAssigned" and delivered["incident"]["team"] == "dba"
        assert delivered["id"] == keys.pop()

        async def recorded() -> list[dict[str, Any]]:
            answer = await client.get(f"/v1/subscriptions/{sub_id}/deliveries", headers=MANAGER)
            deliveries: list[dict[str, Any]] = answer.json()["deliveries"]
            return deliveries if deliveries and deliveries[0]["status"] == "delivered" else []

        (delivery,) = await eventually(recorded, timeout=60, what="delivery recorded as delivered")
        assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 204]
        assert delivery["attempts"][0]["error"] == "the receiver answered 503"

        # This service's own event reaches the subscription too (the receiver is fine now).
        update = await client.post(
            f"/v1/incidents/{incident_id}/updates",
            json={"audience": "stakeholders", "message": "checkout restored"},
            headers=RESPONDER,
        )
        assert update.status_code == 201, update.text
        await eventually(lambda: _count(receiver, 4), timeout=60, what="the status update delivered")
        assert receiver.received[-1][0]["x-opsledger-event-type"] == "IncidentStatusUpdated"

        # Rotating the secret: both sign until the next rotation.
        rotated = await client.put(
            f"/v1/subscriptions/{sub_id}", json={**body, "secret": None, "rotate_secret": True}, headers=MANAGER
        )
        assert rotated.status_code == 200 and rotated.json()["rotating"] is True and rotated.json()["version"] == 2
        assert rotated.json()["secret"] not in (None, SECRET)

        async def announced() -> list[Envelope]:
            config = envelopes(await read_topic(settings.kafka_bootstrap, settings.topic(Stream.CONFIG)))
            found = [e for e in config if e.event_type == "SubscriptionChanged"]
            return found if len(found) == 2 else []

        changes = await eventually(announced, timeout=60, what="both subscription versions announced")
        assert [e.payload["version"] for e in changes] == [1, 2] and all("secret" not in e.payload for e in changes)
        assert changes[0].actor == "user:mia" and changes[0].subject == f"resolution.subscriptions.{sub_id}"


@pytest.mark.parametrize("receiver", [{"failures": 0}], indirect=True)
async def test_a_slack_webhook_owed_many_messages_at_once_gets_digests(
    settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def due(subscription_id: str, channel: str, n: int) -> SimpleNamespace:
        text = f"[P2] disk full {n}: IncidentAssigned (incident {uuid.uuid4()})"
        return SimpleNamespace(
            subscription_id=subscription_id,
            channel=channel,
            target=receiver.url,
            body={"text": text} if channel == "slack_webhook" else {"id": n},
            idempotency_key=uuid.uuid4().hex,
            event_type="IncidentAssigned",
            secret=SECRET,
            previous_secret=None,
            enabled=True,
            created_at=T0 + timedelta(seconds=n),
        )

    settings.digest_after = 3
    monkeypatch.setattr(webhooks, "SLACK_DIGEST_MAX", 3)  # five lines: a digest of three, then one of two
    slack = [due("sub-slack", "slack_webhook", n) for n in range(5)]
    plain = [due("sub-plain", "webhook", n) for n in range(5)]  # machines: one request per event, always
    rows = [*reversed(slack[3:]), *plain, *reversed(slack[:3])]
    outcomes = await webhooks.Webhooks(settings, ManualClock(T0))._post_all(rows, T0)
    assert [o.status_code for o in outcomes] == [204] * len(rows)

    texts = [httpx.Response(200, content=raw).json().get("text") for _, raw in receiver.received]
    assert len(receiver.received) == 5 + 2 and texts.count(None) == 5
    digests = [t for t in texts if t is not None]
    assert [t.split(":", 1)[0] for t in digests] == ["3 notifications", "2 notifications"], "in turn"
    listed = [line.removeprefix("• ") for t in digests for line in t.splitlines()[1:]]
    assert listed == [row.body["text"] for row in slack], "every message once, oldest first"
    for headers, raw in receiver.received:
        assert notify.verify(SECRET, headers["x-opsledger-signature"], raw)

    receiver.failures = len(receiver.received) + 1  # the next request is refused
    refused = await webhooks.Webhooks(settings, ManualClock(T0))._post_all(slack, T0)
    assert len(receiver.received) == 7 + 1, "after a refused digest, the next is not sent in the same round"
    assert [o.status_code for o in refused] == [503] * 5


@pytest.mark.parametrize("receiver", [{"failures": 1, "retry_after": "1800"}], indirect=True)
async def test_a_receiver_asking_to_wait_is_tried_again_no_sooner(settings: Settings, receiver: Receiver) -> None:
    clock = ManualClock(T0)
    app: FastAPI = build(settings, clock)
    async with running_app(app) as client:
        sub_id = await slack_hook_owed_one_page(client, settings, receiver)

        async def waiting() -> list[dict[str, Any]]:
            answer = await client.get(f"/v1/subscriptions/{sub_id}/deliveries", headers=MANAGER)
            deliveries: list[dict[str, Any]] = answer.json()["deliveries"]
            return deliveries if deliveries and deliveries[0]["attempts"] else []

        (delivery,) = await eventually(waiting, timeout=60, what="the first attempt recorded")
        assert [a["status_code"] for a in delivery["attempts"]] == [429]
        # Our own backoff would try again within 60 s (the base); the receiver asked for 30 minutes.
        assert datetime.fromisoformat(delivery["next_attempt_at"]) == T0 + timedelta(minutes=30)
        runtime = app.state.runtime
        assert isinstance(runtime, ResolutionRuntime) and runtime.timers is not None
        clock.advance(timedelta(minutes=29))
        await runtime.timers.run_due(clock.now())
        assert len(receiver.received) == 1, "not before the time the receiver asked for"
        clock.advance(timedelta(minutes=1))
        await runtime.timers.run_due(clock.now())
        await eventually(lambda: _count(receiver, 2), timeout=60, what="the second attempt")


@pytest.mark.parametrize("receiver", [{"failures": 4, "retry_after": "60"}], indirect=True)
async def test_a_rate_limited_delivery_uses_no_attempt_up_and_is_delivered_once_let_through(
    settings: Settings, receiver: Receiver
) -> None:
    """Four 429s with two attempts allowed: the delivery keeps waiting its turn, and goes out."""
    settings.webhook_max_attempts = 2
    clock = ManualClock(T0)
    app: FastAPI = build(settings, clock)
    async with running_app(app) as client:
        sub_id = await slack_hook_owed_one_page(client, settings, receiver)
        runtime = app.state.runtime
        assert isinstance(runtime, ResolutionRuntime) and runtime.timers is not None
        for expected in range(1, 6):
            if expected > 1:
                clock.advance(timedelta(hours=1))
                await runtime.timers.run_due(clock.now())
            await eventually(lambda n=expected: _count(receiver, n), timeout=60, what=f"{expected} request(s)")

        async def recorded() -> list[dict[str, Any]]:
            answer = await client.get(f"/v1/subscriptions/{sub_id}/deliveries", headers=MANAGER)
            deliveries: list[dict[str, Any]] = answer.json()["deliveries"]
            return deliveries if deliveries and deliveries[0]["status"] != "pending" else []

        (delivery,) = await eventually(recorded, timeout=60, what="the delivery settled")
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [429, 429, 429, 429, 204]


@pytest.mark.parametrize("receiver", [{"hold_first": True}], indirect=True)
async def test_a_sigkill_during_a_delivery_repeats_only_that_attempt_under_its_key(
    settings: Settings, receiver: Receiver, tmp_path: Any
) -> None:
    env = {
        **TOKENS.env(),
        "OPSLEDGER_DATABASE_URL": settings.database_url,
        "OPSLEDGER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OPSLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "OPSLEDGER_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "OPSLEDGER_RELAY_POLL_SECONDS": "0.05",
        "OPSLEDGER_LOG_JSON": "false",
        "OPSLEDGER_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
        "OPSLEDGER_WEBHOOK_TIMEOUT_SECONDS": "120",  # the held request stays in flight until the kill
    }
    service = ServiceProcess("resolution", env, log_dir=tmp_path)
    service.start()
    try:
        await service.wait_ready(timeout=90)
        async with httpx.AsyncClient(base_url=service.url) as client:
            body = {"channel": "webhook", "target": receiver.url, "secret": SECRET}
            created = await client.post("/v1/subscriptions", json=body, headers=MANAGER)
            assert created.status_code == 201, created.text
            sub_id = created.json()["subscription_id"]
        incident_id = uuid.uuid4()
        first, second = (
            IncidentAssigned(team_id="dba", assignee=PersonRef(sub=who), reason="on call") for who in ("bob", "eve")
        )
        await publish(settings, incident_id, first)
        await eventually(lambda: _count(receiver, 1), timeout=60, what="the first request in flight")
        service.kill()  # SIGKILL while the receiver holds the request: the attempt never committed

        service = ServiceProcess("resolution", env, log_dir=tmp_path)
        service.start()
        await service.wait_ready(timeout=90)
        await eventually(lambda: _count(receiver, 2), timeout=60, what="the attempt repeated after the restart")
        await publish(settings, incident_id, second)
        await eventually(lambda: _count(receiver, 3), timeout=60, what="the next event delivered")

        keys = [headers["idempotency-key"] for headers, _ in receiver.received]
        assert keys[0] == keys[1] != keys[2], "only the attempt in flight was repeated, under its key"
        assert all(notify.verify(SECRET, h["x-opsledger-signature"], raw) for h, raw in receiver.received)
        async with httpx.AsyncClient(base_url=service.url) as client:

            async def delivered() -> list[dict[str, Any]]:
                answer = await client.get(f"/v1/subscriptions/{sub_id}/deliveries", headers=MANAGER)
                found: list[dict[str, Any]] = answer.json()["deliveries"]
                return found if len(found) == 2 and all(d["status"] == "delivered" for d in found) else []

            deliveries = await eventually(delivered, timeout=60, what="both deliveries recorded")
        assert sorted(d["idempotency_key"] for d in deliveries) == sorted({keys[0], keys[2]})
        assert [len(d["attempts"]) for d in deliveries] == [1, 1], "the killed attempt left no record"
    finally:
        service.kill()


async def test_a_round_of_due_deliveries_is_read_in_the_order_they_were_staged(settings: Settings) -> None:
    """One consumed batch stages its deliveries with one `created_at`; a round reads them in that
    order (one incident's emails then go out in the order of its events), not in the random order
    of their event ids."""
    app: FastAPI = build(settings, ManualClock(T0))
    async with running_app(app):
        runtime: ResolutionRuntime = app.state.runtime
        incident_id = uuid.uuid4()
        staged = [uuid.uuid4() for _ in range(12)]
        rows = [
            {
                "subscription_id": "sub-order",
                "event_id": event_id,
                "idempotency_key": f"key-{n}",
                "event_type": "IncidentAssigned",
                "incident_id": incident_id,
                "channel": "email",
                "target": "a@example.com",
                "body": {"n": n},
                "status": "pending",
                "attempts": 0,
                "created_at": T0,
                "next_attempt_at": T0,
            }
            for n, event_id in enumerate(staged)
        ]
        async with runtime.sessionmaker() as session, session.begin():
            await store.add_deliveries(session, rows)
        async with runtime.sessionmaker() as session, session.begin():
            due = await store.pending_deliveries(session, {("sub-order", e) for e in reversed(staged)})
    assert [r.event_id for r in due] == staged


async def slack_hook_owed_one_page(client: httpx.AsyncClient, settings: Settings, receiver: Receiver) -> str:
    """A Slack webhook subscription to `receiver` for assignments, and one assignment on the log."""
    body = {"channel": "slack_webhook", "target": receiver.url, "filters": {"event_types": ["IncidentAssigned"]}}
    created = await client.post("/v1/subscriptions", json=body, headers=MANAGER)
    assert created.status_code == 201, created.text
    await publish(settings, uuid.uuid4(), IncidentAssigned(team_id="dba", assignee=PersonRef(sub="bob"), reason="x"))
    subscription_id: str = created.json()["subscription_id"]
    return subscription_id


async def _count(receiver: Receiver, n: int) -> bool:
    assert len(receiver.received) <= n, f"more requests than expected: {len(receiver.received)}"
    return len(receiver.received) == n


async def publish(settings: Settings, incident_id: uuid.UUID, *payloads: EventPayload) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for p in payloads:
            e = new_event(p, producer="test", actor="system:test", incident_id=incident_id, occurred_at=T0)
            await producer.send_and_wait(settings.topic(Stream.INCIDENTS), e.to_bytes(), key=e.key)
    finally:
        await producer.stop()
