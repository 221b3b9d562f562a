"""Triage against the real Kafka and PostgreSQL, run in-process: IncidentLogged in ->
IncidentCategorized + IncidentPrioritized out, re-prioritization on correlation and on a
reporter's update, override precedence, configuration changes and dry runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from opsledger.events import Envelope, Stream, derived_event_id, new_event
from opsledger.events.intake import AlertCorrelated, IncidentDetailsUpdated, IncidentLogged
from opsledger.testing import TestInfra, eventually, read_topic, running_app, session_tokens
from opsledger.testing.helpers import envelopes
from triage.app import build
from triage.settings import Settings

pytestmark = pytest.mark.integration

TOKENS = session_tokens()
ADMIN = TOKENS.headers("test-admin", "admin")
MANAGER = TOKENS.headers("test-manager", "manager")
ANALYST = TOKENS.headers("test-analyst", "analyst")
RESPONDER = TOKENS.headers("test-responder", "responder")
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
async def settings(infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str) -> Settings:
    return Settings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        relay_poll_seconds=0.05,
        service_criticality={"payments": 1},
        log_json=False,
        **TOKENS.settings(),
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(build(settings)) as c:
        yield c


@pytest.fixture
async def publish(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    """Put envelopes on the incidents topic the way intake's relay would (keyed by incident)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()

    async def send(*events: Envelope) -> None:
        for e in events:
            await producer.send_and_wait(settings.topic(Stream.INCIDENTS), e.to_bytes(), key=e.key)

    yield send
    await producer.stop()


def logged(incident_id: uuid.UUID, **fields: Any) -> Envelope:
    body: dict[str, Any] = dict(
        source="alertmanager",
        occurred_at=T0,
        received_at=T0,
        title="Postgres replica lag above 300s",
        service="payments",
        environment="prod",
        severity="high",
        dedup_key=f"dk-{incident_id}",
        labels={"team": "dba"},
    )
    body.update(fields)
    return new_event(
        IncidentLogged.model_validate(body),
        producer="intake",
        actor="integration:am",
        incident_id=incident_id,
        correlation_id=f"alert-{incident_id}",
    )


def correlated(incident_id: uuid.UUID, count: int, severity: str) -> Envelope:
    payload = AlertCorrelated(
        source="alertmanager",
        dedup_key=f"dk-{incident_id}",
        occurrence_count=count,
        first_seen=T0,
        last_seen=T0,
        severity=severity,  # type: ignore[arg-type]
    )
    return new_event(payload, producer="intake", actor="integration:am", incident_id=incident_id)


async def incident_events(settings: Settings, incident_id: uuid.UUID, producer: str = "triage") -> list[Envelope]:
    records = await read_topic(settings.kafka_bootstrap, settings.topic(Stream.INCIDENTS))
    return [e for e in envelopes(records) if e.incident_id == incident_id and e.producer == producer]


async def config_events(settings: Settings) -> list[Envelope]:
    return envelopes(await read_topic(settings.kafka_bootstrap, settings.topic(Stream.CONFIG)))


def of_type(events: list[Envelope], event_type: str) -> list[Envelope]:
    return [e for e in events if e.event_type == event_type]


async def wait_for(settings: Settings, incident_id: uuid.UUID, event_type: str, count: int = 1) -> list[Envelope]:
    async def check() -> list[Envelope]:
        found = of_type(await incident_events(settings, incident_id), event_type)
        return found if len(found) >= count else []

    return await eventually(check, timeout=60, what=f"{count} x {event_type} for {incident_id}")


async def test_logged_incident_is_categorized_and_prioritized(
    settings: Settings, client: httpx.AsyncClient, publish: Callable[..., Any]
) -> None:
    incident_id = uuid.uuid4()
    cause = logged(incident_id)
    await publish(cause)

    categorized = (await wait_for(settings, incident_id, "IncidentCategorized"))[0]
    prioritized = (await wait_for(settings, incident_id, "IncidentPrioritized"))[0]
    # Derived from the IncidentLogged: deterministic ids, causation and correlation carried on.
    assert categorized.event_id == derived_event_id(cause.event_id, "IncidentCategorized")
    assert prioritized.event_id == derived_event_id(cause.event_id, "IncidentPrioritized")
    assert categorized.causation_id == prioritized.causation_id == cause.event_id
    assert categorized.correlation_id == f"alert-{incident_id}"
    assert categorized.subject == str(incident_id) and categorized.actor == "system:triage"

    c = categorized.payload
    assert (c["category"], c["subcategory"], c["rule_id"]) == ("Database", "Replication", "database-replication")
    assert c["rule_set_version"] == 1 and c["overridden"] is False
    assert c["affected_service"] == "payments"
    assert c["inputs"]["service"] == "payments" and "database-replication" in c["inputs"]["matched_rules"]

    p = prioritized.payload
    # payments has criticality 1 (impact 1), severity high -> urgency 2: P2 through the default matrix.
    assert (p["priority"], p["major"], p["matrix_version"]) == ("P2", False, 1)
    assert (p["inputs"]["impact"], p["inputs"]["urgency"], p["inputs"]["severity"]) == (1, 2, "high")
    assert p["inputs"]["service_criticality"] == 1
    assert p["inputs"]["impact_reasons"] == ["service payments has criticality 1"]
    assert p["inputs"]["urgency_reasons"] == ["severity high -> urgency 2"]

    # Exactly one of each, and the triage decision is readable with its explanation.
    events = await incident_events(settings, incident_id)
    assert [e.event_type for e in events] == ["IncidentCategorized", "IncidentPrioritized"]
    response = await client.get(f"/v1/incidents/{incident_id}/triage", headers=ANALYST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["priority"], body["category"], body["major"]) == ("P2", "Database", False)
    assert "impact 1" in body["explanation"]["priority"] and "matrix v1" in body["explanation"]["priority"]
    assert body["explanation"]["category"].startswith("rule database-replication")

    # The defaults were put in force as version 1 and announced on the config stream.
    async def defaults_announced() -> list[Envelope]:
        found = await config_events(settings)
        return found if len(found) == 3 else []

    config = await eventually(defaults_announced, timeout=30, what="default config events")
    assert sorted(e.event_type for e in config) == [
        "CategoryTreeChanged",
        "PriorityMatrixChanged",
        "TriageRulesChanged",
    ]
    assert all(e.actor == "system:triage" and e.payload["version"] == 1 for e in config)
    assert (await client.get(f"/v1/incidents/{uuid.uuid4()}/triage", headers=ANALYST)).status_code == 404
    assert (await client.get(f"/v1/incidents/{incident_id}/triage")).status_code == 401

    # A redelivered IncidentLogged changes nothing. The critical repeat behind it (same key, same
    # partition) is a fence: once its reaction is out, the duplicate has been handled.
    await publish(cause, correlated(incident_id, 2, "critical"))
    await wait_for(settings, incident_id, "IncidentReprioritized")
    events = await incident_events(settings, incident_id)
    assert [e.event_type for e in events] == ["IncidentCategorized", "IncidentPrioritized", "IncidentReprioritized"]


async def test_correlated_alert_and_reporter_update_reprioritize(
    settings: Settings, client: httpx.AsyncClient, publish: Callable[..., Any]
) -> None:
    incident_id = uuid.uuid4()
    # An unknown service in production, severity medium: default impact 2 x urgency 2 -> P3.
    await publish(logged(incident_id, title="Checkout error rate above 5%", service="shop", severity="medium"))
    first = (await wait_for(settings, incident_id, "IncidentPrioritized"))[0]
    assert first.payload["priority"] == "P3"

    # A repeat at lower severity changes nothing; one at critical raises urgency to 1 -> P2.
    raise_to_critical = correlated(incident_id, 3, "critical")
    await publish(correlated(incident_id, 2, "low"), raise_to_critical)
    re = (await wait_for(settings, incident_id, "IncidentReprioritized"))[0]
    assert (re.payload["priority"], re.payload["previous_priority"]) == ("P2", "P3")
    assert "raised severity from medium to critical" in re.payload["reason"]
    assert re.payload["inputs"]["urgency"] == 1 and re.payload["inputs"]["severity"] == "critical"
    assert re.causation_id == raise_to_critical.event_id
    assert re.event_id == derived_event_id(raise_to_critical.event_id, "IncidentReprioritized")

    # The reporter says business impact is high: impact 1 x urgency 1 -> P1, a major incident.
    update = new_event(
        IncidentDetailsUpdated.model_validate({"business_impact": {"level": "high"}, "reason": "checkout down"}),
        producer="intake",
        actor="person:alice",
        incident_id=incident_id,
    )
    await publish(update)
    second = (await wait_for(settings, incident_id, "IncidentReprioritized", count=2))[1]
    assert (second.payload["priority"], second.payload["previous_priority"], second.payload["major"]) == (
        "P1",
        "P2",
        True,
    )
    assert "business impact from unstated to high" in second.payload["reason"]
    assert second.payload["inputs"]["business_impact"] == "high"

    # Nothing else was emitted for this incident: the low-severity repeat caused no event.
    events = await incident_events(settings, incident_id)
    assert [e.event_type for e in events] == [
        "IncidentCategorized",
        "IncidentPrioritized",
        "IncidentReprioritized",
        "IncidentReprioritized",
    ]


async def test_override_wins_over_automation_until_cleared(
    settings: Settings, client: httpx.AsyncClient, publish: Callable[..., Any]
) -> None:
    incident_id = uuid.uuid4()
    await publish(logged(incident_id, title="Checkout error rate above 5%", service="shop", severity="medium"))
    await wait_for(settings, incident_id, "IncidentPrioritized")

    # Bad overrides are refused, naming the fault, and change nothing.
    url = f"/v1/incidents/{incident_id}/override"
    bad = await client.post(url, json={"priority": "P9", "reason": "x"}, headers=MANAGER)
    assert bad.status_code == 422 and "priority" in bad.text
    assert bad.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in bad.json()["errors"]] == ["body.priority"], bad.text
    bad = await client.post(url, json={"category": "Nope", "reason": "x"}, headers=MANAGER)
    assert bad.status_code == 422 and "unknown category 'Nope'" in bad.text
    neither = await client.post(url, json={"reason": "x"}, headers=MANAGER)
    assert neither.status_code == 422 and neither.json()["errors"][0]["field"] == "body.category"
    for who in (ANALYST, RESPONDER):
        refused = await client.post(url, json={"priority": "P1", "reason": "x"}, headers=who)
        assert refused.status_code == 403 and "manager, admin" in refused.json()["detail"]
    missing = await client.post(
        f"/v1/incidents/{uuid.uuid4()}/override", json={"priority": "P1", "reason": "x"}, headers=ADMIN
    )
    assert missing.status_code == 404 and missing.json()["status"] == 404

    response = await client.post(
        url, json={"priority": "P4", "category": "Network", "reason": "known flaky probe"}, headers=MANAGER
    )
    assert response.status_code == 200, response.text
    recat = (await wait_for(settings, incident_id, "IncidentCategorized", count=2))[1]
    assert (recat.payload["category"], recat.payload["overridden"], recat.actor) == (
        "Network",
        True,
        "user:test-manager",
    )
    over = (await wait_for(settings, incident_id, "IncidentReprioritized"))[0]
    assert (over.payload["priority"], over.payload["previous_priority"], over.payload["overridden"]) == (
        "P4",
        "P3",
        True,
    )
    assert "known flaky probe" in over.payload["reason"]

    # Automation would now say P2 (severity critical), but the override stands.
    await publish(correlated(incident_id, 2, "critical"))

    async def automation_saw_it() -> dict[str, Any]:
        body: dict[str, Any] = (await client.get(f"/v1/incidents/{incident_id}/triage", headers=ANALYST)).json()
        return body if body["automatic"]["prioritization"]["priority"] == "P2" else {}

    body = await eventually(automation_saw_it, what="correlated alert applied")
    assert (body["priority"], body["category"]) == ("P4", "Network")
    assert "set by user:test-manager" in body["explanation"]["priority"]

    # Clearing the priority override lets automation decide: P4 -> P2, announced with the reason.
    cleared = await client.delete(url, params={"field": "priority", "reason": "probe fixed"}, headers=MANAGER)
    assert cleared.status_code == 200, cleared.text
    back = (await wait_for(settings, incident_id, "IncidentReprioritized", count=2))[1]
    assert (back.payload["priority"], back.payload["previous_priority"], back.payload["overridden"]) == (
        "P2",
        "P4",
        False,
    )
    assert "override of priority cleared by user:test-manager" in back.payload["reason"]
    events = await incident_events(settings, incident_id)
    assert [e.event_type for e in events] == [
        "IncidentCategorized",
        "IncidentPrioritized",
        "IncidentCategorized",
        "IncidentReprioritized",
        "TriageOverrideCleared",
        "IncidentReprioritized",
    ]
    # The category override is still in force; clearing an override that is not there is a conflict.
    again = await client.delete(url, params={"field": "priority"}, headers=ADMIN)
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "query.field"
    body = (await client.get(f"/v1/incidents/{incident_id}/triage", headers=ANALYST)).json()
    assert (body["priority"], body["category"], sorted(body["overrides"])) == ("P2", "Network", ["category"])


async def test_configuration_changes_are_validated_versioned_and_announced(
    settings: Settings, client: httpx.AsyncClient, publish: Callable[..., Any]
) -> None:
    rules = (await client.get("/v1/rules", headers=ANALYST)).json()
    assert rules["version"] == 1 and rules["rules"][0]["id"] == "non-production"

    # Faults are named, and version 1 stays in force.
    bad_regex = [{"id": "slow-db", "when": {"title_regex": "(slow"}, "set": {"category": "Database"}}]
    response = await client.put("/v1/rules", json={"rules": bad_regex}, headers=ADMIN)
    assert response.status_code == 422
    assert "rules[0] (id 'slow-db').when.title_regex" in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "body.rules[0] (id 'slow-db').when.title_regex"
    shape = await client.put("/v1/rules", json={"rules": [1]}, headers=ADMIN)
    assert shape.status_code == 422 and shape.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in shape.json()["errors"]] == ["body.rules.0"], shape.text
    response = await client.put("/v1/rules", json={"rules": []}, headers=ADMIN)
    assert response.status_code == 422 and "empty" in response.json()["detail"]
    response = await client.put("/v1/rules", json={"rules": [{"id": "x", "set": {"category": "Nope"}}]}, headers=ADMIN)
    assert response.status_code == 422 and "unknown category 'Nope'" in response.json()["detail"]
    assert (await client.put("/v1/rules", json={"rules": bad_regex}, headers=ANALYST)).status_code == 403
    assert (await client.get("/v1/rules", headers=ANALYST)).json()["version"] == 1
    response = await client.put("/v1/matrix", json={"matrix": {**{"1/1": 6}}}, headers=ADMIN)
    assert response.status_code == 422 and "matrix['1/1']" in response.json()["detail"]
    response = await client.put("/v1/categories", json={"categories": {"Network": [], "Other": []}}, headers=ADMIN)
    assert response.status_code == 422 and "(id 'security-malware').set.category" in response.json()["detail"]

    new_rules = [
        {"id": "payments-hot", "when": {"service": ["payments"], "severity": ["critical"]}, "set": {"urgency": 1}},
        {"id": "lag", "when": {"title_regex": r"replica lag \d+"}, "set": {"category": "Storage", "impact": 3}},
    ]
    response = await client.put(
        "/v1/rules", json={"rules": new_rules, "comment": "storage team owns lag"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    matrix = {
        f"{i}/{u}": ("P1" if (i, u) == (1, 1) else "P2" if i + u <= 3 else "P4") for i in (1, 2, 3) for u in (1, 2, 3)
    }
    response = await client.put("/v1/matrix", json={"matrix": matrix}, headers=ADMIN)
    assert response.status_code == 200 and response.json()["version"] == 2

    history = (await client.get("/v1/rules/history", headers=ANALYST)).json()["versions"]
    assert [v["version"] for v in history] == [2, 1]
    assert (history[0]["changed_by"], history[0]["comment"]) == ("user:test-admin", "storage team owns lag")
    assert [v["version"] for v in (await client.get("/v1/matrix/history", headers=ANALYST)).json()["versions"]] == [
        2,
        1,
    ]

    async def announced() -> list[Envelope]:
        found = [e for e in await config_events(settings) if e.actor == "user:test-admin"]
        return found if len(found) == 2 else []

    changes = await eventually(announced, what="config change events")
    assert [(e.event_type, e.payload["version"]) for e in changes] == [
        ("TriageRulesChanged", 2),
        ("PriorityMatrixChanged", 2),
    ]
    assert changes[0].payload["rules"][1]["id"] == "lag" and changes[0].subject == "triage.rules"

    # The next incident is triaged with the new versions.
    incident_id = uuid.uuid4()
    await publish(logged(incident_id, title="replica lag 300s"))
    c = (await wait_for(settings, incident_id, "IncidentCategorized"))[0].payload
    p = (await wait_for(settings, incident_id, "IncidentPrioritized"))[0].payload
    assert (c["category"], c["rule_id"], c["rule_set_version"]) == ("Storage", "lag", 2)
    assert (p["inputs"]["impact"], p["inputs"]["urgency"], p["priority"], p["matrix_version"]) == (3, 2, "P4", 2)
    assert p["rule_id"] == "lag"


async def test_dry_run_reports_changes_and_emits_nothing(
    settings: Settings, client: httpx.AsyncClient, publish: Callable[..., Any]
) -> None:
    incident_id = uuid.uuid4()
    await publish(logged(incident_id))
    await wait_for(settings, incident_id, "IncidentPrioritized")
    await eventually(lambda: config_events(settings), what="default config events")
    incidents_before = len(await read_topic(settings.kafka_bootstrap, settings.topic(Stream.INCIDENTS)))

    candidate = [{"id": "lag", "when": {"keywords": ["replica lag"]}, "set": {"category": "Storage", "urgency": 1}}]
    sample = {"title": "Postgres replica lag", "service": "payments", "severity": "high"}
    response = await client.post("/v1/rules/dry-run", json={"rules": candidate, "sample": sample}, headers=ANALYST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sample"]["current"]["category"] == "Database"
    assert body["sample"]["candidate"]["category"] == "Storage"
    assert body["sample"]["candidate"]["priority"] == "P1"
    assert "category" in body["sample"]["changed"] and "priority" in body["sample"]["changed"]
    assert body["incidents"]["evaluated"] == 1 and body["incidents"]["would_change"] == 1
    change = body["incidents"]["changes"][0]
    assert change["incident_id"] == str(incident_id)
    assert (change["current"]["priority"], change["candidate"]["priority"]) == ("P2", "P1")

    bad = await client.post("/v1/rules/dry-run", json={"rules": [{"id": "r", "set": {}}]}, headers=ANALYST)
    assert bad.status_code == 422 and "sets nothing" in bad.json()["detail"]

    # Fence: a real change after the dry run. The outbox publishes in order, so had the dry run
    # staged anything it would be on the topics before this change's event.
    fence = await client.put("/v1/rules", json={"rules": candidate}, headers=ADMIN)
    assert fence.status_code == 200

    async def fence_published() -> list[Envelope]:
        return [e for e in await config_events(settings) if e.actor == "user:test-admin"]

    await eventually(fence_published, what="fence event")
    config = await config_events(settings)
    assert [e.event_type for e in config if e.actor != "system:triage"] == ["TriageRulesChanged"]
    assert len(await read_topic(settings.kafka_bootstrap, settings.topic(Stream.INCIDENTS))) == incidents_before
    # Nor did the dry run touch the rules in force or the incident's decision.
    assert (await client.get("/v1/rules", headers=ANALYST)).json()["version"] == 2
    triage = (await client.get(f"/v1/incidents/{incident_id}/triage", headers=ANALYST)).json()
    assert (triage["category"], triage["priority"]) == ("Database", "P2")


async def test_concurrent_and_hostile_configuration_changes(settings: Settings, client: httpx.AsyncClient) -> None:
    import asyncio

    assert (await client.get("/v1/rules", headers=ANALYST)).json()["version"] == 1

    # Hostile or malformed bodies: always a 4xx naming the fault, never a 500, nothing stored.
    slow = [{"id": "slow", "when": {"title_regex": r"(a+)\1"}, "set": {"impact": 1}}]  # not RE2
    bad_bodies: list[tuple[Any, str]] = [
        ({"rules": slow}, "rules[0] (id 'slow').when.title_regex"),
        ({"rules": [{"id": "r", "set": {"impact": True}}]}, "set.impact"),
        ({"rules": [{"id": "r", "when": {"keywords": ["*"]}, "set": {"impact": 1}}]}, "when.keywords"),
        ({"rules": [{"id": "r", "when": None, "set": {"impact": 1}}]}, "when"),
        ({"rules": [None]}, "rules"),
        ({"rules": "x"}, "rules"),
        ({"rules": [], "colour": "red"}, "colour"),
        ({"rules": [{"id": "r", "set": {"impact": 1}}], "expected_version": "1"}, "expected_version"),
    ]
    for body, named in bad_bodies:
        response = await client.put("/v1/rules", json=body, headers=ADMIN)
        assert response.status_code == 422, (body, response.text)
        assert named in response.text, (body, response.text)
    not_json = await client.put(
        "/v1/rules", content=b"{not json", headers={**ADMIN, "content-type": "application/json"}
    )
    assert not_json.status_code == 422
    huge = await client.put(
        "/v1/rules",
        content=b'{"rules": [' + b" " * (2 * 1024 * 1024) + b"]}",
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert huge.status_code == 413
    dry = await client.post("/v1/rules/dry-run", json={"rules": slow}, headers=ANALYST)
    assert dry.status_code == 422 and "RE2 syntax" in dry.text
    assert [v["version"] for v in (await client.get("/v1/rules/history", headers=ANALYST)).json()["versions"]] == [1]

    # Two admins save at once: both land, as consecutive versions; neither is lost or doubled.
    def rule_set(service: str) -> dict[str, Any]:
        return {"rules": [{"id": f"{service}-hot", "when": {"service": [service]}, "set": {"impact": 1}}]}

    first, second = await asyncio.gather(
        client.put("/v1/rules", json={**rule_set("a"), "expected_version": 1}, headers=ADMIN),
        client.put("/v1/rules", json={**rule_set("b"), "expected_version": 1}, headers=ADMIN),
    )
    # Both were made from version 1: exactly one wins, the other is told to reload (409).
    assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
    loser = first if first.status_code == 409 else second
    assert "version 2 is in force, not 1" in loser.json()["detail"]
    racing = await asyncio.gather(*(client.put("/v1/rules", json=rule_set(s), headers=ADMIN) for s in "cde"))
    assert sorted(r.json()["version"] for r in racing) == [3, 4, 5]
    history = (await client.get("/v1/rules/history", headers=ANALYST)).json()["versions"]
    assert [v["version"] for v in history] == [5, 4, 3, 2, 1]

    async def announced() -> list[Envelope]:
        found = [e for e in await config_events(settings) if e.event_type == "TriageRulesChanged"]
        return found if len(found) == 5 else []

    changes = await eventually(announced, what="one TriageRulesChanged per version")
    assert sorted(e.payload["version"] for e in changes) == [1, 2, 3, 4, 5]


async def test_defaults_are_served_as_put_bodies_so_an_existing_install_can_adopt_them(
    client: httpx.AsyncClient,
) -> None:
    for kind in ("categories", "rules", "matrix"):
        defaults = await client.get(f"/v1/{kind}/defaults", headers=ANALYST)
        assert defaults.status_code == 200, defaults.text
        in_force = (await client.get(f"/v1/{kind}", headers=ANALYST)).json()
        assert in_force["version"] == 1 and in_force["changed_by"] == "system:triage"
        assert {k: v for k, v in in_force.items() if k in defaults.json()} == defaults.json(), kind
        # Adopting them is a plain PUT of that body: a new version, announced like any change.
        adopted = await client.put(f"/v1/{kind}", json=defaults.json(), headers=ADMIN)
        assert adopted.status_code == 200 and adopted.json()["version"] == 2, adopted.text
    assert (await client.get("/v1/rules/defaults")).status_code == 401
    assert (await client.get("/v1/incidents/defaults", headers=ANALYST)).status_code == 422
