"""One incident through all eight stages, with the six services as real processes on the real Kafka
and PostgreSQL (demo configuration seeded, as `make up` does): logged (intake), categorized and
prioritized (triage), assigned to the on-call person who is emailed (assignment, then resolution's
paging subscription through an SMTP server started here), acknowledged, resolved with its root
cause, reviewed with an action item that becomes a task, closed; reporting's timeline shows every
step with its actor."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger import devmail
from opsledger.devtokens import demo_user
from opsledger.testing import ServiceProcess, TestInfra, eventually, session_tokens
from opsledger.testing.helpers import free_port

from .platform import running_services

pytestmark = pytest.mark.integration

SERVICES = ("intake", "triage", "assignment", "sla", "resolution", "reporting")
INTEGRATION_KEY = "e2e-lifecycle-key-0123456789"
TOKENS = session_tokens()
RESPONDER = demo_user("responder")
MANAGER = demo_user("manager")
ON_CALL = TOKENS.headers(RESPONDER.sub, "responder", name=RESPONDER.name, email=RESPONDER.email)
BOSS = TOKENS.headers(MANAGER.sub, "manager", name=MANAGER.name, email=MANAGER.email)
ANALYST = TOKENS.headers("e2e-analyst", "analyst")
WAIT = 90  # seconds: two loaded cores run six services here


@contextlib.asynccontextmanager
async def mail_catcher(folder: Path) -> AsyncIterator[int]:
    """`make up`'s mail catcher (opsledger.devmail) on a free port, in this test's event loop."""
    port, stop = free_port(), asyncio.Event()
    task = asyncio.create_task(devmail.serve("127.0.0.1", port, folder, stop))

    async def listening() -> bool:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        assert not task.done(), task
        return False

    await eventually(listening, timeout=30, what="the mail catcher listens")
    try:
        yield port
    finally:
        stop.set()
        await task


@pytest.fixture
async def platform(
    infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, ServiceProcess], Path]]:
    mail = tmp_path / "mail"
    async with (
        mail_catcher(mail) as smtp_port,
        running_services(
            SERVICES,
            infra=infra,
            make_database=make_database,
            topic_prefix=topic_prefix,
            log_dir=tmp_path,
            tokens=TOKENS,
            integration_key=INTEGRATION_KEY,
            extra_env={
                "OPSLEDGER_DEMO": "1",  # assignment's demo team; resolution's paging subscription
                "OPSLEDGER_SMTP_HOST": "127.0.0.1",
                "OPSLEDGER_SMTP_PORT": str(smtp_port),
                "OPSLEDGER_INCIDENT_LINK_TEMPLATE": "https://ops.example.com/incidents/{incident_id}",
            },
        ) as processes,
    ):
        yield processes, mail


def pages(folder: Path, incident_id: str) -> list[tuple[str, str, str]]:
    """(To, Subject, text) of every saved message about the incident."""
    found = []
    for path in sorted(folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        if incident_id in text:
            found.append((str(message["To"]), str(message["Subject"]), text))
    return found


async def test_an_incident_runs_through_all_eight_stages(
    platform: tuple[dict[str, ServiceProcess], Path],
) -> None:
    processes, mail = platform

    def client(name: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=processes[name].url, timeout=15)

    async with (
        client("intake") as intake,
        client("triage") as triage,
        client("assignment") as assignment,
        client("resolution") as resolution,
        client("reporting") as reporting,
    ):
        # 1. Logged.
        alert = {"dedup_key": "db-1-disk", "title": "db-1 disk 95% full", "severity": "medium", "service": "db"}
        posted = await intake.post("/v1/alerts", json=alert, headers={"Authorization": f"Bearer {INTEGRATION_KEY}"})
        assert posted.status_code == 202 and posted.json()["action"] == "logged", posted.text
        incident_id = posted.json()["incident_id"]
        url = f"/v1/incidents/{incident_id}"

        # 2-3. Categorized and prioritized.
        async def triaged() -> dict[str, Any] | None:
            response = await triage.get(f"{url}/triage", headers=ANALYST)
            body: dict[str, Any] = response.json()
            return body if response.status_code == 200 and body.get("priority") else None

        triage_state = await eventually(triaged, timeout=WAIT, what="incident triaged")
        priority = triage_state["priority"]

        # 4. Assigned to the demo team's on-call person, who is paged by email.
        async def assigned() -> dict[str, Any] | None:
            response = await assignment.get(f"{url}/assignment", headers=ANALYST)
            body: dict[str, Any] = response.json()
            return body if response.status_code == 200 and body["assignee"] else None

        state = await eventually(assigned, timeout=WAIT, what="incident assigned")
        assert (state["team_id"], state["assignee"]["sub"]) == ("demo", RESPONDER.sub)

        async def paged() -> list[tuple[str, str, str]]:
            return [p for p in await asyncio.to_thread(pages, mail, incident_id) if "IncidentAssigned" in p[1]]

        [(to, subject, text)] = await eventually(paged, timeout=WAIT, what="the on-call person's page")
        assert RESPONDER.email in to and f"[{priority}] db-1 disk 95% full" in subject
        assert f"Incident {incident_id}" in text and f"Priority: {priority}" in text
        assert "Why you:" in text and "on call" in text
        assert f"https://ops.example.com/incidents/{incident_id}" in text

        # 5. Acknowledged by that person.
        acked = await assignment.post(f"{url}/acknowledge", headers=ON_CALL)
        assert acked.status_code == 200, acked.text

        async def resolution_state(expected: str) -> dict[str, Any] | None:
            response = await resolution.get(f"{url}/state", headers=ANALYST)
            body: dict[str, Any] = response.json()
            return body if response.status_code == 200 and body["state"] == expected else None

        await eventually(lambda: resolution_state("acknowledged"), timeout=WAIT, what="resolution saw the ack")

        # 6. Resolved with its root cause.
        resolved = await resolution.post(
            f"{url}/resolve",
            json={"code": "fixed", "root_cause": "log rotation stopped", "steps_taken": "rotated and pruned logs"},
            headers=ON_CALL,
        )
        assert resolved.status_code == 200 and resolved.json()["state"] == "resolved", resolved.text

        # 7. Reviewed (approved by a manager) with an action item, which becomes a task.
        due = (datetime.now(UTC) + timedelta(days=14)).date().isoformat()
        owner = {"sub": RESPONDER.sub, "name": RESPONDER.name, "email": RESPONDER.email}
        review = {
            "summary": "db-1's disk filled up because log rotation had stopped.",
            "impact": "Payments were slow for 20 minutes.",
            "root_cause": "log rotation stopped after a config change",
            "contributing_factors": ["no alert on rotation failures"],
            "went_well": ["paged within a minute"],
            "to_improve": ["alert earlier on disk growth"],
            "action_items": [{"title": "Alert when log rotation fails", "owner": owner, "due": due}],
        }
        reviewed = await resolution.post(f"{url}/review", json=review, headers=BOSS)
        assert reviewed.status_code in (200, 201), reviewed.text

        async def task() -> list[dict[str, Any]]:
            response = await assignment.get(f"{url}/tasks", headers=ANALYST)
            found: list[dict[str, Any]] = response.json()["tasks"] if response.status_code == 200 else []
            return found

        [created] = await eventually(task, timeout=WAIT, what="the action item became a task")
        assert created["title"] == "Alert when log rotation fails" and created["assignee"]["sub"] == RESPONDER.sub
        assert created["action_item_id"] == "A1"

        # 8. Closed.
        closed = await resolution.post(f"{url}/close", json={"code": "resolved"}, headers=ON_CALL)
        assert closed.status_code == 200 and closed.json()["state"] == "closed", closed.text

        # Reporting's timeline: every step, in order, with who did it.
        steps = [
            ("IncidentLogged", "integration:"),
            ("IncidentCategorized", "system:triage"),
            ("IncidentPrioritized", "system:triage"),
            ("IncidentAssigned", "system:assignment"),
            ("IncidentAcknowledged", f"user:{RESPONDER.sub}"),
            ("IncidentResolved", f"user:{RESPONDER.sub}"),
            ("PostIncidentReviewCompleted", f"user:{MANAGER.sub}"),
            ("TaskCreated", "system:assignment"),
            ("IncidentClosed", f"user:{RESPONDER.sub}"),
        ]

        async def timeline() -> list[dict[str, Any]]:
            response = await reporting.get(f"{url}/timeline", headers=ANALYST)
            events: list[dict[str, Any]] = response.json()["events"] if response.status_code == 200 else []
            types = [e["event_type"] for e in events]
            return events if all(t in types for t, _ in steps) else []

        events = await eventually(timeline, timeout=WAIT, what="every step on reporting's timeline")

    seen = [(e["event_type"], e["actor"]) for e in events if e["event_type"] in {t for t, _ in steps}]
    firsts = [next(actor for t, actor in seen if t == step) for step, _ in steps]
    for (step, actor), got in zip(steps, firsts, strict=True):
        assert got.startswith(actor), f"{step}: actor {got}, expected {actor}"
    order = [next(i for i, (t, _) in enumerate(seen) if t == step) for step, _ in steps]
    assert order == sorted(order), f"steps out of order: {seen}"
