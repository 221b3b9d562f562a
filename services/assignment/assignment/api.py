"""HTTP API of the assignment service: teams, on-call schedules (who is on call when), escalation
policies and routing rules, each versioned with history; a routing dry run; and per incident its
assignment, acknowledgement, escalation, reassignment and hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from assignment import config, domain, oncall, store, tasks
from assignment.handlers import VersionConflict, build
from assignment.runtime import AssignmentRuntime
from opsledger import timers
from opsledger.auth import Principal, require_roles
from opsledger.db import timers_table
from opsledger.events.assignment import (
    EscalationTier,
    HoldReason,
    OnCallScheduleChanged,
    RoutingRule,
    RoutingRulesChanged,
    ScheduleLayer,
    ScheduleOverride,
    TaskOrigin,
    TaskPriority,
    TaskStatus,
    TeamMember,
)
from opsledger.events.common import PersonRef
from opsledger.ids import uuid7
from opsledger.problems import FieldError, Problem, ProblemDetails
from opsledger.service import UnitOfWorkDep, runtime_of

router = APIRouter(prefix="/v1", tags=["assignment"])
read_access = require_roles("analyst", "responder", "manager", "admin")
config_access = require_roles("manager", "admin")
routing_access = require_roles("admin")
dry_run_access = require_roles("admin", "manager", "analyst")
work_access = require_roles("responder", "manager")
manager_access = require_roles("manager")

AUTH = ProblemDetails.responses(401, 403)
READ = ProblemDetails.responses(401, 403, 404, 422)
CHANGE = ProblemDetails.responses(401, 403, 404, 409, 422)
COMMAND = ProblemDetails.responses(401, 403, 404, 409, 422)
ObjectId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Change(_Body):
    comment: str | None = Field(default=None, max_length=2000)
    # Optimistic concurrency: the version this change was made from (0: the object is new). When
    # someone else put a newer version in force meanwhile, the change is refused (409).
    expected_version: StrictInt | None = Field(default=None, ge=0)


# --------------------------------------------------------------------------- definitions


class TeamSpec(_Body):
    name: str = Field(min_length=1, max_length=200)
    members: list[TeamMember] = Field(default_factory=list, max_length=1000)
    manager: PersonRef | None = None
    escalation_policy_id: str | None = Field(default=None, max_length=200)


class ScheduleSpec(_Body):
    name: str = Field(min_length=1, max_length=200)
    team_id: str | None = Field(default=None, max_length=200)
    time_zone: str = Field(min_length=1, max_length=64, description="IANA, e.g. Europe/Berlin")
    layers: list[ScheduleLayer] = Field(min_length=1, max_length=50)
    overrides: list[ScheduleOverride] = Field(default_factory=list, max_length=1000)


class PolicySpec(_Body):
    name: str = Field(min_length=1, max_length=200)
    team_id: str | None = Field(default=None, max_length=200)
    tiers: list[EscalationTier] = Field(min_length=1, max_length=20)
    repeat: int = Field(default=0, ge=0, le=10, description="passes through the tiers after the first")


class RoutingSpec(_Body):
    rules: list[RoutingRule] = Field(default_factory=list, max_length=1000)
    default_team_id: str | None = Field(default=None, max_length=200)


class TeamChange(TeamSpec, _Change):
    pass


class ScheduleChange(ScheduleSpec, _Change):
    pass


class PolicyChange(PolicySpec, _Change):
    pass


class RoutingChange(RoutingSpec, _Change):
    pass


SpecT = TypeVar("SpecT", bound=BaseModel)


class Versioned(BaseModel, Generic[SpecT]):
    """One version of a configuration object."""

    id: str
    version: int
    changed_by: str = Field(description="the actor, `user:<sub>`")
    changed_at: datetime
    comment: str | None
    definition: SpecT


class VersionList(BaseModel, Generic[SpecT]):
    items: list[Versioned[SpecT]]


SPECS: dict[str, type[BaseModel]] = {
    "team": TeamSpec,
    "schedule": ScheduleSpec,
    "policy": PolicySpec,
    "routing": RoutingSpec,
}
NAMES = {"team": "team", "schedule": "schedule", "policy": "escalation policy", "routing": "routing rules"}


def _versioned(row: Any) -> dict[str, Any]:
    return {
        "id": row.object_id,
        "version": row.version,
        "changed_by": row.actor,
        "changed_at": row.created_at,
        "comment": row.comment,
        "definition": row.body,
    }


async def _one(runtime: AssignmentRuntime, kind: str, object_id: str) -> dict[str, Any]:
    async with runtime.sessionmaker() as session:
        rows = await store.current(session, kind, object_id)
    if not rows:
        raise Problem(404, f"no {NAMES[kind]} {object_id!r}", [FieldError(_path_field(kind), "unknown")])
    return _versioned(rows[0])


def _path_field(kind: str) -> str:
    return "path." + {"team": "team_id", "schedule": "schedule_id", "policy": "policy_id"}.get(kind, "id")


async def _list(runtime: AssignmentRuntime, kind: str) -> dict[str, Any]:
    async with runtime.sessionmaker() as session:
        rows = await store.current(session, kind)
    return {"items": [_versioned(r) for r in rows]}


async def _history(runtime: AssignmentRuntime, kind: str, object_id: str, limit: int) -> dict[str, Any]:
    async with runtime.sessionmaker() as session:
        rows = await store.history(session, kind, object_id, limit)
    if not rows:
        raise Problem(404, f"no {NAMES[kind]} {object_id!r}", [FieldError(_path_field(kind), "unknown")])
    return {"items": [_versioned(r) for r in rows]}


async def _change(
    runtime: AssignmentRuntime, uow: Any, kind: str, object_id: str, change: _Change, actor: str
) -> dict[str, Any]:
    body = change.model_dump(mode="json", exclude={"comment", "expected_version"})
    try:
        version, _ = await runtime.assignment.change_config(
            uow, kind, object_id, body, actor, change.comment, change.expected_version
        )
    except VersionConflict as exc:
        raise Problem(status.HTTP_409_CONFLICT, str(exc), [FieldError("body.expected_version", str(exc))]) from exc
    except config.ConfigError as exc:
        raise Problem(422, str(exc), [FieldError(exc.where, exc.message)]) from exc
    return {
        "id": object_id,
        "version": version,
        "changed_by": actor,
        "changed_at": uow.now,
        "comment": change.comment,
        "definition": body,
    }


Runtime = Annotated[AssignmentRuntime, Depends(runtime_of)]
Limit = Annotated[int, Query(ge=1, le=1000)]


# --------------------------------------------------------------------------- teams


@router.get("/teams", response_model=VersionList[TeamSpec], responses=AUTH)
async def list_teams(runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    """Every team in force."""
    return await _list(runtime, "team")


@router.get("/teams/{team_id}", response_model=Versioned[TeamSpec], responses=READ)
async def get_team(team_id: str, runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    return await _one(runtime, "team", team_id)


@router.put("/teams/{team_id}", response_model=Versioned[TeamSpec], responses=CHANGE)
async def put_team(
    team_id: ObjectId, body: TeamChange, runtime: Runtime, uow: UnitOfWorkDep, who: Principal = Depends(config_access)
) -> dict[str, Any]:
    """Create or replace a team (a new version, announced as TeamChanged)."""
    return await _change(runtime, uow, "team", team_id, body, who.actor)


@router.get("/teams/{team_id}/history", response_model=VersionList[TeamSpec], responses=READ)
async def team_history(
    team_id: str, runtime: Runtime, limit: Limit = 100, _: Principal = Depends(read_access)
) -> dict[str, Any]:
    """The team's versions, newest first."""
    return await _history(runtime, "team", team_id, limit)


# --------------------------------------------------------------------------- schedules


class OnCallOut(BaseModel):
    person: PersonRef
    source: str = Field(description="the layer (`layer '<name>'`) or `override`")
    layer: int | None = Field(description="index of the layer; null for an override")
    until: datetime | None = Field(description="when this stretch ends; null: beyond 35 days")


class OnCallAnswer(BaseModel):
    schedule_id: str
    version: int
    at: datetime
    on_call: OnCallOut | None = Field(description="null: nobody is on call then")


class ShiftOut(BaseModel):
    person: PersonRef
    start: datetime
    end: datetime
    source: str
    layer: int | None


class ShiftsAnswer(BaseModel):
    schedule_id: str
    version: int
    time_zone: str
    start: datetime
    end: datetime
    shifts: list[ShiftOut] = Field(description="in order; times nobody is on call are left out")


@router.get("/schedules", response_model=VersionList[ScheduleSpec], responses=AUTH)
async def list_schedules(runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    """Every on-call schedule in force."""
    return await _list(runtime, "schedule")


@router.get("/schedules/{schedule_id}", response_model=Versioned[ScheduleSpec], responses=READ)
async def get_schedule(schedule_id: str, runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    return await _one(runtime, "schedule", schedule_id)


@router.put("/schedules/{schedule_id}", response_model=Versioned[ScheduleSpec], responses=CHANGE)
async def put_schedule(
    schedule_id: ObjectId,
    body: ScheduleChange,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(config_access),
) -> dict[str, Any]:
    """Create or replace an on-call schedule (layers and overrides; OnCallScheduleChanged)."""
    return await _change(runtime, uow, "schedule", schedule_id, body, who.actor)


@router.get("/schedules/{schedule_id}/history", response_model=VersionList[ScheduleSpec], responses=READ)
async def schedule_history(
    schedule_id: str, runtime: Runtime, limit: Limit = 100, _: Principal = Depends(read_access)
) -> dict[str, Any]:
    return await _history(runtime, "schedule", schedule_id, limit)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _schedule(runtime: AssignmentRuntime, schedule_id: str) -> OnCallScheduleChanged:
    row = await _one(runtime, "schedule", schedule_id)
    obj = config.event_of("schedule", schedule_id, row["version"], row["definition"], row["comment"])
    assert isinstance(obj, OnCallScheduleChanged)
    return obj


@router.get("/schedules/{schedule_id}/oncall", response_model=OnCallAnswer, responses=READ)
async def who_is_on_call(
    schedule_id: str,
    runtime: Runtime,
    at: datetime | None = Query(None, description="the instant (default: now); without a zone, UTC"),
    _: Principal = Depends(read_access),
) -> dict[str, Any]:
    """Who is on call at an instant, from which layer or override, and until when."""
    schedule = await _schedule(runtime, schedule_id)
    when = _utc(at) if at is not None else runtime.clock.now()
    now = oncall.on_call(schedule, when)
    answer = None
    if now is not None:
        answer = {"person": now.person, "source": now.source, "layer": now.layer, "until": now.until}
    return {"schedule_id": schedule_id, "version": schedule.version, "at": when, "on_call": answer}


@router.get("/schedules/{schedule_id}/shifts", response_model=ShiftsAnswer, responses=READ)
async def rendered_shifts(
    schedule_id: str,
    runtime: Runtime,
    start: datetime = Query(alias="from", description="without a zone, UTC"),
    end: datetime = Query(alias="to", description="at most 93 days after `from`"),
    _: Principal = Depends(read_access),
) -> dict[str, Any]:
    """The rendered timeline: who is on call over [from, to), stretch by stretch."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise Problem(422, "field 'query.to': must be after 'from'", [FieldError("query.to", "must be after 'from'")])
    if end - start > oncall.MAX_RANGE:
        message = f"at most {oncall.MAX_RANGE.days} days after 'from'"
        raise Problem(422, f"field 'query.to': {message}", [FieldError("query.to", message)])
    schedule = await _schedule(runtime, schedule_id)
    return {
        "schedule_id": schedule_id,
        "version": schedule.version,
        "time_zone": schedule.time_zone,
        "start": start,
        "end": end,
        "shifts": [
            {"person": s.person, "start": s.start, "end": s.end, "source": s.source, "layer": s.layer}
            for s in oncall.shifts(schedule, start, end)
        ],
    }


# --------------------------------------------------------------------------- escalation policies


@router.get("/escalation-policies", response_model=VersionList[PolicySpec], responses=AUTH)
async def list_policies(runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    """Every escalation policy in force."""
    return await _list(runtime, "policy")


@router.get("/escalation-policies/{policy_id}", response_model=Versioned[PolicySpec], responses=READ)
async def get_policy(policy_id: str, runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    return await _one(runtime, "policy", policy_id)


@router.put("/escalation-policies/{policy_id}", response_model=Versioned[PolicySpec], responses=CHANGE)
async def put_policy(
    policy_id: ObjectId,
    body: PolicyChange,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(config_access),
) -> dict[str, Any]:
    """Create or replace an escalation policy (ordered tiers; EscalationPolicyChanged)."""
    return await _change(runtime, uow, "policy", policy_id, body, who.actor)


@router.get("/escalation-policies/{policy_id}/history", response_model=VersionList[PolicySpec], responses=READ)
async def policy_history(
    policy_id: str, runtime: Runtime, limit: Limit = 100, _: Principal = Depends(read_access)
) -> dict[str, Any]:
    return await _history(runtime, "policy", policy_id, limit)


# --------------------------------------------------------------------------- routing


@router.get("/routing", response_model=Versioned[RoutingSpec], responses=READ)
async def get_routing(runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    """The routing rules in force (ordered) and the default team."""
    return await _one(runtime, "routing", config.ROUTING_ID)


@router.put("/routing", response_model=Versioned[RoutingSpec], responses=CHANGE)
async def put_routing(
    body: RoutingChange, runtime: Runtime, uow: UnitOfWorkDep, who: Principal = Depends(routing_access)
) -> dict[str, Any]:
    """Replace the routing rules and default team (a new version; RoutingRulesChanged)."""
    return await _change(runtime, uow, "routing", config.ROUTING_ID, body, who.actor)


@router.get("/routing/history", response_model=VersionList[RoutingSpec], responses=READ)
async def routing_history(runtime: Runtime, limit: Limit = 100, _: Principal = Depends(read_access)) -> dict[str, Any]:
    return await _history(runtime, "routing", config.ROUTING_ID, limit)


class RouteOut(BaseModel):
    team_id: str | None
    escalation_policy_id: str | None
    rule_id: str | None
    reason: str


class RoutingDryRunBody(RoutingSpec):
    include_incidents: StrictBool = True
    limit: StrictInt | None = Field(default=None, ge=1)


class RouteChangeOut(BaseModel):
    incident_id: uuid.UUID
    title: str
    current: RouteOut
    candidate: RouteOut


class RoutingDryRun(BaseModel):
    current_version: int | None
    evaluated: int
    would_change: int
    changes: list[RouteChangeOut]


def _route_key(r: config.Route | None) -> tuple[str, str | None, str | None] | None:
    return None if r is None else (r.team_id, r.policy_id, r.rule_id)


def _route_out(r: config.Route | None) -> dict[str, Any]:
    if r is None:
        return {"team_id": None, "escalation_policy_id": None, "rule_id": None, "reason": "no route: nowhere to go"}
    return {"team_id": r.team_id, "escalation_policy_id": r.policy_id, "rule_id": r.rule_id, "reason": r.reason}


@router.post("/routing/dry-run", response_model=RoutingDryRun, responses=ProblemDetails.responses(401, 403, 422))
async def routing_dry_run(
    body: RoutingDryRunBody, runtime: Runtime, uow: UnitOfWorkDep, _: Principal = Depends(dry_run_access)
) -> dict[str, Any]:
    """Which recent incidents candidate rules would route elsewhere; emits and stores nothing."""
    current = await build(uow)
    candidate = RoutingRulesChanged(
        version=(current.routing.version + 1) if current.routing else 1,
        rules=body.rules,
        default_team_id=body.default_team_id,
    )
    try:
        config.check_routing(candidate, current)
    except config.ConfigError as exc:
        raise Problem(422, str(exc), [FieldError(exc.where, exc.message)]) from exc
    proposed = config.Config(current.teams, current.schedules, current.policies, candidate)
    limit = min(body.limit or runtime.settings.dry_run_max_incidents, runtime.settings.dry_run_max_incidents)
    rows = []
    if body.include_incidents:
        query = sa.select(store.known_incidents).order_by(store.known_incidents.c.logged_at.desc()).limit(limit)
        rows = list((await uow.session.execute(query)).all())
    changes = []
    for row in rows:
        state = store.state_of(row)
        before, after = config.route(current, state.facts), config.route(proposed, state.facts)
        if _route_key(before) != _route_key(after):
            changes.append(
                {
                    "incident_id": row.incident_id,
                    "title": row.title,
                    "current": _route_out(before),
                    "candidate": _route_out(after),
                }
            )
    return {
        "current_version": current.routing.version if current.routing else None,
        "evaluated": len(rows),
        "would_change": len(changes),
        "changes": changes,
    }


# --------------------------------------------------------------------------- incidents


class AssignmentOut(BaseModel):
    incident_id: uuid.UUID
    title: str
    status: str = Field(description="open | resolved | closed")
    team_id: str | None
    team_name: str | None
    escalation_policy_id: str | None
    tier: int | None = Field(description="index into the policy's tiers")
    repeat: int
    routing_rule_id: str | None
    assignee: PersonRef | None
    assigned_at: datetime | None
    reason: str | None = Field(description="why the last assignment chose whom it chose")
    acknowledged_by: str | None = Field(description="the actor; null: not acknowledged")
    on_hold: HoldReason | None
    ack_due_at: datetime | None = Field(description="when the acknowledgement timer fires, if running")


class CommandResult(BaseModel):
    events: list[str] = Field(description="the types of the events the command emitted")
    assignment: AssignmentOut


def _assignment(incident_id: uuid.UUID, s: domain.Incident, ack_due: datetime | None) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "title": s.title,
        "status": s.status,
        "team_id": s.team_id,
        "team_name": s.team_name,
        "escalation_policy_id": s.policy_id,
        "tier": s.tier,
        "repeat": s.repeat,
        "routing_rule_id": s.rule_id,
        "assignee": s.assignee,
        "assigned_at": s.assigned_at,
        "reason": s.reason,
        "acknowledged_by": s.acknowledged_by,
        "on_hold": s.hold,
        "ack_due_at": ack_due,
    }


async def _ack_due(session: Any, incident_id: uuid.UUID) -> datetime | None:
    key = domain.ack_timer_key(incident_id)
    return (await timers.pending(session, key)).get(key)


@router.get("/incidents/{incident_id}/assignment", response_model=AssignmentOut, responses=READ)
async def get_assignment(incident_id: uuid.UUID, runtime: Runtime, _: Principal = Depends(read_access)) -> Any:
    """Who has the incident, from which rule and tier, and whether it was acknowledged."""
    async with runtime.sessionmaker() as session:
        state = await store.incident(session, incident_id)
        due = await _ack_due(session, incident_id)
    if state is None:
        raise _unknown(incident_id)
    return _assignment(incident_id, state, due)


def _unknown(incident_id: uuid.UUID, what: str = "incident") -> Problem:
    detail = f"incident {incident_id} is unknown to assignment" if what == "incident" else f"no {what}"
    field = "path.incident_id" if what == "incident" else "body"
    return Problem(404, detail, [FieldError(field, detail)])


def _caller(p: Principal) -> domain.Caller:
    return domain.Caller(PersonRef(sub=p.sub, name=p.name, email=p.email), p.roles)


async def _run(
    runtime: AssignmentRuntime, uow: Any, incident_id: uuid.UUID, command: Any, actor: str
) -> dict[str, Any]:
    try:
        state, events = await runtime.assignment.execute(uow, incident_id, command, actor)
    except domain.NotFound as exc:
        raise _unknown(incident_id, str(exc)) from exc
    except domain.Forbidden as exc:
        raise Problem(403, str(exc), [FieldError("authorization", str(exc))]) from exc
    except domain.Conflict as exc:
        raise Problem(409, str(exc), [FieldError("path.incident_id", str(exc))]) from exc
    assert state is not None
    await uow.flush()  # the timer changes, so the answer shows the acknowledgement timer as it now is
    return {
        "events": [e.event_type for e in events],
        "assignment": _assignment(incident_id, state, await _ack_due(uow.session, incident_id)),
    }


class ReasonBody(_Body):
    reason: str = Field(min_length=1, max_length=2000)


class ReassignBody(ReasonBody):
    team_id: str | None = Field(default=None, min_length=1, max_length=200, description="default: the current team")
    assignee: str | None = Field(default=None, min_length=1, max_length=200, description="a member's `sub`")


class HoldBody(_Body):
    reason: HoldReason
    note: str | None = Field(default=None, max_length=2000)
    until: datetime | None = None


class ResumeBody(_Body):
    note: str | None = Field(default=None, max_length=2000)


@router.post("/incidents/{incident_id}/acknowledge", response_model=CommandResult, responses=COMMAND)
async def acknowledge(
    incident_id: uuid.UUID,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(work_access),
) -> dict[str, Any]:
    """The assignee, a member of the team or a manager takes the incident on: IncidentAcknowledged;
    escalation stops."""
    return await _run(runtime, uow, incident_id, domain.acknowledge(incident_id, _caller(who)), who.actor)


@router.post("/incidents/{incident_id}/escalate", response_model=CommandResult, responses=COMMAND)
async def escalate(
    incident_id: uuid.UUID,
    body: ReasonBody,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(manager_access),
) -> dict[str, Any]:
    """Move the incident to its policy's next tier now: IncidentEscalated, IncidentAssigned."""
    return await _run(runtime, uow, incident_id, domain.escalate(incident_id, _caller(who), body.reason), who.actor)


@router.post("/incidents/{incident_id}/reassign", response_model=CommandResult, responses=COMMAND)
async def reassign(
    incident_id: uuid.UUID,
    body: ReassignBody,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(manager_access),
) -> dict[str, Any]:
    """Give the incident to another team (its policy chooses the person) and/or a named member."""
    command = domain.reassign(incident_id, _caller(who), body.reason, body.team_id, body.assignee)
    return await _run(runtime, uow, incident_id, command, who.actor)


@router.post("/incidents/{incident_id}/hold", response_model=CommandResult, responses=COMMAND)
async def put_on_hold(
    incident_id: uuid.UUID,
    body: HoldBody,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(work_access),
) -> dict[str, Any]:
    """Work waits for a vendor, a customer or a change window: IncidentPutOnHold (SLA clocks pause)."""
    until = _utc(body.until) if body.until is not None else None
    command = domain.put_on_hold(incident_id, _caller(who), body.reason, body.note, until)
    return await _run(runtime, uow, incident_id, command, who.actor)


@router.post("/incidents/{incident_id}/resume", response_model=CommandResult, responses=COMMAND)
async def resume(
    incident_id: uuid.UUID,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    body: ResumeBody | None = None,
    who: Principal = Depends(work_access),
) -> dict[str, Any]:
    """Work goes on: IncidentResumed (SLA clocks resume)."""
    command = domain.resume(incident_id, _caller(who), body.note if body else None)
    return await _run(runtime, uow, incident_id, command, who.actor)


# --------------------------------------------------------------------------- tasks


class TaskOut(BaseModel):
    task_id: uuid.UUID
    incident_id: uuid.UUID
    title: str
    description: str | None
    assignee: PersonRef | None
    priority: TaskPriority
    status: TaskStatus
    due_at: datetime | None
    required_skills: list[str]
    origin: TaskOrigin
    review_event_id: uuid.UUID | None = Field(description="the PostIncidentReviewCompleted it comes from")
    action_item_id: str | None
    created_at: datetime


class TaskList(BaseModel):
    incident_id: uuid.UUID
    tasks: list[TaskOut] = Field(description="by priority, urgent first, then as created")


class TaskResult(BaseModel):
    events: list[str] = Field(description="the types of the events the command emitted")
    task: TaskOut


class MyWork(BaseModel):
    sub: str
    incidents: list[AssignmentOut] = Field(description="open incidents assigned to me, latest first")
    tasks: list[TaskOut] = Field(description="my open tasks, by priority, then due time")


class TaskBody(_Body):
    title: str = Field(min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=10000)
    assignee: str | None = Field(
        default=None, min_length=1, max_length=200, description="a `sub`; none: a member with the skills is chosen"
    )
    priority: TaskPriority = TaskPriority.MEDIUM
    due_at: datetime | None = Field(default=None, description="TaskOverdue fires then if still open; no zone: UTC")
    required_skills: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=20
    )


class TaskReassignBody(ReasonBody):
    assignee: str | None = Field(
        default=None, min_length=1, max_length=200, description="a `sub`; none: the service picks again"
    )


class TaskStatusBody(_Body):
    status: TaskStatus
    note: str | None = Field(default=None, max_length=2000)


def _task_out(incident_id: uuid.UUID, t: domain.Task) -> dict[str, Any]:
    return {
        "task_id": t.task_id,
        "incident_id": incident_id,
        "title": t.title,
        "description": t.description,
        "assignee": t.assignee,
        "priority": t.priority,
        "status": t.status,
        "due_at": t.due_at,
        "required_skills": list(t.required_skills),
        "origin": t.origin,
        "review_event_id": t.review_event_id,
        "action_item_id": t.action_item_id,
        "created_at": t.created_at,
    }


async def _run_task(
    runtime: AssignmentRuntime, uow: Any, incident_id: uuid.UUID, task_id: uuid.UUID, command: Any, actor: str
) -> dict[str, Any]:
    try:
        state, events = await runtime.assignment.execute(uow, incident_id, command, actor)
    except domain.NotFound as exc:
        raise _unknown(incident_id, str(exc)) from exc
    except domain.Conflict as exc:
        raise Problem(409, str(exc), [FieldError("path.task_id", str(exc))]) from exc
    task = state.task(task_id) if state is not None else None
    assert task is not None
    return {"events": [e.event_type for e in events], "task": _task_out(incident_id, task)}


@router.post(
    "/incidents/{incident_id}/tasks",
    status_code=201,
    response_model=TaskResult,
    responses=ProblemDetails.responses(401, 403, 404, 422),
)
async def create_task(
    incident_id: uuid.UUID, body: TaskBody, runtime: Runtime, uow: UnitOfWorkDep, who: Principal = Depends(work_access)
) -> dict[str, Any]:
    """Split a task off the incident: TaskCreated (and TaskAssigned when the service picks the person)."""
    task_id = uuid7()
    command = tasks.create(
        incident_id,
        _caller(who),
        task_id,
        title=body.title,
        description=body.description,
        assignee=body.assignee,
        priority=body.priority,
        due_at=_utc(body.due_at) if body.due_at is not None else None,
        required_skills=body.required_skills,
    )
    return await _run_task(runtime, uow, incident_id, task_id, command, who.actor)


@router.get("/incidents/{incident_id}/tasks", response_model=TaskList, responses=READ)
async def list_tasks(incident_id: uuid.UUID, runtime: Runtime, _: Principal = Depends(read_access)) -> dict[str, Any]:
    """The incident's tasks, urgent first."""
    async with runtime.sessionmaker() as session:
        state = await store.incident(session, incident_id)
    if state is None:
        raise _unknown(incident_id)
    return {"incident_id": incident_id, "tasks": [_task_out(incident_id, t) for t in tasks.ordered(state.tasks)]}


@router.post("/incidents/{incident_id}/tasks/{task_id}/reassign", response_model=TaskResult, responses=COMMAND)
async def reassign_task(
    incident_id: uuid.UUID,
    task_id: uuid.UUID,
    body: TaskReassignBody,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(work_access),
) -> dict[str, Any]:
    """Give an open task to someone else (named, or picked again): TaskAssigned."""
    command = tasks.reassign(incident_id, task_id, _caller(who), body.assignee, body.reason)
    return await _run_task(runtime, uow, incident_id, task_id, command, who.actor)


@router.post("/incidents/{incident_id}/tasks/{task_id}/status", response_model=TaskResult, responses=COMMAND)
async def change_task_status(
    incident_id: uuid.UUID,
    task_id: uuid.UUID,
    body: TaskStatusBody,
    runtime: Runtime,
    uow: UnitOfWorkDep,
    who: Principal = Depends(work_access),
) -> dict[str, Any]:
    """Move a task on (open, in progress, done, cancelled): TaskStatusChanged; 409 once it is final."""
    command = tasks.change_status(incident_id, task_id, _caller(who), body.status, body.note)
    return await _run_task(runtime, uow, incident_id, task_id, command, who.actor)


@router.get("/my-work", response_model=MyWork, responses=AUTH)
async def my_work(runtime: Runtime, who: Principal = Depends(work_access)) -> dict[str, Any]:
    """The open incidents assigned to me, and my open tasks."""
    async with runtime.sessionmaker() as session:
        incidents = await store.incidents_of_person(session, who.sub)
        mine = await store.tasks_of_person(session, who.sub)
        keys = [domain.ack_timer_key(i) for i, _ in incidents]
        t = timers_table.c
        due = dict((await session.execute(sa.select(t.key, t.due_at).where(t.key.in_(keys)))).all()) if keys else {}
    far = datetime.max.replace(tzinfo=UTC)
    mine.sort(key=lambda it: (tasks.PRIORITY_ORDER[it[1].priority], it[1].due_at or far, it[1].created_at))
    return {
        "sub": who.sub,
        "incidents": [_assignment(i, s, due.get(domain.ack_timer_key(i))) for i, s in incidents],
        "tasks": [_task_out(i, t) for i, t in mine],
    }
