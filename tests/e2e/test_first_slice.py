"""The first slice end to end: intake, triage and reporting as real processes on the real Kafka
and PostgreSQL. A monitoring system posts an Alertmanager alert and a PagerDuty trigger to intake;
an analyst then finds both incidents through reporting, categorized, prioritized, with a timeline
naming every event and its producer. Re-sent alerts open no new incident."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger.testing import ServiceProcess, TestInfra, eventually, session_tokens

from .platform import running_services

pytestmark = pytest.mark.integration

INTEGRATION_KEY = "e2e-integration-key-0123456789"
TOKENS = session_tokens()
ANALYST = TOKENS.headers("e2e-analyst", "analyst", name="E2E Analyst")

ALERTMANAGER = {
    "version": "4",
    "groupKey": '{}:{alertname="HighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "opsledger",
    "groupLabels": {"alertname": "HighErrorRate"},
    "commonLabels": {"alertname": "HighErrorRate", "service": "checkout", "severity": "critical"},
    "commonAnnotations": {"summary": "5xx rate above 5% on checkout"},
    "externalURL": "http://alertmanager.example:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "HighErrorRate",
                "service": "checkout",
                "severity": "critical",
                "env": "prod",
                "instance": "checkout-1:8080",
            },
            "annotations": {
                "summary": "5xx rate above 5% on checkout",
                "description": "HTTP 500 responses from the checkout application exceed 5% for 10m",
            },
            "startsAt": "2026-11-22T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=rate",
            "fingerprint": "c0ffee1234567890",
        }
    ],
}

PAGERDUTY = {
    "routing_key": INTEGRATION_KEY,
    "event_action": "trigger",
    "dedup_key": "db-1-disk-full",
    "payload": {
        "summary": "Disk full on database host db-1",
        "source": "db-1.example",
        "severity": "error",
        "component": "postgres",
        "group": "database",
        "class": "disk",
    },
}


@pytest.fixture
async def platform(
    infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str, tmp_path: Path
) -> AsyncIterator[dict[str, ServiceProcess]]:
    async with running_services(
        ("intake", "triage", "reporting"),
        infra=infra,
        make_database=make_database,
        topic_prefix=topic_prefix,
        log_dir=tmp_path,
        tokens=TOKENS,
        integration_key=INTEGRATION_KEY,
        extra_env={"OPSLEDGER_LOG_JSON": "true"},
    ) as processes:
        yield processes


async def post_alerts(intake: httpx.AsyncClient) -> tuple[str, str]:
    """Both alerts as the monitoring systems send them; the incident ids intake answered with."""
    am = await intake.post(
        "/v1/integrations/alertmanager", json=ALERTMANAGER, headers={"Authorization": f"Bearer {INTEGRATION_KEY}"}
    )
    assert am.status_code == 202, am.text
    pd = await intake.post("/v2/enqueue", json=PAGERDUTY)
    assert pd.status_code == 202, pd.text
    assert pd.json()["status"] == "success" and pd.json()["dedup_key"] == "db-1-disk-full"
    [am_incident] = am.json()["incident_ids"]
    return am_incident, pd.json()["incident_id"]


async def test_alerts_become_triaged_incidents_with_a_full_timeline(platform: dict[str, ServiceProcess]) -> None:
    async with (
        httpx.AsyncClient(base_url=platform["intake"].url, timeout=10) as intake,
        httpx.AsyncClient(base_url=platform["reporting"].url, headers=ANALYST, timeout=10) as reporting,
        httpx.AsyncClient(base_url=platform["triage"].url, headers=ANALYST, timeout=10) as triage,
    ):
        am_incident, pd_incident = await post_alerts(intake)
        assert am_incident != pd_incident

        async def triaged(incident_id: str) -> dict[str, Any] | None:
            response = await reporting.get(f"/v1/incidents/{incident_id}")
            if response.status_code != 200:
                return None
            body: dict[str, Any] = response.json()
            return body if body["category"] and body["priority"] else None

        am = await eventually(lambda: triaged(am_incident), timeout=60, what="alertmanager incident triaged")
        pd = await eventually(lambda: triaged(pd_incident), timeout=60, what="pagerduty incident triaged")
        assert (am["source"], am["status"], am["service"]) == ("alertmanager", "open", "checkout")
        assert am["severity"] == "critical" and am["dedup_key"] == "c0ffee1234567890"
        assert (pd["source"], pd["status"], pd["dedup_key"]) == ("pagerduty", "open", "db-1-disk-full")
        # Triage's default rules read the alerts as a monitoring team would.
        assert (am["category"], am["subcategory"]) == ("Application", "Errors")
        assert (pd["category"], pd["subcategory"]) == ("Storage", "Capacity")
        for incident in (am, pd):
            assert incident["priority"] in {"P1", "P2", "P3", "P4", "P5"}
            assert incident["logged_at"] and incident["occurred_at"]
            # The read model says what triage decided, and triage can say why.
            decision = (await triage.get(f"/v1/incidents/{incident['incident_id']}/triage")).json()
            assert (decision["category"], decision["priority"]) == (incident["category"], incident["priority"])
            assert decision["explanation"]["priority"].startswith(incident["priority"])

        for incident_id in (am_incident, pd_incident):
            response = await reporting.get(f"/v1/incidents/{incident_id}/timeline")
            assert response.status_code == 200, response.text
            events = response.json()["events"]
            produced = {(e["event_type"], e["producer"]) for e in events}
            assert {("IncidentLogged", "intake"), ("IncidentCategorized", "triage"),
                    ("IncidentPrioritized", "triage")} <= produced  # fmt: skip
            assert all(e["producer"] and e["actor"] and e["occurred_at"] for e in events)
            logged = next(e for e in events if e["event_type"] == "IncidentLogged")
            triage_events = [e for e in events if e["producer"] == "triage"]
            assert all(e["causation_id"] == logged["event_id"] for e in triage_events[:2])

        # Alertmanager re-sends the group periodically; a PagerDuty client retries: no new incident.
        again = await post_alerts(intake)
        assert again == (am_incident, pd_incident)

        async def correlated() -> bool:
            items = (await reporting.get("/v1/incidents", params={"limit": 100})).json()["items"]
            return all(i["alert_count"] == 2 for i in items) and len(items) == 2

        await eventually(correlated, timeout=60, what="re-sent alerts correlated to the same incidents")
        items = (await reporting.get("/v1/incidents")).json()["items"]
        assert sorted(i["incident_id"] for i in items) == sorted([am_incident, pd_incident])
        assert (await reporting.get("/v1/audit/verify")).json()["ok"]
