"""Each format end to end against the real Kafka and PostgreSQL: HTTP in, event on the log out;
de-duplication, the PagerDuty dedup_key lifecycle, flapping, concurrency, integration keys."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from opsledger.events import Envelope, Stream
from opsledger.testing import TestInfra

from .harness import ADMIN, TOKENS, intake, make_settings
from .samples import alertmanager_body, am_alert, generic_alert, grafana_body, pagerduty_event, report

pytestmark = pytest.mark.integration


def of_type(events: list[Envelope], event_type: str) -> list[Envelope]:
    return [e for e in events if e.event_type == event_type]


async def test_generic_alert_is_logged_with_envelope_and_payload(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        response = await svc.client.post(
            "/v1/alerts", json=generic_alert(), headers={**svc.auth, "X-Request-ID": "req-42"}
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["action"] == "logged"
        [event] = await svc.events(at_least=1)
    assert event.event_type == "IncidentLogged" and event.schema_version == 2
    assert str(event.incident_id) == body["incident_id"] == event.subject
    assert (event.producer, event.actor, event.correlation_id) == ("intake", "integration:test", "req-42")
    p = event.payload
    assert (p["source"], p["integration_name"], p["title"], p["severity"]) == (
        "generic",
        "test",
        "Queue backlog growing",
        "high",
    )
    assert (p["service"], p["environment"], p["labels"], p["dedup_key"]) == (
        "orders",
        "prod",
        {"queue": "orders"},
        body["dedup_key"],
    )
    assert p["occurred_at"].startswith("2026-03-01T09:59:00") and p["raw"] == generic_alert()


async def test_alertmanager_resend_correlates_and_resolve_is_signalled(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    body = alertmanager_body(am_alert("fp-1"), am_alert("fp-2", instance="10.0.0.2:8080"))
    async with intake(settings) as svc:
        first = await svc.post("/v1/integrations/alertmanager", body)
        again = await svc.post("/v1/integrations/alertmanager", body)  # Alertmanager's periodic re-send
        assert first.status_code == again.status_code == 202, again.text
        assert [a["action"] for a in first.json()["alerts"]] == ["logged", "logged"]
        assert [a["action"] for a in again.json()["alerts"]] == ["correlated", "correlated"]
        assert first.json()["incident_ids"] == again.json()["incident_ids"]
        resolved = alertmanager_body(am_alert("fp-1", status="resolved"), status="resolved")
        done = await svc.post("/v1/integrations/alertmanager", resolved)
        assert done.json()["alerts"][0]["action"] == "resolved"
        events = await svc.events(at_least=5)
    logged = of_type(events, "IncidentLogged")
    assert len(logged) == 2 and {e.payload["dedup_key"] for e in logged} == {"fp-1", "fp-2"}
    assert {e.payload["source"] for e in logged} == {"alertmanager"}
    assert {e.payload["severity"] for e in logged} == {"critical"}
    correlated = of_type(events, "AlertCorrelated")
    assert len(correlated) == 2 and {e.payload["occurrence_count"] for e in correlated} == {2}
    by_key = {e.payload["dedup_key"]: e.incident_id for e in logged}
    assert {e.incident_id for e in correlated} == set(by_key.values())
    [res] = of_type(events, "AlertResolved")
    assert res.incident_id == by_key["fp-1"] and res.payload["resolved_at"].startswith("2026-03-01T10:30")


async def test_an_ha_pairs_late_firing_for_a_resolved_episode_is_ignored(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    """Two Alertmanagers notify for the same episode; one's 'firing' arrives after the other's
    'resolved'. Same startsAt: ignored, not a new incident. A later episode opens a new one."""
    settings = await make_settings(infra, make_database, topic_prefix)
    firing = alertmanager_body(am_alert("fp-ha"))
    async with intake(settings) as svc:
        opened = await svc.post("/v1/integrations/alertmanager", firing)
        await svc.post("/v1/integrations/alertmanager", alertmanager_body(am_alert("fp-ha", status="resolved")))
        late = await svc.post("/v1/integrations/alertmanager", firing)
        assert late.status_code == 202, late.text
        assert late.json()["alerts"][0]["action"] == "ignored"
        assert late.json()["alerts"][0]["incident_id"] == opened.json()["incident_ids"][0]
        next_episode = {**am_alert("fp-ha"), "startsAt": "2026-03-01T12:00:00.000Z"}
        reopened = await svc.post("/v1/integrations/alertmanager", alertmanager_body(next_episode))
        assert reopened.json()["alerts"][0]["action"] == "logged"
        events = await svc.events(at_least=3)
    assert len(of_type(events, "IncidentLogged")) == 2
    assert of_type(events, "AlertCorrelated") == []


async def test_grafana_webhook_is_logged_as_grafana(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        response = await svc.post("/v1/integrations/alertmanager", grafana_body())
        assert response.status_code == 202, response.text
        [event] = await svc.events(at_least=1)
    assert event.payload["source"] == "grafana" and event.payload["severity"] == "medium"
    assert event.payload["source_severity"] == "warning"
    assert str(event.incident_id) == response.json()["incident_ids"][0]


async def test_pagerduty_dedup_key_lifecycle(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:

        async def send(action: str, dedup_key: str | None = None) -> dict[str, Any]:
            response = await svc.client.post("/v2/enqueue", json=pagerduty_event(svc.key, action, dedup_key))
            assert response.status_code == 202, response.text
            body: dict[str, Any] = response.json()
            assert (body["status"], body["message"]) == ("success", "Event processed")
            return body

        first = await send("trigger")  # no dedup_key: generated and returned
        key = first["dedup_key"]
        assert key and (await send("trigger", key))["incident_id"] == first["incident_id"]
        assert (await send("acknowledge", key))["incident_id"] == first["incident_id"]
        assert (await send("resolve", key))["incident_id"] == first["incident_id"]
        third = await send("trigger", key)
        assert third["incident_id"] != first["incident_id"]
        events = await svc.events(at_least=5)
    assert [e.event_type for e in events] == [
        "IncidentLogged",
        "AlertCorrelated",
        "AlertAcknowledged",
        "AlertResolved",
        "IncidentLogged",
    ]
    assert [str(e.incident_id) for e in events] == [first["incident_id"]] * 4 + [third["incident_id"]]
    p = events[0].payload
    assert (p["source"], p["severity"], p["source_severity"], p["title"]) == (
        "pagerduty",
        "high",
        "error",
        "DB replica lag > 30s",
    )
    assert "routing_key" not in p["raw"] and p["raw"]["payload"]["custom_details"]["lag_seconds"] == 42


async def test_person_report_is_logged(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        reporter = TOKENS.headers("u-rowan", "reporter", name="Rowan Reporter", email="rowan@example.com")
        response = await svc.client.post("/v1/incidents", json=report(), headers=reporter)
        assert response.status_code == 201, response.text
        anonymous = await svc.client.post("/v1/incidents", json=report(reporter=None), headers=reporter)
        nameless = TOKENS.headers("u-nameless", "responder")
        bare = await svc.client.post("/v1/incidents", json=report(reporter=None), headers=nameless)
        assert bare.status_code == 201, bare.text
        analyst = await svc.client.post("/v1/incidents", json=report(), headers=TOKENS.headers("u-ana", "analyst"))
        assert analyst.status_code == 403 and "reporter, responder, manager, admin" in analyst.json()["detail"]
        [event, second, third] = await svc.events(at_least=3)
    assert str(event.incident_id) == response.json()["incident_id"]
    assert event.actor == "user:u-rowan"  # who authenticated; the named reporter is in the payload
    p = event.payload
    assert p["source"] == "manual" and p["reporter"] == {"name": "Ada Lovelace", "email": "ada@example.com"}
    assert p["business_impact"] == {"text": "no revenue from card payments", "level": "high"}
    assert (p["severity"], p["urgency_hint"], p["service"]) == ("high", 1, "checkout")
    assert p["occurred_at"].startswith("2026-03-01T09:50") and p["received_at"] > p["occurred_at"]
    # Without a named reporter, the token's name and email claims are the reporter.
    assert str(second.incident_id) == anonymous.json()["incident_id"] and second.actor == "user:u-rowan"
    assert second.payload["reporter"] == {"name": "Rowan Reporter", "email": "rowan@example.com"}
    assert third.actor == "user:u-nameless" and third.payload["reporter"]["name"] == "user:u-nameless"


async def test_concurrent_posts_of_one_alert_open_one_incident(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        responses = await asyncio.gather(
            *(svc.post("/v1/alerts", generic_alert(dedup_key="same-key")) for _ in range(20))
        )
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["incident_id"] for r in responses}) == 1
        events = await svc.events(at_least=20)
    assert Counter(e.event_type for e in events) == {"IncidentLogged": 1, "AlertCorrelated": 19}
    assert sorted(e.payload["occurrence_count"] for e in of_type(events, "AlertCorrelated")) == list(range(2, 21))


async def test_flapping_alert_stops_opening_incidents(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix, flap_max_transitions=2)
    async with intake(settings) as svc:
        actions = []
        for status in ["firing", "resolved", "firing", "resolved", "firing", "resolved", "firing"]:
            response = await svc.post("/v1/alerts", generic_alert(dedup_key="flappy", status=status))
            assert response.status_code == 202, response.text
            actions.append(response.json()["action"])
        events = await svc.events(at_least=8)
    assert actions == ["logged", "resolved", "logged", "resolved", "suppressed", "resolved", "suppressed"]
    assert [e.event_type for e in events if e.incident_id == events[-1].incident_id] == [
        "IncidentLogged", "AlertResolved", "AlertFlapping", "AlertCorrelated", "AlertResolved", "AlertCorrelated",
    ], "the second incident takes the flapping alert's later firings instead of a third incident"  # fmt: skip
    assert len(events) == 8 and len(of_type(events, "IncidentLogged")) == 2
    [flapping] = of_type(events, "AlertFlapping")
    assert flapping.payload["dedup_key"] == "flappy" and flapping.payload["transitions"] == 3


async def test_integration_keys_admin_and_disable(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        created = await svc.client.post(
            "/v1/integrations", json={"name": "prom", "kind": "alertmanager"}, headers=ADMIN
        )
        assert created.status_code == 201
        integration = created.json()
        key = integration["key"]
        analyst = TOKENS.headers("test-analyst", "analyst")
        assert (await svc.client.get("/v1/integrations", headers=analyst)).status_code == 403
        assert (await svc.client.get("/v1/integrations")).status_code == 401
        listed = (await svc.client.get("/v1/integrations", headers=ADMIN)).json()
        assert [i["name"] for i in listed] == ["test", "prom"]
        assert all("key" not in i and "key_hash" not in i for i in listed)
        # A kind-restricted key only posts its kind.
        assert (await svc.post("/v1/integrations/alertmanager", alertmanager_body(am_alert()), key)).status_code == 202
        assert (await svc.post("/v1/alerts", generic_alert(), key)).status_code == 403
        gone = await svc.client.delete(f"/v1/integrations/{integration['integration_id']}", headers=ADMIN)
        assert gone.status_code == 200 and gone.json()["disabled_at"] is not None
        again = await svc.client.delete(f"/v1/integrations/{integration['integration_id']}", headers=ADMIN)
        assert again.status_code == 200
        refused = await svc.post("/v1/integrations/alertmanager", alertmanager_body(am_alert()), key)
        assert refused.status_code == 403 and "disabled" in refused.json()["detail"]
        missing = await svc.client.delete(f"/v1/integrations/{uuid.uuid4()}", headers=ADMIN)
        assert missing.status_code == 404
        config = await svc.events(Stream.CONFIG, at_least=3)
    assert [e.event_type for e in config] == ["IntegrationCreated", "IntegrationCreated", "IntegrationDisabled"]
    assert config[1].payload == {
        "integration_id": integration["integration_id"],
        "name": "prom",
        "kind": "alertmanager",
        "key_prefix": key[:6],
    }
    assert key not in str([e.payload for e in config])
    assert config[2].subject == integration["integration_id"] and config[2].actor == "user:test-admin"


@contextlib.contextmanager
def key_reads(svc: Any) -> Iterator[list[str]]:
    """The reads of the integrations table made meanwhile."""
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM integrations" in statement:
            reads.append(statement)

    event.listen(svc.runtime.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield reads
    finally:
        event.remove(svc.runtime.engine.sync_engine, "before_cursor_execute", count)


async def test_alerts_arriving_together_for_an_uncached_key_read_it_once(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    """When a key's cache entry expires under load, the requests in flight wait for one read of
    the integrations table, where each took a database connection for the same row."""
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        svc.runtime.key_cache._entries.clear()  # as when the entry's time is up
        with key_reads(svc) as reads:
            posts = [svc.post("/v1/alerts", generic_alert(dedup_key=f"together-{n}")) for n in range(20)]
            answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers]
    assert len(reads) == 1, reads


async def test_an_unknown_key_is_read_once_per_cache_period_and_a_created_key_works_at_once(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    """A sender posting with a wrong key costs one read of the integrations table per cache
    period, not one per request; a key created meanwhile is not hidden by it."""
    settings = await make_settings(infra, make_database, topic_prefix)
    async with intake(settings) as svc:
        with key_reads(svc) as reads:
            for n in range(10):
                refused = await svc.post("/v1/alerts", generic_alert(dedup_key=f"typo-{n}"), key="wr0ng-key-0123456789")
                assert refused.status_code == 401, refused.text
        assert len(reads) == 1, reads
        created = await svc.client.post("/v1/integrations", json={"name": "new", "kind": "any"}, headers=ADMIN)
        accepted = await svc.post("/v1/alerts", generic_alert(dedup_key="new-key"), created.json()["key"])
        assert accepted.status_code == 202, accepted.text


async def test_bootstrap_key_is_upserted_once(infra: TestInfra, make_database: Any, topic_prefix: str) -> None:
    settings = await make_settings(infra, make_database, topic_prefix, bootstrap_integration_key="demo-key-123456")
    for _ in range(2):  # a restart must not create a second integration or event
        async with intake(settings) as svc:
            response = await svc.post("/v1/alerts", generic_alert(), key="demo-key-123456")
            assert response.status_code == 202, response.text
            names = [i["name"] for i in (await svc.client.get("/v1/integrations", headers=ADMIN)).json()]
    assert names.count("demo") == 1
    config = await svc.events(Stream.CONFIG, at_least=3)
    assert [e.payload["name"] for e in of_type(config, "IntegrationCreated")].count("demo") == 1
