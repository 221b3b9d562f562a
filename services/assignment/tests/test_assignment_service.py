"""Assignment against the real Kafka and PostgreSQL, run in-process with a ManualClock: versioned
configuration through the API (409 on a lost update, 4xx naming the field), demo seeding, who is
on call, and an incident's assignment, acknowledgement and escalation through every tier."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from assignment.app import build
from assignment.settings import Settings
from opsledger.clock import ManualClock
from opsledger.events import Envelope, EventPayload, Stream, new_event
from opsledger.events.intake import IncidentLogged
from opsledger.events.resolution import IncidentResolved, PostIncidentReviewCompleted
from opsledger.events.sla import SlaBreached
from opsledger.events.triage import IncidentPrioritized, PriorityInputs
from opsledger.testing import TestInfra, eventually, read_topic, running_app, session_tokens
from opsledger.testing.helpers import envelopes

pytestmark = pytest.mark.integration

TOKENS = session_tokens()
ADMIN = TOKENS.headers("test-admin", "admin")
ANALYST = TOKENS.headers("test-analyst", "analyst")
MANAGER = TOKENS.headers("max", "manager", name="Max Manager")
ALICE = TOKENS.headers("alice", "responder", name="Alice")
STRANGER = TOKENS.headers("zoe", "responder")
T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.fixture
async def settings(infra: TestInfra, make_database: Callable[..., Any], topic_prefix: str) -> Settings:
    return Settings(
        database_url=await make_database(),
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        relay_poll_seconds=0.05,
        log_json=False,
        **TOKENS.settings(),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def app_client(settings: Settings, clock: ManualClock) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = build(settings, clock)
    async with running_app(app) as client:
        yield app, client


@pytest.fixture
async def publish(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()

    async def send(*events: Envelope) -> None:
        for e in events:
            await producer.send_and_wait(settings.topic(Stream.INCIDENTS), e.to_bytes(), key=e.key)

    yield send
    await producer.stop()


def event(incident_id: uuid.UUID, payload: EventPayload, producer: str = "test") -> Envelope:
    return new_event(payload, producer=producer, actor="system:test", incident_id=incident_id, occurred_at=T0)


def logged(incident_id: uuid.UUID) -> Envelope:
    payload = IncidentLogged(
        source="generic", occurred_at=T0, received_at=T0, title="api 5xx", severity="high", dedup_key=str(incident_id)
    )
    return event(incident_id, payload, "intake")


def prioritized(incident_id: uuid.UUID) -> Envelope:
    payload = IncidentPrioritized(
        priority="P2", major=False, inputs=PriorityInputs(impact=2, urgency=2), matrix_version=1
    )
    return event(incident_id, payload, "triage")


def breached(incident_id: uuid.UUID) -> Envelope:
    payload = SlaBreached(target="response", target_seconds=600, due_at=T0, policy_version=1, fired_at=T0)
    return event(incident_id, payload, "sla")


async def produced(settings: Settings, incident_id: uuid.UUID) -> list[Envelope]:
    records = await read_topic(settings.kafka_bootstrap, settings.topic(Stream.INCIDENTS))
    return [e for e in envelopes(records) if e.incident_id == incident_id and e.producer == "assignment"]


async def wait_for(settings: Settings, incident_id: uuid.UUID, types: list[str]) -> list[Envelope]:
    """Assignment's events for the incident, once their types are exactly `types` (in order)."""

    async def check() -> list[Envelope]:
        found = await produced(settings, incident_id)
        assert [e.event_type for e in found] == types
        return found

    return await eventually(check, timeout=60, what=f"{types} for {incident_id}")


PEOPLE = {
    "alice": {"sub": "alice", "name": "Alice"},
    "bob": {"sub": "bob", "name": "Bob"},
    "max": {"sub": "max", "name": "Max Manager"},
}


async def assert_counts_kept(app: Any) -> dict[str, tuple[int, int]]:
    """Each person's open incidents and tasks, as `people` keeps them, equal a recount of the rows;
    returns them (sub -> (incidents, tasks))."""
    async with app.state.runtime.sessionmaker() as session:
        kept = {
            r.sub: (r.open_incidents, r.open_tasks)
            for r in await session.execute(sa.text("SELECT sub, open_incidents, open_tasks FROM people"))
        }
        recount: dict[str, list[int]] = {}
        for sub, n in await session.execute(
            sa.text("SELECT assignee_sub, count(*) FROM known_incidents WHERE status = 'open' GROUP BY 1")
        ):
            recount.setdefault(sub, [0, 0])[0] = n
        for sub, n in await session.execute(
            sa.text("SELECT assignee_sub, count(*) FROM tasks WHERE status IN ('open', 'in_progress') GROUP BY 1")
        ):
            recount.setdefault(sub, [0, 0])[1] = n
    expected = {sub: (n[0], n[1]) for sub, n in recount.items() if sub is not None}
    assert {sub: n for sub, n in kept.items() if n != (0, 0)} == expected
    return expected


async def configure(client: httpx.AsyncClient) -> None:
    """A weekly rotation (alice this week), a two-tier policy (schedule, then the manager), the
    team and a default route."""
    schedule = {
        "name": "Platform primary",
        "time_zone": "Europe/Berlin",
        "layers": [
            {
                "name": "weekly",
                "members": [PEOPLE["alice"], PEOPLE["bob"]],
                "rotation": "weekly",
                "handoff_time": "09:00",
                "starts_at": "2026-11-30T09:00:00+01:00",
            }
        ],
    }
    policy = {
        "name": "Platform",
        "tiers": [
            {"targets": [{"kind": "schedule", "schedule_id": "primary"}], "ack_timeout_seconds": 300},
            {"targets": [{"kind": "team_manager"}], "ack_timeout_seconds": 600},
        ],
    }
    team = {
        "name": "Platform",
        "members": [
            {"person": PEOPLE["alice"], "skills": ["postgres"]},
            {"person": PEOPLE["bob"], "skills": ["kafka"]},
        ],
        "manager": PEOPLE["max"],
        "escalation_policy_id": "platform",
    }
    for path, body, who in (
        ("/v1/schedules/primary", schedule, MANAGER),
        ("/v1/escalation-policies/platform", policy, MANAGER),
        ("/v1/teams/platform", team, MANAGER),
        ("/v1/routing", {"rules": [], "default_team_id": "platform"}, ADMIN),
    ):
        response = await client.put(path, json=body, headers=who)
        assert response.status_code == 200, response.text


async def test_configuration_is_versioned_announced_and_checked(
    settings: Settings, app_client: tuple[Any, httpx.AsyncClient]
) -> None:
    _, client = app_client
    await configure(client)
    team = (await client.get("/v1/teams/platform", headers=ANALYST)).json()
    assert (team["version"], team["changed_by"], team["definition"]["manager"]["sub"]) == (1, "user:max", "max")

    # A change from a version no longer in force is refused; the right one goes through.
    body = {"name": "Platform team", "members": [{"person": PEOPLE["bob"]}], "expected_version": 0}
    conflict = await client.put("/v1/teams/platform", json=body, headers=MANAGER)
    assert conflict.status_code == 409 and conflict.json()["errors"][0]["field"] == "body.expected_version"
    changed = await client.put("/v1/teams/platform", json=body | {"expected_version": 1}, headers=MANAGER)
    assert changed.status_code == 200 and changed.json()["version"] == 2
    history = (await client.get("/v1/teams/platform/history", headers=ANALYST)).json()["items"]
    assert [v["version"] for v in history] == [2, 1]

    # Bad input names the field, and the version in force stays.
    bad = (await client.get("/v1/schedules/primary", headers=ANALYST)).json()["definition"] | {"time_zone": "Mars/Base"}
    refused = await client.put("/v1/schedules/primary", json=bad, headers=MANAGER)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.time_zone"
    empty = bad | {"time_zone": "UTC", "layers": [bad["layers"][0] | {"members": []}]}
    refused = await client.put("/v1/schedules/primary", json=empty, headers=MANAGER)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"].startswith("body.layers.0.members")
    no_tiers = await client.put("/v1/escalation-policies/x", json={"name": "x", "tiers": []}, headers=MANAGER)
    assert no_tiers.status_code == 422
    unknown = await client.put("/v1/routing", json={"default_team_id": "nope"}, headers=ADMIN)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "body.default_team_id"
    assert (await client.get("/v1/schedules/primary", headers=ANALYST)).json()["version"] == 1
    assert (await client.get("/v1/teams/nope", headers=ANALYST)).status_code == 404
    assert (await client.put("/v1/routing", json={}, headers=MANAGER)).status_code == 403

    # Who is on call when: alice this week, bob from Monday 09:00 Berlin time.
    oncall = (await client.get("/v1/schedules/primary/oncall", headers=ANALYST)).json()
    assert oncall["on_call"]["person"]["sub"] == "alice"
    assert oncall["on_call"]["until"] == "2026-12-07T08:00:00Z"
    later = await client.get("/v1/schedules/primary/oncall", params={"at": "2026-12-07T08:00:00Z"}, headers=ANALYST)
    assert later.json()["on_call"]["person"]["sub"] == "bob"
    shifts = await client.get(
        "/v1/schedules/primary/shifts",
        params={"from": "2026-12-01T00:00:00Z", "to": "2026-12-15T00:00:00Z"},
        headers=ANALYST,
    )
    assert [(s["person"]["sub"], s["start"]) for s in shifts.json()["shifts"]] == [
        ("alice", "2026-12-01T00:00:00Z"),
        ("bob", "2026-12-07T08:00:00Z"),
        ("alice", "2026-12-14T08:00:00Z"),
    ]
    assert [s["id"] for s in (await client.get("/v1/schedules", headers=ANALYST)).json()["items"]] == ["primary"]

    # Each version is an event on the config stream, keyed by the object.
    async def announced() -> list[tuple[str, str, int]]:
        records = await read_topic(settings.kafka_bootstrap, settings.topic(Stream.CONFIG))
        found = [(e.event_type, e.subject, e.payload["version"]) for e in envelopes(records)]
        assert len(found) == 5
        return found

    assert sorted(await eventually(announced, timeout=60)) == [
        ("EscalationPolicyChanged", "assignment.policy.platform", 1),
        ("OnCallScheduleChanged", "assignment.schedule.primary", 1),
        ("RoutingRulesChanged", "assignment.routing", 1),
        ("TeamChanged", "assignment.team.platform", 1),
        ("TeamChanged", "assignment.team.platform", 2),
    ]


async def test_demo_configuration_is_seeded_once(settings: Settings, clock: ManualClock) -> None:
    demo = settings.model_copy(update={"demo": True})
    for _ in range(2):  # a restart seeds nothing more
        async with running_app(build(demo, clock)) as client:
            teams = (await client.get("/v1/teams", headers=ANALYST)).json()["items"]
            assert [(t["id"], t["version"]) for t in teams] == [("demo", 1)]
            oncall = (await client.get("/v1/schedules/demo-primary/oncall", headers=ANALYST)).json()
            assert oncall["on_call"]["person"]["sub"] == "demo-responder"
            assert (await client.get("/v1/routing", headers=ANALYST)).json()["definition"]["default_team_id"] == "demo"


async def test_assignment_acknowledgement_and_the_escalation_chain(
    settings: Settings, clock: ManualClock, app_client: tuple[Any, httpx.AsyncClient], publish: Callable[..., Any]
) -> None:
    app, client = app_client
    runner = app.state.runtime.timers
    await configure(client)
    acked, chained, breached_twice = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for incident_id in (acked, chained, breached_twice):
        await publish(logged(incident_id), prioritized(incident_id))
    for incident_id in (acked, chained, breached_twice):
        [assigned] = await wait_for(settings, incident_id, ["IncidentAssigned"])
        p = assigned.payload
        assert (p["team_id"], p["assignee"]["sub"], p["tier"], p["chosen_by"]) == ("platform", "alice", 0, "on_call")
        assert p["reason"].endswith("on call in schedule Platform primary until 2026-12-07 08:00 UTC")
        assert assigned.actor == "system:assignment"

    # The on-call acknowledges with her own token; a stranger may not; the timer stops.
    assert (await client.post(f"/v1/incidents/{acked}/acknowledge", headers=STRANGER)).status_code == 403
    response = await client.post(f"/v1/incidents/{acked}/acknowledge", headers=ALICE)
    assert response.status_code == 200, response.text
    assert response.json()["assignment"]["acknowledged_by"] == "user:alice"
    assert response.json()["assignment"]["ack_due_at"] is None
    again = await client.post(f"/v1/incidents/{acked}/acknowledge", headers=ALICE)
    assert again.status_code == 409
    assert (await client.post(f"/v1/incidents/{uuid.uuid4()}/acknowledge", headers=ALICE)).status_code == 404

    # The same SLA breach delivered twice (two copies, two ids) escalates once.
    await publish(breached(breached_twice), breached(breached_twice))
    escalated = await wait_for(settings, breached_twice, ["IncidentAssigned", "IncidentEscalated", "IncidentAssigned"])
    assert escalated[1].payload["cause"] == "sla_breached" and escalated[2].payload["assignee"]["sub"] == "max"
    await publish(event(breached_twice, IncidentResolved(code="fixed")))

    # Nobody acknowledges the other: tier 1 times out, the manager gets it, then the last tier stops.
    clock.advance(timedelta(seconds=301))
    await runner.run_due(clock.now())
    chain = await wait_for(settings, chained, ["IncidentAssigned", "IncidentEscalated", "IncidentAssigned"])
    assert (chain[1].payload["from_tier"], chain[1].payload["to_tier"], chain[1].payload["cause"]) == (
        0,
        1,
        "ack_timeout",
    )
    assert chain[2].payload["assignee"]["sub"] == "max" and chain[2].payload["chosen_by"] == "team_manager"
    state = (await client.get(f"/v1/incidents/{chained}/assignment", headers=ANALYST)).json()
    assert state["tier"] == 1 and state["ack_due_at"] == "2026-11-30T12:15:01Z"
    clock.advance(timedelta(seconds=601))
    await runner.run_due(clock.now())
    # The manager acknowledges the chained incident; everything it and the others emitted is as expected.
    assert (await client.post(f"/v1/incidents/{chained}/acknowledge", headers=MANAGER)).status_code == 200
    await wait_for(
        settings, chained, ["IncidentAssigned", "IncidentEscalated", "IncidentAssigned", "IncidentAcknowledged"]
    )
    await wait_for(settings, acked, ["IncidentAssigned", "IncidentAcknowledged"])
    await wait_for(settings, breached_twice, ["IncidentAssigned", "IncidentEscalated", "IncidentAssigned"])

    async def resolved() -> bool:
        state = (await client.get(f"/v1/incidents/{breached_twice}/assignment", headers=ANALYST)).json()
        return bool(state["status"] == "resolved" and state["ack_due_at"] is None)

    await eventually(resolved, timeout=60, what="resolution stops the acknowledgement timer")
    # Assigned, escalated to the manager, resolved: the counts least-loaded routing reads follow.
    assert await assert_counts_kept(app) == {"alice": (1, 0), "max": (1, 0)}


async def test_tasks_hold_and_my_work(
    settings: Settings, clock: ManualClock, app_client: tuple[Any, httpx.AsyncClient], publish: Callable[..., Any]
) -> None:
    app, client = app_client
    await configure(client)
    incident_id = uuid.uuid4()
    await publish(logged(incident_id), prioritized(incident_id))
    await wait_for(settings, incident_id, ["IncidentAssigned"])
    base = f"/v1/incidents/{incident_id}"
    assert (await client.post(f"{base}/acknowledge", headers=ALICE)).status_code == 200

    # A routing dry run says which recorded incidents candidate rules would route elsewhere.
    candidate = {"rules": [{"rule_id": "p2", "match": {"priorities": ["P2"]}, "team_id": "platform"}]}
    dry = await client.post("/v1/routing/dry-run", json=candidate, headers=ANALYST)
    assert dry.status_code == 200, dry.text
    [change] = dry.json()["changes"]
    assert change["incident_id"] == str(incident_id) and change["candidate"]["rule_id"] == "p2"
    assert change["current"]["reason"] == "no routing rule matched: the default team"
    bad = await client.post("/v1/routing/dry-run", json={"default_team_id": "nope"}, headers=ANALYST)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.default_team_id"

    # Without an assignee, the member with the skills is chosen (bob: alice is on call but lacks kafka).
    made = await client.post(
        f"{base}/tasks", json={"title": "check consumer lag", "required_skills": ["kafka"]}, headers=ALICE
    )
    assert made.status_code == 201, made.text
    assert made.json()["events"] == ["TaskCreated", "TaskAssigned"] and made.json()["task"]["assignee"]["sub"] == "bob"
    due = (T0 + timedelta(hours=1)).isoformat()
    urgent = await client.post(
        f"{base}/tasks",
        json={"title": "fail over", "priority": "urgent", "assignee": "alice", "due_at": due},
        headers=ALICE,
    )
    assert urgent.status_code == 201 and urgent.json()["events"] == ["TaskCreated"]
    task_id = urgent.json()["task"]["task_id"]
    listed = (await client.get(f"{base}/tasks", headers=ANALYST)).json()["tasks"]
    assert [t["title"] for t in listed] == ["fail over", "check consumer lag"]
    unknown = await client.post(f"{base}/tasks", json={"title": "x", "assignee": "ghost"}, headers=ALICE)
    assert unknown.status_code == 404 and "ghost" in unknown.json()["detail"]

    # The reminder fires at the due time; a done task changes no more.
    clock.advance(timedelta(hours=1, seconds=1))
    await app.state.runtime.timers.run_due(clock.now())
    work = (await client.get("/v1/my-work", headers=ALICE)).json()
    assert [i["incident_id"] for i in work["incidents"]] == [str(incident_id)]
    assert [t["task_id"] for t in work["tasks"]] == [task_id]
    done = await client.post(f"{base}/tasks/{task_id}/status", json={"status": "done"}, headers=ALICE)
    assert done.status_code == 200 and done.json()["task"]["status"] == "done"
    again = await client.post(f"{base}/tasks/{task_id}/status", json={"status": "cancelled"}, headers=ALICE)
    assert again.status_code == 409
    assert (await client.get("/v1/my-work", headers=ALICE)).json()["tasks"] == []

    # On hold and back.
    held = await client.post(f"{base}/hold", json={"reason": "awaiting_vendor", "note": "case 42"}, headers=ALICE)
    assert held.status_code == 200 and held.json()["assignment"]["on_hold"] == "awaiting_vendor"
    assert (await client.post(f"{base}/hold", json={"reason": "other"}, headers=ALICE)).status_code == 409
    assert (await client.post(f"{base}/hold", json={"reason": "other"}, headers=STRANGER)).status_code == 403
    resumed = await client.post(f"{base}/resume", headers=ALICE)
    assert resumed.status_code == 200 and resumed.json()["assignment"]["on_hold"] is None

    # A completed review's action items become tasks.
    review = PostIncidentReviewCompleted.model_validate(
        {
            "review_id": "r1",
            "summary": "s",
            "impact": "i",
            "root_cause": "rc",
            "approved_by": PEOPLE["max"],
            "action_items": [{"item_id": "a1", "title": "alert on lag", "owner": PEOPLE["bob"]}],
        }
    )
    await publish(event(incident_id, review, "resolution"))
    types = [
        "IncidentAssigned",
        "IncidentAcknowledged",
        "TaskCreated",
        "TaskAssigned",
        "TaskCreated",
        "TaskOverdue",
        "TaskStatusChanged",
    ]
    types += ["IncidentPutOnHold", "IncidentResumed", "TaskCreated"]
    found = await wait_for(settings, incident_id, types)
    assert found[5].payload["task_id"] == task_id and found[6].actor == "user:alice"
    assert found[-1].payload["origin"] == "review_action_item" and found[-1].payload["assignee"]["sub"] == "bob"
    await assert_counts_kept(app)
