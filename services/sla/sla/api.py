"""HTTP API of the sla service: the policy (with history and this release's defaults), each
incident's clocks, and what-if replays of a candidate policy."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from opsledger.auth import Principal, require_roles
from opsledger.events import Envelope, EventPayload, registry
from opsledger.events.common import SlaTargetKind
from opsledger.events.sla import SlaPolicyRule
from opsledger.problems import FieldError, Problem, ProblemDetails
from opsledger.service import UnitOfWorkDep, runtime_of
from sla import domain, policy, store
from sla.clocks import Clock, read
from sla.handlers import VersionConflict
from sla.runtime import SlaRuntime

router = APIRouter(prefix="/v1", tags=["sla"])
read_access = require_roles("analyst", "responder", "manager", "admin")
admin_access = require_roles("admin")
what_if_access = require_roles("admin", "analyst")

READ = ProblemDetails.responses(401, 403, 422)
CURRENT = ProblemDetails.responses(401, 403, 503)
CHANGE = ProblemDetails.responses(401, 403, 409, 422)
INCIDENT = ProblemDetails.responses(401, 403, 404, 422)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyBody(_Body):
    """A whole policy: every priority's targets (a rule without category and service for each of
    P1..P5), narrower rules for categories or services as needed."""

    rules: list[SlaPolicyRule] = Field(min_length=1, max_length=1000)
    comment: str | None = Field(default=None, max_length=2000)
    # Optimistic concurrency: the version this change was made from; a newer one in force is a 409.
    expected_version: StrictInt | None = Field(default=None, ge=1)


class PolicyDefaults(_Body):
    rules: list[SlaPolicyRule]


class PolicyVersion(BaseModel):
    version: int
    rules: list[SlaPolicyRule]
    changed_by: str
    changed_at: datetime
    comment: str | None = None


class PolicyHistory(BaseModel):
    versions: list[PolicyVersion]


class TargetOut(BaseModel):
    target: str
    state: str = Field(description="running, paused, warned, breached, met or cancelled")
    priority: str
    policy_version: int
    rule: int = Field(description="the rule's index in that policy version")
    target_seconds: int
    business_hours: bool
    counted_from: datetime
    due_at: datetime | None = Field(description="paused: as if it resumed now")
    elapsed_seconds: float = Field(description="business time counted, pauses excluded")
    remaining_seconds: float
    paused_seconds: float = Field(description="business time excluded by pauses")
    warning_percents: list[int]
    warned: list[int]
    breached: bool
    stopped_at: datetime | None = None


class IncidentSla(BaseModel):
    incident_id: uuid.UUID
    at: datetime = Field(description="when the clocks were read")
    priority: str | None
    category: str | None
    service: str | None
    logged_at: datetime
    on_hold: bool
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    targets: list[TargetOut]
    previous: list[TargetOut] = Field(description="clocks withdrawn by re-targeting")


class WhatIfBody(_Body):
    rules: list[SlaPolicyRule] = Field(min_length=1, max_length=1000)
    start: AwareDatetime = Field(description="incidents logged at or after this")
    end: AwareDatetime = Field(description="and before this")
    limit: StrictInt | None = Field(default=None, ge=1)

    @field_validator("end")
    @classmethod
    def _after_start(cls, end: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("start")
        if start is not None and end <= start:
            raise ValueError("the window ends after it starts")
        return end


class Outcomes(BaseModel):
    met: int = 0
    breached: int = 0
    open: int = 0
    cancelled: int = 0
    compliance: float | None = Field(default=None, description="met / (met + breached)")


class PriorityOutcomes(BaseModel):
    priority: str
    target: str
    current: Outcomes
    candidate: Outcomes


class OutcomeChange(BaseModel):
    incident_id: uuid.UUID
    priority: str | None
    target: str
    current: str
    candidate: str


class WhatIfResult(BaseModel):
    current_policy_version: int
    evaluated: int
    until: datetime
    per_priority: list[PriorityOutcomes]
    changes: list[OutcomeChange]


# --------------------------------------------------------------------------- policy


def _unprocessable(exc: policy.PolicyError) -> Problem:
    return Problem(422, str(exc), [FieldError(f"body.{f}", m) for f, m in exc.errors])


def _version_json(row: Any) -> dict[str, Any]:
    return {
        "version": row.version,
        "rules": row.body["rules"],
        "changed_by": row.actor,
        "changed_at": row.created_at,
        "comment": row.comment,
    }


@router.get("/policies/defaults", response_model=PolicyDefaults, responses=READ)
async def policy_defaults(_: Principal = Depends(read_access)) -> dict[str, Any]:
    """This release's defaults, as the body of a PUT (what a fresh install starts with)."""
    return policy.default_body()


@router.get("/policies", response_model=PolicyVersion, responses=CURRENT)
async def get_policy(runtime: SlaRuntime = Depends(runtime_of), _: Principal = Depends(read_access)) -> dict[str, Any]:
    """The policy in force."""
    async with runtime.sessionmaker() as session:
        row = await store.policy_row(session)
    if row is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no policy yet (service starting)")
    return _version_json(row)


@router.put("/policies", response_model=PolicyVersion, responses=CHANGE)
async def put_policy(
    body: PolicyBody,
    uow: UnitOfWorkDep,
    runtime: SlaRuntime = Depends(runtime_of),
    admin: Principal = Depends(admin_access),
) -> dict[str, Any]:
    """Replace the whole policy (a new version, announced as SlaPolicyChanged). Clocks already
    running keep the version they were started under; new clocks and re-targets use this one."""
    try:
        version, stored = await runtime.sla.change_policy(
            uow, body.rules, admin.actor, body.comment, body.expected_version
        )
    except policy.PolicyError as exc:
        raise _unprocessable(exc) from exc
    except VersionConflict as exc:
        raise Problem(status.HTTP_409_CONFLICT, str(exc), [FieldError("body.expected_version", str(exc))]) from exc
    return {
        "version": version,
        "rules": stored["rules"],
        "changed_by": admin.actor,
        "changed_at": uow.now,
        "comment": body.comment,
    }


@router.get("/policies/history", response_model=PolicyHistory, responses=READ)
async def policy_history(
    limit: int = Query(100, ge=1, le=1000),
    runtime: SlaRuntime = Depends(runtime_of),
    _: Principal = Depends(read_access),
) -> dict[str, Any]:
    """Every version, newest first."""
    async with runtime.sessionmaker() as session:
        rows = await store.policy_history(session, limit)
    return {"versions": [_version_json(r) for r in rows]}


# --------------------------------------------------------------------------- incidents


def _target_json(clock: Clock, at: datetime) -> dict[str, Any]:
    r = read(clock, at)
    return {
        "target": str(clock.target),
        "state": str(r.state),
        "priority": clock.priority,
        "policy_version": clock.policy_version,
        "rule": clock.rule,
        "target_seconds": clock.target_seconds,
        "business_hours": clock.business_hours,
        "counted_from": clock.counted_from,
        "due_at": r.due_at,
        "elapsed_seconds": r.elapsed.total_seconds(),
        "remaining_seconds": r.remaining.total_seconds(),
        "paused_seconds": r.paused.total_seconds(),
        "warning_percents": list(clock.warning_percents),
        "warned": list(clock.warned),
        "breached": clock.breached,
        "stopped_at": clock.stopped_at,
    }


@router.get("/incidents/{incident_id}/sla", response_model=IncidentSla, responses=INCIDENT)
async def incident_sla(
    incident_id: uuid.UUID, runtime: SlaRuntime = Depends(runtime_of), _: Principal = Depends(read_access)
) -> dict[str, Any]:
    """The incident's clocks read now: each target's due time, business time elapsed and
    remaining, paused time and state."""
    async with runtime.sessionmaker() as session:
        row = await store.load_incident(session, incident_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"incident {incident_id} is unknown to the sla service")
    state = store.incident_from(row.state)
    at = runtime.clock.now()
    return {
        "incident_id": incident_id,
        "at": at,
        "priority": state.priority,
        "category": state.category,
        "service": state.service,
        "logged_at": state.logged_at,
        "on_hold": state.on_hold,
        "acknowledged_at": state.acknowledged_at,
        "resolved_at": state.resolved_at,
        "targets": [_target_json(c, at) for c in state.clocks],
        "previous": [_target_json(c, at) for c in state.previous],
    }


# --------------------------------------------------------------------------- what-if


def _outcome(state: domain.Incident | None, target: str) -> str | None:
    clock = state.clock(SlaTargetKind(target)) if state is not None else None
    if clock is None:
        return None
    if clock.cancelled:
        return "cancelled"
    if clock.breached:
        return "breached"
    return "met" if clock.stopped_at is not None else "open"


def _decoded(raw: list[dict[str, Any]]) -> list[tuple[Envelope, EventPayload | None]]:
    found: list[tuple[Envelope, EventPayload | None]] = []
    for item in raw:
        envelope = Envelope.model_validate(item)
        found.append((envelope, registry.decode(envelope)))
    return found


def _tally(
    counts: dict[tuple[str, str], dict[str, Outcomes]], priority: str, target: str, side: str, what: str
) -> None:
    entry = counts.setdefault((priority, target), {"current": Outcomes(), "candidate": Outcomes()})
    outcome = entry[side]
    setattr(outcome, what, getattr(outcome, what) + 1)


@router.post("/what-if", response_model=WhatIfResult, responses=READ)
async def what_if(
    body: WhatIfBody, runtime: SlaRuntime = Depends(runtime_of), _: Principal = Depends(what_if_access)
) -> dict[str, Any]:
    """Replay the incidents logged in [start, end) as recorded, under the policy in force and under
    the candidate, up to now: how met and breached counts and compliance per priority would change,
    and which incidents change outcome. Emits nothing, changes nothing."""
    settings = runtime.settings
    limit = min(body.limit or settings.what_if_max_incidents, settings.what_if_max_incidents)
    async with runtime.sessionmaker() as session:
        current = await runtime.sla.policies.current(session)
        try:  # numbered as the next version would be
            candidate = policy.build_policy(current.version + 1, body.rules)
        except policy.PolicyError as exc:
            raise _unprocessable(exc) from exc
        histories = await store.inputs_between(session, body.start, body.end, limit)
    until = runtime.clock.now()
    counts: dict[tuple[str, str], dict[str, Outcomes]] = {}
    changes = []
    for incident_id, raw in histories.items():
        events = _decoded(raw)
        before, _events = domain.replay(events, current, until)
        after, _events = domain.replay(events, candidate, until)
        for target in ("response", "resolution"):
            old, new = _outcome(before, target), _outcome(after, target)
            if old is not None and before is not None and before.priority is not None:
                _tally(counts, before.priority, target, "current", old)
            if new is not None and after is not None and after.priority is not None:
                _tally(counts, after.priority, target, "candidate", new)
            if old != new:
                priority = after.priority if after is not None else None
                changes.append(
                    {
                        "incident_id": incident_id,
                        "priority": priority,
                        "target": target,
                        "current": old or "none",
                        "candidate": new or "none",
                    }
                )
    per_priority = []
    for (priority, target), sides in sorted(counts.items()):
        for outcome in sides.values():
            decided = outcome.met + outcome.breached
            outcome.compliance = outcome.met / decided if decided else None
        per_priority.append({"priority": priority, "target": target, **sides})
    return {
        "current_policy_version": current.version,
        "evaluated": len(histories),
        "until": until,
        "per_priority": per_priority,
        "changes": changes,
    }
