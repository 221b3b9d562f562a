"""A P1 nobody acknowledges: intake, triage, assignment (demo team seeded, as `make up` does) and
sla as real processes. The SLA stage warns and then breaches the response target, and the
assignment stage escalates the incident to the next tier of its policy because of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger.events import Envelope, Stream
from opsledger.testing import ServiceProcess, TestInfra, eventually, read_topic, session_tokens
from opsledger.testing.helpers import envelopes

from .platform import running_services

pytestmark = pytest.mark.integration

INTEGRATION_KEY = "e2e-sla-key-0123456789abcdef0123"
TOKENS = session_tokens()
ADMIN = TOKENS.headers("e2e-admin", "admin")
REPORTER = TOKENS.headers("e2e-reporter", "reporter", name="Sam Reporter")
RESPONSE_SECONDS = 6  # short enough for a test, long enough to be assigned first


@pytest.fixture
async def platform(
    infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str, tmp_path: Path
) -> AsyncIterator[dict[str, ServiceProcess]]:
    async with running_services(
        ("intake", "triage", "assignment", "sla"),
        infra=infra,
        make_database=make_database,
        topic_prefix=topic_prefix,
        log_dir=tmp_path,
        tokens=TOKENS,
        integration_key=INTEGRATION_KEY,
        extra_env={"OPSLEDGER_DEMO": "1"},
    ) as processes:
        yield processes


async def test_an_unacknowledged_p1_warns_breaches_and_is_escalated(
    platform: dict[str, ServiceProcess], topic_prefix: str, infra: TestInfra
) -> None:
    async with httpx.AsyncClient(base_url=platform["sla"].url, headers=ADMIN, timeout=10) as sla:
        policy = (await sla.get("/v1/policies/defaults")).json()
        for rule in policy["rules"]:
            rule.update(response_seconds=RESPONSE_SECONDS, warning_percents=[50])
            rule["calendar"] = {**rule["calendar"], "twenty_four_seven": True, "working_hours": []}
        changed = await sla.put("/v1/policies", json={**policy, "comment": "e2e: short response targets"})
        assert changed.status_code == 200, changed.text
    async with httpx.AsyncClient(base_url=platform["intake"].url, headers=REPORTER, timeout=10) as intake:
        reported = await intake.post(
            "/v1/incidents",
            json={
                "title": "Checkout is down for every customer",
                "service": "checkout",
                "business_impact": {"level": "high", "text": "no order can be placed"},
                "urgency_hint": 1,
            },
        )
        assert reported.status_code == 201, reported.text
    incident = reported.json()["incident_id"]
    topic = f"{topic_prefix}.{Stream.INCIDENTS}"

    async def escalated() -> list[Envelope]:
        records = await read_topic(infra.kafka_bootstrap, topic, timeout=5)
        mine = [e for e in envelopes(records) if str(e.incident_id) == incident]
        done = any(e.event_type == "SlaBreached" for e in mine) and any(
            e.event_type == "IncidentEscalated" for e in mine
        )
        return mine if done else []

    events = await eventually(escalated, timeout=90, interval=1, what="warned, breached and escalated")
    by_type: dict[str, list[Envelope]] = {}
    for e in events:
        by_type.setdefault(e.event_type, []).append(e)
    assert by_type["IncidentPrioritized"][0].payload["priority"] == "P1"
    [warning] = [e for e in by_type["SlaWarning"] if e.payload["target"] == "response"]
    [breach] = [e for e in by_type["SlaBreached"] if e.payload["target"] == "response"]
    assert warning.payload["threshold_percent"] == 50 and breach.payload["fired_at"] >= breach.payload["due_at"]
    assert "IncidentAcknowledged" not in by_type, "nobody acknowledged it"
    escalation = by_type["IncidentEscalated"][0]
    assert escalation.payload["cause"] in ("sla_warning", "sla_breached"), escalation.payload
    assert escalation.causation_id in {warning.event_id, breach.event_id}
    # The escalation hands the incident to the policy's next tier: a second assignment.
    tiers = [e.payload["tier"] for e in by_type["IncidentAssigned"]]
    assert tiers[:2] == [0, 1], tiers
    # One escalation per cause, however the stages interleave.
    causes = [e.causation_id for e in by_type["IncidentEscalated"]]
    assert len(causes) == len(set(causes))
