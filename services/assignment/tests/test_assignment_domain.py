"""Assignment's pure decisions: routing, choosing a person (on call, named, manager, least loaded,
round robin), configuration checks, and the reactions and commands of the decider."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from assignment import config, demo, domain, tasks
from assignment.config import Config, Facts, Load
from assignment.domain import Caller, Context, Incident
from opsledger.events import Envelope, EventPayload, new_event
from opsledger.events.assignment import (
    AssigneeChoice,
    AssignmentBasis,
    EscalationCause,
    EscalationPolicyChanged,
    HoldReason,
    IncidentAcknowledged,
    IncidentAssigned,
    IncidentEscalated,
    OnCallScheduleChanged,
    RoutingRulesChanged,
    TaskAssigned,
    TaskCreated,
    TaskOverdue,
    TaskStatus,
    TeamChanged,
)
from opsledger.events.common import PersonRef
from opsledger.events.intake import AlertAcknowledged, IncidentLogged
from opsledger.events.resolution import IncidentReopened, IncidentResolved, PostIncidentReviewCompleted
from opsledger.events.sla import SlaBreached
from opsledger.events.triage import IncidentPrioritized, IncidentReprioritized, PriorityInputs
from opsledger.timers import FiredTimer

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
ALICE, BOB, MAX, DBA = (
    PersonRef(sub=s, name=n) for s, n in [("alice", "Alice"), ("bob", "Bob"), ("max", "Max"), ("dba", "Dee")]
)
INCIDENT = uuid.uuid4()


def team(
    team_id: str, members: list[PersonRef], policy: str | None = None, manager: PersonRef | None = MAX
) -> TeamChanged:
    return TeamChanged(
        team_id=team_id,
        version=1,
        name=team_id.capitalize(),
        members=[{"person": m} for m in members],  # type: ignore[misc]
        manager=manager,
        escalation_policy_id=policy,
    )


SCHEDULE = OnCallScheduleChanged.model_validate(
    {
        "schedule_id": "primary",
        "version": 1,
        "name": "Platform primary",
        "time_zone": "UTC",
        "layers": [
            {
                "name": "weekly",
                "members": [{"sub": "alice"}, {"sub": "bob"}],
                "rotation": "weekly",
                "handoff_time": "09:00",
                "starts_at": "2026-11-30T09:00:00Z",
            }
        ],
    }
)
POLICY = EscalationPolicyChanged.model_validate(
    {
        "policy_id": "platform",
        "version": 1,
        "name": "Platform",
        "tiers": [
            {"targets": [{"kind": "schedule", "schedule_id": "primary"}], "ack_timeout_seconds": 300},
            {"targets": [{"kind": "team_manager"}], "ack_timeout_seconds": 600},
        ],
    }
)
ROUTING = RoutingRulesChanged.model_validate(
    {
        "version": 1,
        "rules": [
            {"rule_id": "db", "name": "databases", "match": {"categories": ["Database"]}, "team_id": "dba"},
            {
                "rule_id": "p1-payments",
                "match": {"services": ["payments"], "priorities": ["P1"], "labels": {"env": "prod"}},
                "team_id": "payments",
            },
        ],
        "default_team_id": "platform",
    }
)
CONFIG = Config(
    teams={
        "platform": team("platform", [ALICE, BOB], "platform"),
        "dba": team("dba", [DBA]),
        "payments": team("payments", [BOB]),
    },
    schedules={"primary": SCHEDULE},
    policies={"platform": POLICY},
    routing=ROUTING,
)


def ctx(now: datetime = NOW, load: Load | None = None, cfg: Config = CONFIG) -> Context:
    return Context(cfg, load or Load(), now)


def envelope(payload: EventPayload) -> Envelope:
    return new_event(payload, producer="test", actor="system:test", incident_id=INCIDENT, occurred_at=NOW)


def prioritized(priority: str = "P2") -> IncidentPrioritized:
    return IncidentPrioritized(
        priority=priority, major=False, inputs=PriorityInputs(impact=2, urgency=2), matrix_version=1
    )


def reprioritized(priority: str) -> IncidentReprioritized:
    body = prioritized(priority).model_dump() | {"previous_priority": "P2", "reason": "correlated alert"}
    return IncidentReprioritized.model_validate(body)


def logged(**fields: Any) -> IncidentLogged:
    base: dict[str, Any] = dict(
        source="generic", occurred_at=NOW, received_at=NOW, title="api down", severity="high", dedup_key="k"
    )
    return IncidentLogged.model_validate(base | fields)


def react(state: Incident | None, payload: EventPayload, c: Context | None = None) -> Any:
    return domain.decider.decide(state, envelope(payload), payload, c or ctx())


def assigned_incident(**logged_fields: Any) -> tuple[Incident, Any]:
    state = react(None, logged(**logged_fields)).state
    decision = react(state, prioritized())
    return decision.state, decision


# --------------------------------------------------------------------------- routing and choice


def test_routing_takes_the_first_matching_rule_else_the_default_team() -> None:
    assert config.route(CONFIG, Facts(category="Database")).rule_id == "db"  # type: ignore[union-attr]
    p1 = config.route(CONFIG, Facts(service="payments", priority="P1", labels={"env": "prod"}))
    assert p1 is not None and (p1.team_id, p1.policy_id, p1.rule_id) == ("payments", None, "p1-payments")
    assert "service payments, priority P1, label env=prod" in p1.reason
    other = config.route(CONFIG, Facts(service="payments", priority="P1", labels={"env": "dev"}))
    assert other is not None and (other.team_id, other.rule_id) == ("platform", None)
    assert config.route(Config(), Facts()) is None


def test_least_loaded_then_round_robin() -> None:
    members = [ALICE, BOB, DBA]
    busy = Load({"alice": 2, "bob": 1, "dba": 3})
    choice = config.least_loaded(members, busy, "Ops")
    assert (choice.person, choice.chosen_by) == (BOB, AssigneeChoice.LEAST_LOADED)
    tied = Load({"alice": 1, "bob": 1}, {"alice": NOW, "bob": NOW - timedelta(hours=1)})
    choice = config.least_loaded([ALICE, BOB], tied, "Ops")
    assert (choice.person, choice.chosen_by) == (BOB, AssigneeChoice.ROUND_ROBIN)
    # Somebody never assigned goes first; then member order.
    assert config.least_loaded([ALICE, BOB, DBA], Load({}, {"alice": NOW}), "Ops").person == BOB
    assert config.least_loaded([], Load(), "Ops").chosen_by is AssigneeChoice.NOBODY


def test_a_tier_names_the_on_call_else_falls_back_to_the_least_loaded() -> None:
    platform = CONFIG.teams["platform"]
    on_call = config.choose(CONFIG, platform, POLICY, 0, NOW, Load())
    assert (on_call.person, on_call.chosen_by) == (ALICE, AssigneeChoice.ON_CALL)
    assert on_call.reason == "on call in schedule Platform primary until 2026-12-07 09:00 UTC"
    manager = config.choose(CONFIG, platform, POLICY, 1, NOW, Load())
    assert (manager.person, manager.chosen_by) == (MAX, AssigneeChoice.TEAM_MANAGER)
    before = config.choose(CONFIG, platform, POLICY, 0, NOW - timedelta(days=1), Load({"alice": 3}))
    assert (before.person, before.chosen_by) == (BOB, AssigneeChoice.LEAST_LOADED)
    assert before.reason.startswith("nobody is on call in schedule Platform primary; Bob has the fewest")


def test_configuration_checks_name_the_field() -> None:
    bad_zone = SCHEDULE.model_copy(update={"time_zone": "Mars/Olympus"})
    with pytest.raises(config.ConfigError) as err:
        config.check_schedule(bad_zone)
    assert err.value.where == "body.time_zone"
    hourly = SCHEDULE.model_copy(update={"layers": [SCHEDULE.layers[0].model_copy(update={"rotation": "hourly"})]})
    with pytest.raises(config.ConfigError, match="every_hours"):
        config.check_schedule(hourly)
    with pytest.raises(config.UnknownReference) as ref:
        config.check_routing(ROUTING, replace(CONFIG, teams={"platform": CONFIG.teams["platform"]}))
    assert ref.value.where == "body.rules.0.team_id"
    with pytest.raises(config.UnknownReference) as ref:
        config.check_policy(POLICY, replace(CONFIG, schedules={}))
    assert ref.value.where == "body.tiers.0.targets.0.schedule_id"


def test_the_demo_configuration_is_valid_and_puts_the_first_responder_on_call_now() -> None:
    objects: dict[tuple[str, str], EventPayload] = {}
    for kind, object_id, body in demo.objects(NOW):
        obj = config.event_of(kind, object_id, 1, body, None)
        config.check(kind, obj, config.config_from(objects))
        objects[(kind, object_id)] = obj
    cfg = config.config_from(objects)
    route = config.route(cfg, Facts())
    assert route is not None and route.team_id == demo.TEAM_ID
    team_ = cfg.teams[demo.TEAM_ID]
    choice = config.choose(cfg, team_, cfg.policies[demo.POLICY_ID], 0, NOW, Load())
    assert choice.person is not None and choice.person.sub == "demo-responder"
    assert team_.manager is not None and team_.manager.sub == "demo-manager"


# --------------------------------------------------------------------------- reactions


def test_prioritized_incident_is_assigned_to_the_on_call_with_a_timer() -> None:
    state, decision = assigned_incident()
    [event] = decision.events
    assert isinstance(event, IncidentAssigned)
    assert (event.team_id, event.assignee, event.tier, event.basis) == ("platform", ALICE, 0, AssignmentBasis.ROUTING)
    assert event.chosen_by is AssigneeChoice.ON_CALL and event.escalation_policy_id == "platform"
    assert event.reason == (
        "no routing rule matched: the default team; tier 1 of policy Platform: "
        "on call in schedule Platform primary until 2026-12-07 09:00 UTC"
    )
    [timer] = decision.schedule
    assert timer.key == f"ack:{INCIDENT}" and timer.due_at == NOW + timedelta(seconds=300)
    assert timer.data == {"incident_id": str(INCIDENT), "tier": 0, "repeat": 0}
    # A redelivered IncidentPrioritized changes nothing.
    assert not react(state, prioritized()).events


def fire(state: Incident, due: datetime, **data: Any) -> Any:
    timer = FiredTimer(f"ack:{INCIDENT}", due, {"incident_id": str(INCIDENT), **data}, due)
    return domain.decider.decide_timer(state, timer, ctx(due))


def test_the_escalation_chain_runs_through_every_tier_then_stops() -> None:
    state, first = assigned_incident()
    due = first.schedule[0].due_at
    second = fire(state, due, tier=0, repeat=0)
    escalated, assigned = second.events
    assert isinstance(escalated, IncidentEscalated) and isinstance(assigned, IncidentAssigned)
    assert (escalated.from_tier, escalated.to_tier, escalated.cause) == (0, 1, EscalationCause.ACK_TIMEOUT)
    assert (escalated.due_at, escalated.fired_at) == (due, due)
    assert (assigned.assignee, assigned.tier, assigned.basis) == (MAX, 1, AssignmentBasis.ESCALATION)
    assert assigned.chosen_by is AssigneeChoice.TEAM_MANAGER
    [timer] = second.schedule
    assert timer.due_at == due + timedelta(seconds=600)
    last = fire(second.state, timer.due_at, tier=1, repeat=0)
    assert not last.events and not last.schedule
    # A stale timer (of a tier the incident left) changes nothing.
    assert not fire(second.state, due, tier=0, repeat=0).events


def test_a_repeating_policy_starts_over() -> None:
    repeating = replace(CONFIG, policies={"platform": POLICY.model_copy(update={"repeat": 1})})
    state, _ = assigned_incident()
    state = replace(state, tier=1)
    timer = FiredTimer(f"ack:{INCIDENT}", NOW, {"incident_id": str(INCIDENT), "tier": 1, "repeat": 0}, NOW)
    decision = domain.decider.decide_timer(state, timer, ctx(cfg=repeating))
    escalated, assigned = decision.events
    assert (escalated.to_tier, escalated.repeat, assigned.tier, assigned.repeat) == (0, 1, 0, 1)


def breached(fired: datetime = NOW) -> SlaBreached:
    return SlaBreached(
        target="response", target_seconds=900, due_at=fired, policy_version=1, priority="P2", fired_at=fired
    )


def test_a_duplicated_sla_breach_escalates_once() -> None:
    state, _ = assigned_incident()
    once = react(state, breached())
    assert [type(e).__name__ for e in once.events] == ["IncidentEscalated", "IncidentAssigned"]
    assert once.events[0].cause is EscalationCause.SLA_BREACHED and once.events[0].sla_target == "response"
    # Delivered again (another copy, another id): nothing more.
    assert not react(once.state, breached()).events


def test_acknowledgement_stops_escalation() -> None:
    state, _ = assigned_incident()
    acked = domain.acknowledge(INCIDENT, Caller(ALICE, frozenset({"responder"})))(state, ctx())
    [event] = acked.events
    assert isinstance(event, IncidentAcknowledged) and event.by == ALICE and event.assignee == ALICE
    assert acked.cancel == [f"ack:{INCIDENT}"]
    assert not fire(acked.state, NOW, tier=0, repeat=0).events
    with pytest.raises(domain.Conflict, match="acknowledged by user:alice"):
        domain.acknowledge(INCIDENT, Caller(BOB, frozenset({"responder"})))(acked.state, ctx())


def test_only_the_assignee_a_member_or_a_manager_may_acknowledge() -> None:
    state, _ = assigned_incident()
    with pytest.raises(domain.Forbidden):
        domain.acknowledge(INCIDENT, Caller(DBA, frozenset({"responder"})))(state, ctx())
    assert domain.acknowledge(INCIDENT, Caller(BOB, frozenset({"responder"})))(state, ctx()).events
    assert domain.acknowledge(INCIDENT, Caller(DBA, frozenset({"manager"})))(state, ctx()).events
    with pytest.raises(domain.NotFound):
        domain.acknowledge(INCIDENT, Caller(ALICE, frozenset({"responder"})))(None, ctx())


def test_the_alert_source_acknowledging_counts() -> None:
    state, _ = assigned_incident()
    ack = AlertAcknowledged(source="pagerduty", integration_id="pd-1", dedup_key="k", acknowledged_at=NOW)
    decision = react(state, ack)
    [event] = decision.events
    assert (event.via, event.integration_id, event.by) == ("integration", "pd-1", None)
    assert decision.state.acknowledged_by == "integration:pd-1"


def test_resolution_stops_timers_and_reopening_goes_back_to_the_last_team() -> None:
    state, _ = assigned_incident()
    resolved = react(state, IncidentResolved(code="fixed"))
    assert resolved.cancel == [f"ack:{INCIDENT}"] and resolved.state.status == "resolved"
    with pytest.raises(domain.Conflict, match="resolved"):
        domain.acknowledge(INCIDENT, Caller(ALICE, frozenset({"responder"})))(resolved.state, ctx())
    reopened = react(resolved.state, IncidentReopened(reason="it came back", by={"kind": "alert_refired"}))
    [event] = reopened.events
    assert (event.team_id, event.basis, event.tier) == ("platform", AssignmentBasis.REOPEN, 0)
    assert reopened.schedule


def test_a_reprioritization_that_changes_the_route_reassigns() -> None:
    state, _ = assigned_incident(service="payments", labels={"env": "prod"})
    same = react(state, reprioritized("P3"))
    assert not same.events
    moved = react(state, reprioritized("P1"))
    [event] = moved.events
    assert (event.team_id, event.routing_rule_id, event.assignee, event.tier) == ("payments", "p1-payments", BOB, None)
    assert event.reason.startswith("routing rule p1-payments: service payments, priority P1, label env=prod; Bob has")
    assert not moved.schedule and moved.cancel == [f"ack:{INCIDENT}"]  # no policy: nothing to escalate along


def test_hold_pauses_escalation_and_resume_restarts_it() -> None:
    state, _ = assigned_incident()
    alice = Caller(ALICE, frozenset({"responder"}))
    held = domain.put_on_hold(INCIDENT, alice, HoldReason.AWAITING_VENDOR, "ticket 42", None)(state, ctx())
    assert [type(e).__name__ for e in held.events] == ["IncidentPutOnHold"] and held.cancel == [f"ack:{INCIDENT}"]
    assert not fire(held.state, NOW, tier=0, repeat=0).events
    with pytest.raises(domain.Conflict):
        domain.put_on_hold(INCIDENT, alice, HoldReason.OTHER, None, None)(held.state, ctx())
    resumed = domain.resume(INCIDENT, alice, None)(held.state, ctx())
    assert resumed.events[0].reason is HoldReason.AWAITING_VENDOR
    assert resumed.schedule[0].due_at == NOW + timedelta(seconds=300)


def test_manual_escalation_and_reassignment() -> None:
    state, _ = assigned_incident()
    boss = Caller(MAX, frozenset({"manager"}))
    up = domain.escalate(INCIDENT, boss, "customer is shouting")(state, ctx())
    assert up.events[0].cause is EscalationCause.MANUAL and up.events[1].tier == 1
    with pytest.raises(domain.Conflict, match="last tier"):
        domain.escalate(INCIDENT, boss, "again")(up.state, ctx())
    moved = domain.reassign(INCIDENT, boss, "database problem", "dba", None)(state, ctx())
    [event] = moved.events
    assert (event.team_id, event.assignee, event.basis) == ("dba", DBA, AssignmentBasis.MANUAL)
    named = domain.reassign(INCIDENT, boss, "knows the code", None, "bob")(state, ctx())
    assert (named.events[0].assignee, named.events[0].chosen_by) == (BOB, AssigneeChoice.MANUAL)
    with pytest.raises(domain.NotFound, match="person nobody"):
        domain.reassign(INCIDENT, boss, "x", None, "nobody")(state, ctx())
    with pytest.raises(domain.NotFound, match="team nope"):
        domain.reassign(INCIDENT, boss, "x", "nope", None)(state, ctx())


def test_state_survives_its_json() -> None:
    state, _ = assigned_incident(service="payments", labels={"env": "prod"})
    state = replace(state, hold=HoldReason.AWAITING_CUSTOMER, causes=frozenset({"sla_breached:response"}))
    again = Incident.from_row(
        state.logged_at, state.title, state.status, state.team_id, state.assigned_at, state.as_json()
    )
    assert again == state


def test_a_batch_spreads_incidents_over_the_least_loaded() -> None:
    ops = Config(
        teams={"ops": team("ops", [ALICE, BOB, DBA])}, routing=RoutingRulesChanged(version=1, default_team_id="ops")
    )
    shared = Context(ops, Load({"dba": 1}), NOW)  # one context for the whole batch, as the stage gives it
    chosen = []
    for _ in range(4):
        incident = Incident(logged_at=NOW, title="t")
        event = envelope(prioritized())
        decision = domain.decider.decide(incident, event, prioritized(), shared)
        chosen.append((decision.events[0].assignee.sub, decision.events[0].chosen_by))
    assert chosen == [
        ("alice", AssigneeChoice.ROUND_ROBIN),  # alice and bob have none: member order
        ("bob", AssigneeChoice.LEAST_LOADED),
        ("dba", AssigneeChoice.ROUND_ROBIN),  # all have one: dba was never assigned
        ("alice", AssigneeChoice.ROUND_ROBIN),
    ]


# --------------------------------------------------------------------------- tasks

SKILLED = TeamChanged.model_validate(
    {
        "team_id": "platform",
        "version": 2,
        "name": "Platform",
        "members": [
            {"person": ALICE.model_dump(), "skills": ["postgres"]},
            {"person": BOB.model_dump(), "skills": ["postgres", "kafka"]},
            {"person": DBA.model_dump(), "skills": ["kafka"]},
        ],
        "manager": MAX.model_dump(),
        "escalation_policy_id": "platform",
    }
)
TASKS = replace(CONFIG, teams={**CONFIG.teams, "platform": SKILLED})
RESPONDER = Caller(ALICE, frozenset({"responder"}))


def create(state: Incident, c: Context, **fields: Any) -> Any:
    task_id = uuid.uuid4()
    body: dict[str, Any] = dict(
        title="rotate the WAL", description=None, assignee=None, priority="medium", due_at=None, required_skills=[]
    )
    return task_id, tasks.create(INCIDENT, RESPONDER, task_id, **(body | fields))(state, c)


def test_a_task_without_assignee_goes_to_the_skilled_on_call_else_the_least_loaded() -> None:
    state, _ = assigned_incident()
    c = ctx(cfg=TASKS, load=Load(open_tasks={"bob": 2, "dba": 1}))
    _, on_call = create(state, c, required_skills=["postgres"])
    created, picked = on_call.events
    assert isinstance(created, TaskCreated) and created.assignee is None
    assert isinstance(picked, TaskAssigned) and (picked.assignee, picked.chosen_by) == (ALICE, AssigneeChoice.ON_CALL)
    assert picked.reason == "on call in schedule Platform primary, in team Platform with the skills postgres"
    _, kafka = create(state, c, required_skills=["kafka"])
    assert (kafka.events[1].assignee, kafka.events[1].chosen_by) == (DBA, AssigneeChoice.LEAST_LOADED)
    expected = "Dee has the fewest open tasks in team Platform (1) (among those with the skills kafka)"
    assert kafka.events[1].reason == expected
    _, nobody = create(state, c, required_skills=["cobol"])
    assert [type(e).__name__ for e in nobody.events] == ["TaskCreated"]
    with pytest.raises(domain.NotFound, match="person ghost"):
        create(state, c, assignee="ghost")


def test_a_task_lifecycle_with_its_reminder() -> None:
    state, _ = assigned_incident()
    c = ctx(cfg=TASKS)
    due = NOW + timedelta(hours=4)
    task_id, made = create(state, c, assignee="bob", priority="urgent", due_at=due)
    assert [type(e).__name__ for e in made.events] == ["TaskCreated"] and made.events[0].assignee == BOB
    [reminder] = made.schedule
    assert reminder.key == f"task:{task_id}" and reminder.due_at == due
    state = made.state
    moved = tasks.reassign(INCIDENT, task_id, RESPONDER, "dba", "knows kafka")(state, c)
    assert (moved.events[0].previous_assignee, moved.events[0].assignee) == (BOB, DBA)
    started = tasks.change_status(INCIDENT, task_id, RESPONDER, TaskStatus.IN_PROGRESS, None)(moved.state, c)
    assert started.events[0].previous_status is TaskStatus.OPEN
    timer = FiredTimer(reminder.key, due, dict(reminder.data), due)
    [overdue] = domain.decider.decide_timer(started.state, timer, c).events
    assert isinstance(overdue, TaskOverdue) and overdue.assignee == DBA
    done = tasks.change_status(INCIDENT, task_id, RESPONDER, TaskStatus.DONE, "rotated")(started.state, c)
    assert done.cancel == [f"task:{task_id}"]
    assert not domain.decider.decide_timer(done.state, timer, c).events
    with pytest.raises(domain.Conflict, match="the task is done"):
        tasks.change_status(INCIDENT, task_id, RESPONDER, TaskStatus.CANCELLED, None)(done.state, c)
    with pytest.raises(domain.NotFound, match="task"):
        tasks.change_status(INCIDENT, uuid.uuid4(), RESPONDER, TaskStatus.DONE, None)(done.state, c)


def test_review_action_items_become_tasks_once() -> None:
    state, _ = assigned_incident()
    review = PostIncidentReviewCompleted.model_validate(
        {
            "review_id": "r1",
            "summary": "s",
            "impact": "i",
            "root_cause": "rc",
            "approved_by": MAX.model_dump(),
            "action_items": [
                {"item_id": "a1", "title": "add an alert on WAL size", "owner": BOB.model_dump(), "due": "2026-12-04"},
                {"item_id": "a2", "title": "write the runbook", "owner": ALICE.model_dump()},
            ],
        }
    )
    cause = envelope(review)
    made = domain.decider.decide(state, cause, review, ctx())
    first, second = made.events
    assert (first.origin, first.review_event_id, first.action_item_id, first.assignee) == (
        "review_action_item",
        cause.event_id,
        "a1",
        BOB,
    )
    assert first.due_at == datetime(2026, 12, 5, tzinfo=UTC) and second.due_at is None
    assert [t.key for t in made.schedule] == [f"task:{first.task_id}"]
    assert not domain.decider.decide(made.state, cause, review, ctx()).events
    assert [t.title for t in tasks.ordered(made.state.tasks)] == ["add an alert on WAL size", "write the runbook"]
