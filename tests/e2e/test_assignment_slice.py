"""The first slice reaches a person: intake, triage and assignment (demo configuration seeded, as
`make up` does) as real processes on the real Kafka and PostgreSQL. The first alert is assigned to
the demo responder on call, who acknowledges it with her own token; a PagerDuty `acknowledge` of
another alert counts as an acknowledgement by the integration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger.events import Stream
from opsledger.testing import ServiceProcess, TestInfra, eventually, read_topic, session_tokens
from opsledger.testing.helpers import envelopes

from .platform import running_services

pytestmark = pytest.mark.integration

INTEGRATION_KEY = "e2e-assignment-key-0123456789"
TOKENS = session_tokens()
ANALYST = TOKENS.headers("e2e-analyst", "analyst")
ON_CALL = TOKENS.headers("demo-responder", "responder", name="Riley Responder")


@pytest.fixture
async def platform(
    infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str, tmp_path: Path
) -> AsyncIterator[dict[str, ServiceProcess]]:
    async with running_services(
        ("intake", "triage", "assignment"),
        infra=infra,
        make_database=make_database,
        topic_prefix=topic_prefix,
        log_dir=tmp_path,
        tokens=TOKENS,
        integration_key=INTEGRATION_KEY,
        extra_env={"OPSLEDGER_DEMO": "1"},
    ) as processes:
        yield processes


async def test_the_first_alert_is_assigned_to_the_on_call_who_acknowledges_it(
    platform: dict[str, ServiceProcess], topic_prefix: str, infra: TestInfra
) -> None:
    async with (
        httpx.AsyncClient(base_url=platform["intake"].url, timeout=10) as intake,
        httpx.AsyncClient(base_url=platform["assignment"].url, timeout=10) as assignment,
    ):
        alert = {"dedup_key": "db-1-disk", "title": "db-1 disk 95% full", "severity": "critical", "service": "db"}
        posted = await intake.post("/v1/alerts", json=alert, headers={"Authorization": f"Bearer {INTEGRATION_KEY}"})
        assert posted.status_code == 202, posted.text
        incident_id = posted.json()["incident_id"]
        pd = {
            "routing_key": INTEGRATION_KEY,
            "event_action": "trigger",
            "dedup_key": "web-1-cpu",
            "payload": {"summary": "CPU high on web-1", "source": "web-1", "severity": "warning"},
        }
        triggered = await intake.post("/v2/enqueue", json=pd)
        assert triggered.status_code == 202, triggered.text
        pd_incident = triggered.json()["incident_id"]

        async def assigned(incident: str) -> dict[str, Any] | None:
            response = await assignment.get(f"/v1/incidents/{incident}/assignment", headers=ANALYST)
            body: dict[str, Any] = response.json()
            return body if response.status_code == 200 and body["assignee"] else None

        state = await eventually(lambda: assigned(incident_id), timeout=90, what="incident assigned")
        assert state is not None
        assert (state["team_id"], state["assignee"]["sub"], state["tier"]) == ("demo", "demo-responder", 0)
        assert state["ack_due_at"] is not None
        assert "on call in schedule Demo primary" in state["reason"]

        acked = await assignment.post(f"/v1/incidents/{incident_id}/acknowledge", headers=ON_CALL)
        assert acked.status_code == 200, acked.text
        assert acked.json()["assignment"]["acknowledged_by"] == "user:demo-responder"
        assert acked.json()["assignment"]["ack_due_at"] is None

        # The alert source acknowledges the other one (PagerDuty's `acknowledge`).
        await eventually(lambda: assigned(pd_incident), timeout=90, what="pagerduty incident assigned")
        acknowledge = await intake.post("/v2/enqueue", json=pd | {"event_action": "acknowledge"})
        assert acknowledge.status_code == 202, acknowledge.text

        async def on_the_log() -> dict[str, list[Any]]:
            records = await read_topic(infra.kafka_bootstrap, f"{topic_prefix}.{Stream.INCIDENTS}")
            found: dict[str, list[Any]] = {incident_id: [], pd_incident: []}
            for e in envelopes(records):
                if str(e.incident_id) in found and e.producer == "assignment":
                    found[str(e.incident_id)].append(e)
            assert [e.event_type for e in found[pd_incident]] == ["IncidentAssigned", "IncidentAcknowledged"]
            return found

        found = await eventually(on_the_log, timeout=90, what="assignment's events on the log")
        [assigned_event, ack_event] = found[incident_id]
        assert assigned_event.event_type == "IncidentAssigned"
        assert assigned_event.payload["assignee"]["sub"] == "demo-responder"
        assert "on call in schedule Demo primary" in assigned_event.payload["reason"]
        assert (ack_event.event_type, ack_event.actor) == ("IncidentAcknowledged", "user:demo-responder")
        assert ack_event.payload["by"]["sub"] == "demo-responder"
        assert found[pd_incident][1].payload["via"] == "integration"
