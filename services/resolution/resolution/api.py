"""HTTP API of the resolution service: resolve, close and reopen an incident, the transitions its
state allows now, status updates, and the post-incident review (draft, approval, Markdown)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import PlainTextResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from opsledger.auth import Principal, require_roles
from opsledger.events.common import PersonRef
from opsledger.events.resolution import ActionItem, Audience, ClosureCode, ResolutionCode
from opsledger.problems import FieldError, Problem, ProblemDetails
from opsledger.service import UnitOfWorkDep
from opsledger.stage import Command
from resolution import decider, domain, store
from resolution.domain import Action, Context, Incident
from resolution.runtime import ResolutionRuntimeDep

router = APIRouter(prefix="/v1/incidents", tags=["resolution"])
work_access = require_roles("responder", "manager")
reopen_access = require_roles("reporter", "responder")
state_access = require_roles("reporter", "responder", "manager", "analyst", "admin")
read_access = require_roles("analyst", "responder", "manager", "admin")
approve_access = require_roles("manager")

COMMAND = ProblemDetails.responses(401, 403, 404, 409, 422)
READ = ProblemDetails.responses(401, 403, 404, 422)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


Text = Annotated[str, Field(min_length=1, max_length=20000), AfterValidator(_not_blank)]
Line = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_not_blank)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResolveBody(_Body):
    code: ResolutionCode
    root_cause: Text | None = None
    steps_taken: Text | None = None
    duplicate_of: uuid.UUID | None = Field(
        default=None, description="the incident this one duplicates (code duplicate)"
    )
    change_ref: str | None = Field(default=None, max_length=200, description="the change behind it (caused_by_change)")


class CloseBody(_Body):
    code: ClosureCode = ClosureCode.RESOLVED
    note: str | None = Field(default=None, max_length=2000)


class ReopenBody(_Body):
    reason: Line


class UpdateBody(_Body):
    audience: Audience
    message: Annotated[str, Field(min_length=1, max_length=5000), AfterValidator(_not_blank)]


class PersonBody(_Body):
    sub: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class ActionItemBody(_Body):
    item_id: str | None = Field(default=None, min_length=1, max_length=200, description="default: A1, A2, ...")
    title: Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_not_blank)]
    owner: PersonBody
    due: date | None = None


class ReviewBody(_Body):
    review_id: str | None = Field(default=None, min_length=1, max_length=200, description="default: generated")
    summary: Text
    impact: Text = Field(description="customer and business impact")
    root_cause: Text
    contributing_factors: list[Line] = Field(default_factory=list, max_length=100)
    went_well: list[Line] = Field(default_factory=list, max_length=100)
    to_improve: list[Line] = Field(default_factory=list, max_length=100)
    action_items: list[ActionItemBody] = Field(default_factory=list, max_length=200)


# --------------------------------------------------------------------------- answers


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventRef(_Out):
    event_id: uuid.UUID
    event_type: str


class CommandResult(_Out):
    incident_id: uuid.UUID
    state: domain.Status
    events: list[EventRef]


class TransitionOut(_Out):
    action: Action
    allowed: bool
    reason: str | None = Field(description="why it is not allowed now")
    missing: list[str] = Field(description="what it would need")


class ResolutionOut(_Out):
    code: ResolutionCode
    at: datetime
    auto: bool
    by: PersonRef | None
    root_cause: str | None
    steps_taken: str | None


class StateOut(_Out):
    incident_id: uuid.UUID
    title: str
    state: domain.Status
    priority: str | None
    resolution: ResolutionOut | None
    closure_code: ClosureCode | None
    closed_at: datetime | None
    reopened: int
    reopen_until: datetime | None
    auto_close_at: datetime | None
    review_required: bool
    review_approved: bool
    alerts: dict[str, bool] = Field(description="dedup key -> still firing at its source")
    transitions: list[TransitionOut] = Field(description="this service's transitions: allowed now, or why not")


class EntryOut(_Out):
    event_id: uuid.UUID
    at: datetime
    event_type: str
    actor: str
    text: str


class InvolvedOut(_Out):
    person: PersonRef
    parts: list[str]


class DraftOut(_Out):
    incident_id: uuid.UUID
    title: str
    priority: str | None
    state: domain.Status
    review_required: bool
    summary: str
    root_cause: str | None
    resolution: ResolutionOut | None
    time_to_acknowledge_seconds: float | None
    time_to_resolve_seconds: float | None
    people: list[InvolvedOut]
    timeline: list[EntryOut] = Field(description="the recorded events, oldest first, by event id")


class ReviewOut(CommandResult):
    review: dict[str, Any] = Field(description="the PostIncidentReviewCompleted payload")


# --------------------------------------------------------------------------- helpers


def _person(principal: Principal) -> PersonRef:
    return PersonRef(sub=principal.sub, name=principal.name, email=principal.email)


def _not_found(incident_id: uuid.UUID) -> Problem:
    message = f"incident {incident_id} is unknown to the resolution service"
    return Problem(status.HTTP_404_NOT_FOUND, message, [FieldError("path.incident_id", message)])


async def _run(
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    incident_id: uuid.UUID,
    command: Command[Incident, Context],
    principal: Principal,
) -> tuple[Incident, dict[str, Any]]:
    try:
        state, envelopes = await runtime.resolution.execute(uow, incident_id, command, principal.actor)
    except domain.NotFound as exc:
        raise _not_found(incident_id) from exc
    except domain.Forbidden as exc:
        raise Problem(status.HTTP_403_FORBIDDEN, str(exc), [FieldError("authorization", str(exc))]) from exc
    events = [{"event_id": e.event_id, "event_type": e.event_type} for e in envelopes]
    return state, {"incident_id": incident_id, "state": state.status, "events": events}


async def _read(runtime: ResolutionRuntimeDep, incident_id: uuid.UUID) -> Incident:
    async with runtime.sessionmaker() as session:
        state = await store.load_one(session, incident_id)
    if state is None:
        raise _not_found(incident_id)
    return state


def _resolution(r: domain.Resolution | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "code": r.code,
        "at": r.at,
        "auto": r.auto,
        "by": r.by,
        "root_cause": r.root_cause,
        "steps_taken": r.steps_taken,
    }


# --------------------------------------------------------------------------- routes


@router.post("/{incident_id}/resolve", response_model=CommandResult, responses=COMMAND)
async def resolve(
    incident_id: uuid.UUID,
    body: ResolveBody,
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    person: Principal = Depends(work_access),
) -> dict[str, Any]:
    """Resolve: service is restored (a code, the root cause, the steps taken) -> IncidentResolved."""
    if (body.code is ResolutionCode.DUPLICATE) != (body.duplicate_of is not None):
        message = "required with code duplicate, and only then"
        raise Problem(422, f"field 'body.duplicate_of': {message}", [FieldError("body.duplicate_of", message)])
    if body.duplicate_of == incident_id:
        message = "an incident cannot duplicate itself"
        raise Problem(422, f"field 'body.duplicate_of': {message}", [FieldError("body.duplicate_of", message)])
    needs_cause = body.code not in (ResolutionCode.DUPLICATE, ResolutionCode.NO_FAULT_FOUND)
    if needs_cause and body.root_cause is None:
        message = f"required with code {body.code}"
        raise Problem(422, f"field 'body.root_cause': {message}", [FieldError("body.root_cause", message)])
    command = decider.resolve(
        incident_id,
        _person(person),
        code=body.code,
        root_cause=body.root_cause,
        steps_taken=body.steps_taken,
        duplicate_of=body.duplicate_of,
        change_ref=body.change_ref,
    )
    return (await _run(runtime, uow, incident_id, command, person))[1]


@router.post("/{incident_id}/close", response_model=CommandResult, responses=COMMAND)
async def close(
    incident_id: uuid.UUID,
    body: CloseBody,
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    person: Principal = Depends(work_access),
) -> dict[str, Any]:
    """Close a resolved incident (with its approved review when its priority needs one) -> IncidentClosed."""
    command = decider.close(incident_id, _person(person), body.code, body.note)
    return (await _run(runtime, uow, incident_id, command, person))[1]


@router.post("/{incident_id}/reopen", response_model=CommandResult, responses=COMMAND)
async def reopen(
    incident_id: uuid.UUID,
    body: ReopenBody,
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    person: Principal = Depends(reopen_access),
) -> dict[str, Any]:
    """Reopen a resolved incident within the window (a responder, or its reporter) -> IncidentReopened."""
    command = decider.reopen(incident_id, _person(person), body.reason, as_responder="responder" in person.roles)
    return (await _run(runtime, uow, incident_id, command, person))[1]


@router.get("/{incident_id}/state", response_model=StateOut, responses=READ)
async def incident_state(
    incident_id: uuid.UUID, runtime: ResolutionRuntimeDep, _: Principal = Depends(state_access)
) -> dict[str, Any]:
    """Where the incident stands, and which of this service's transitions are allowed now (why not)."""
    state = await _read(runtime, incident_id)
    policy = runtime.resolution.policy
    context = Context(policy, runtime.clock.now())
    transitions = []
    for action in Action:
        why = domain.refusal(action, state, context)
        transitions.append(
            {
                "action": action,
                "allowed": why is None,
                "reason": why.reason if why else None,
                "missing": list(why.missing) if why else [],
            }
        )
    return {
        "incident_id": incident_id,
        "title": state.title,
        "state": state.status,
        "priority": state.priority,
        "resolution": _resolution(state.resolution),
        "closure_code": state.closure_code,
        "closed_at": state.closed_at,
        "reopened": state.reopened,
        "reopen_until": domain.reopen_until(state, policy),
        "auto_close_at": domain.auto_close_at(state, policy),
        "review_required": domain.review_required(state, policy),
        "review_approved": state.review is not None,
        "alerts": dict(state.alerts),
        "transitions": transitions,
    }


@router.post(
    "/{incident_id}/updates", response_model=CommandResult, status_code=status.HTTP_201_CREATED, responses=COMMAND
)
async def status_update(
    incident_id: uuid.UUID,
    body: UpdateBody,
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    person: Principal = Depends(work_access),
) -> dict[str, Any]:
    """Tell responders or stakeholders where the incident stands -> IncidentStatusUpdated."""
    command = decider.status_update(_person(person), body.audience, body.message)
    return (await _run(runtime, uow, incident_id, command, person))[1]


@router.post("/{incident_id}/review/draft", response_model=DraftOut, responses=READ)
async def review_draft(
    incident_id: uuid.UUID, runtime: ResolutionRuntimeDep, _: Principal = Depends(work_access)
) -> dict[str, Any]:
    """Assemble a draft review from the incident's recorded events (nothing is written)."""
    state = await _read(runtime, incident_id)
    d = domain.draft(state, runtime.resolution.policy)
    return {
        "incident_id": incident_id,
        "title": d.title,
        "priority": d.priority,
        "state": d.status,
        "review_required": d.required,
        "summary": d.summary,
        "root_cause": d.root_cause,
        "resolution": _resolution(d.resolution),
        "time_to_acknowledge_seconds": d.time_to_acknowledge_seconds,
        "time_to_resolve_seconds": d.time_to_resolve_seconds,
        "people": [{"person": i.person, "parts": list(i.parts)} for i in d.people],
        "timeline": [
            {"event_id": e.event_id, "at": e.at, "event_type": e.event_type, "actor": e.actor, "text": e.text}
            for e in d.timeline
        ],
    }


@router.post("/{incident_id}/review", response_model=ReviewOut, responses=COMMAND)
async def complete_review(
    incident_id: uuid.UUID,
    body: ReviewBody,
    runtime: ResolutionRuntimeDep,
    uow: UnitOfWorkDep,
    manager: Principal = Depends(approve_access),
) -> dict[str, Any]:
    """A manager approves the post-incident review -> PostIncidentReviewCompleted (its action items
    become tasks in the assignment stage)."""
    ids = [item.item_id for item in body.action_items if item.item_id is not None]
    if len(ids) != len(set(ids)):
        message = "item ids must be unique within the review"
        raise Problem(422, f"field 'body.action_items': {message}", [FieldError("body.action_items", message)])
    items = [
        ActionItem(
            item_id=item.item_id or f"A{n}",
            title=item.title,
            owner=PersonRef(**item.owner.model_dump()),
            due=item.due,
        )
        for n, item in enumerate(body.action_items, start=1)
    ]
    command = decider.complete_review(
        incident_id,
        _person(manager),
        review_id=body.review_id or f"PIR-{uuid.uuid4().hex[:12]}",
        summary=body.summary,
        impact=body.impact,
        root_cause=body.root_cause,
        contributing_factors=body.contributing_factors,
        went_well=body.went_well,
        to_improve=body.to_improve,
        action_items=items,
    )
    state, result = await _run(runtime, uow, incident_id, command, manager)
    assert state.review is not None
    return {**result, "review": state.review.model_dump(mode="json")}


@router.get(
    "/{incident_id}/review.md",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/markdown": {}}, "description": "the review as Markdown"}, **READ},
)
async def review_markdown(
    incident_id: uuid.UUID, runtime: ResolutionRuntimeDep, _: Principal = Depends(read_access)
) -> PlainTextResponse:
    """The review as Markdown, for a wiki: the approved one, else the current draft (marked DRAFT)."""
    state = await _read(runtime, incident_id)
    text = domain.render_markdown(incident_id, state, runtime.resolution.policy)
    return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
