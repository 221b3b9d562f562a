"""What the resolution service knows of an incident, and the pure rules over it (no I/O): the
lifecycle state machine as the other stages' events move it, which of this service's own
transitions (resolve, close, reopen, status update, review) are allowed now and why others are not,
the timeline of the events it recorded, and the post-incident review assembled from them."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter

from opsledger.events.common import PersonRef
from opsledger.events.resolution import ClosureCode, PostIncidentReviewCompleted, ResolutionCode

PRODUCER = "resolution"
SYSTEM_ACTOR = "system:resolution"
AUTO_CLOSE = "autoclose"  # timer kind: 'autoclose:<incident id>'
TIMELINE_LIMIT = 1000  # a review's timeline holds at most this many entries (the event contract's limit)


class Status(enum.StrEnum):
    """Where an incident stands: logged -> assigned -> acknowledged -> on hold <-> in progress ->
    resolved -> closed, and resolved -> in progress again when reopened."""

    LOGGED = "logged"
    ASSIGNED = "assigned"
    ACKNOWLEDGED = "acknowledged"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    RESOLVED = "resolved"
    CLOSED = "closed"


OPEN = frozenset({Status.LOGGED, Status.ASSIGNED, Status.ACKNOWLEDGED, Status.IN_PROGRESS, Status.ON_HOLD})


class Action(enum.StrEnum):
    """The transitions this service owns."""

    RESOLVE = "resolve"
    CLOSE = "close"
    REOPEN = "reopen"
    UPDATE = "update"  # a status update
    REVIEW = "review"  # complete (approve) the post-incident review


@dataclass(frozen=True)
class Policy:
    """What decisions are made under (from the settings)."""

    auto_resolve_sources: frozenset[str] = frozenset({"alertmanager", "pagerduty"})
    # integration id -> auto-resolve on or off; wins over the source's default
    auto_resolve_integrations: Mapping[str, bool] = field(default_factory=dict)
    auto_close_after: timedelta = timedelta(days=7)
    reopen_window: timedelta = timedelta(days=7)
    review_required: frozenset[str] = frozenset({"P1", "P2"})

    def auto_resolves(self, source: str, integration_id: str | None) -> bool:
        """Whether alerts of this source (integration) may resolve their incident automatically."""
        if integration_id is not None and integration_id in self.auto_resolve_integrations:
            return self.auto_resolve_integrations[integration_id]
        return source in self.auto_resolve_sources


@dataclass(frozen=True)
class Context:
    """A unit of work's policy and time (the time every event it stages carries)."""

    policy: Policy
    now: datetime


@dataclass(frozen=True)
class Entry:
    """One recorded event of the incident, told in a line."""

    event_id: uuid.UUID
    at: datetime
    event_type: str
    actor: str
    text: str


@dataclass(frozen=True)
class Involved:
    """A person who took part, and how."""

    person: PersonRef
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """The incident's latest resolution."""

    code: ResolutionCode
    at: datetime
    auto: bool = False
    by: PersonRef | None = None
    root_cause: str | None = None
    steps_taken: str | None = None


@dataclass(frozen=True)
class Incident:
    """What this service knows of one incident."""

    logged_at: datetime
    title: str
    source: str = "manual"
    integration_id: str | None = None
    service: str | None = None
    severity: str | None = None
    reporter_actor: str | None = None  # `user:<sub>` of the person who reported it
    correlation_id: str | None = None
    status: Status = Status.LOGGED
    priority: str | None = None
    alerts: Mapping[str, bool] = field(default_factory=dict)  # dedup key -> still firing at its source
    assigned_team: str | None = None
    assignee: PersonRef | None = None
    acknowledged_at: datetime | None = None
    resolution: Resolution | None = None
    closed_at: datetime | None = None
    closure_code: ClosureCode | None = None
    reopened: int = 0
    review: PostIncidentReviewCompleted | None = None
    people: Mapping[str, Involved] = field(default_factory=dict)  # sub -> involvement
    timeline: tuple[Entry, ...] = ()


_INCIDENT = TypeAdapter(Incident)


def to_json(state: Incident) -> dict[str, Any]:
    """The state as stored (JSON)."""
    data: dict[str, Any] = _INCIDENT.dump_python(state, mode="json")
    return data


def from_json(data: Mapping[str, Any]) -> Incident:
    return _INCIDENT.validate_python(data)


# --------------------------------------------------------------------------- refusals


class NotFound(Exception):
    """A command for an incident this service has not heard of (404)."""


class Forbidden(Exception):
    """The caller's roles allow the route, but not for this incident (403)."""


@dataclass(frozen=True)
class Refusal:
    """Why a transition is not allowed now, and what it would need."""

    reason: str
    missing: tuple[str, ...] = ()


class Refused(Exception):
    """A transition the incident's state does not allow (409, with the state and what is missing)."""

    def __init__(self, action: Action, status: Status, refusal: Refusal) -> None:
        super().__init__(f"cannot {action}: {refusal.reason}")
        self.action, self.status, self.refusal = action, status, refusal


def review_required(state: Incident, policy: Policy) -> bool:
    return state.priority is not None and state.priority in policy.review_required


def reopen_until(state: Incident, policy: Policy) -> datetime | None:
    if state.status is not Status.RESOLVED or state.resolution is None:
        return None
    return state.resolution.at + policy.reopen_window


def auto_close_at(state: Incident, policy: Policy) -> datetime | None:
    if state.status is not Status.RESOLVED or state.resolution is None:
        return None
    return state.resolution.at + policy.auto_close_after


def refusal(action: Action, state: Incident, context: Context) -> Refusal | None:
    """None when `action` is allowed on `state` now; else why not."""
    status, policy = state.status, context.policy
    if action is Action.RESOLVE:
        if status is Status.RESOLVED:
            return Refusal("the incident is resolved already", ("reopen it first (POST .../reopen)",))
        if status is Status.CLOSED:
            return Refusal("the incident is closed; a closed incident is final", ("a new incident",))
        return None
    if action is Action.CLOSE:
        if status is Status.CLOSED:
            return Refusal("the incident is closed already")
        if status is not Status.RESOLVED:
            return Refusal(f"the incident is {status}, not resolved", ("a resolution (POST .../resolve)",))
        if review_required(state, policy) and state.review is None:
            return Refusal(
                f"a {state.priority} incident needs its post-incident review approved before closure",
                ("an approved post-incident review (POST .../review)",),
            )
        return None
    if action is Action.REOPEN:
        if status is Status.CLOSED:
            return Refusal("the incident is closed; a closed incident is final", ("a new incident",))
        if status is not Status.RESOLVED:
            return Refusal(f"the incident is {status}, not resolved: it is open already")
        until = reopen_until(state, policy)
        if until is not None and context.now > until:
            return Refusal(
                f"the reopen window ended at {until.isoformat()} ({_span(policy.reopen_window)} after resolution)",
                ("a new incident",),
            )
        return None
    if action is Action.UPDATE:
        if status is Status.CLOSED:
            return Refusal("the incident is closed")
        return None
    # Action.REVIEW
    if state.review is not None:
        return Refusal(f"the review {state.review.review_id} was approved already")
    if status in OPEN:
        return Refusal(f"the incident is {status}: a review follows resolution", ("a resolution (POST .../resolve)",))
    return None


def check(action: Action, state: Incident | None, context: Context) -> Incident:
    """The state, when `action` is allowed on it; raises NotFound or Refused."""
    if state is None:
        raise NotFound
    why = refusal(action, state, context)
    if why is not None:
        raise Refused(action, state.status, why)
    return state


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours"
    return f"{seconds} seconds"


# --------------------------------------------------------------------------- timeline and people


def _who(payload: Mapping[str, Any], key: str) -> str | None:
    person = payload.get(key)
    if isinstance(person, Mapping):
        return str(person.get("name") or person.get("sub") or "") or None
    return None


def describe(event_type: str, payload: Mapping[str, Any], actor: str) -> str:
    """One line telling what an event means for the incident."""
    p = payload
    if event_type == "IncidentLogged":
        return f"Logged from {p.get('source')}: {p.get('title')} (severity {p.get('severity')})"
    if event_type == "IncidentPrioritized":
        return f"Prioritized {p.get('priority')}" + (" (major incident)" if p.get("major") else "")
    if event_type == "IncidentReprioritized":
        return f"Reprioritized {p.get('previous_priority')} -> {p.get('priority')}: {p.get('reason')}"
    if event_type == "IncidentAssigned":
        to = _who(p, "assignee") or "the team as a whole"
        return f"Assigned to {to} of team {p.get('team_name') or p.get('team_id')}: {p.get('reason')}"
    if event_type == "IncidentAcknowledged":
        by = _who(p, "by") or f"the source ({p.get('integration_id') or 'integration'})"
        return f"Acknowledged by {by}"
    if event_type == "IncidentEscalated":
        return (
            f"Escalated from tier {p.get('from_tier')} to tier {p.get('to_tier')} ({p.get('cause')}): {p.get('reason')}"
        )
    if event_type == "IncidentPutOnHold":
        return f"Put on hold ({p.get('reason')})" + (f": {p['note']}" if p.get("note") else "")
    if event_type == "IncidentResumed":
        return "Work resumed" + (f": {p['note']}" if p.get("note") else "")
    if event_type == "SlaWarning":
        return (
            f"SLA warning: {p.get('threshold_percent')}% of the {p.get('target')} target used (due {p.get('due_at')})"
        )
    if event_type == "SlaBreached":
        return f"SLA breached: the {p.get('target')} target was due {p.get('due_at')}"
    if event_type == "AlertResolved":
        return f"Alert {p.get('dedup_key')} resolved at its source ({p.get('source')})"
    if event_type == "IncidentResolved":
        if p.get("auto"):
            return "Resolved automatically: every correlated alert resolved at its source"
        text = f"Resolved ({p.get('code')}) by {_who(p, 'resolved_by') or actor}"
        return text + (f"; root cause: {p['root_cause']}" if p.get("root_cause") else "")
    if event_type == "IncidentReopened":
        trigger: Mapping[str, Any] = p.get("by") or {}
        who = _who(trigger, "person") or (
            f"alert {trigger.get('dedup_key')} firing again" if trigger.get("dedup_key") else actor
        )
        return f"Reopened by {who}: {p.get('reason')}"
    if event_type == "IncidentClosed":
        how = "automatically after the resolution held" if p.get("auto") else f"by {_who(p, 'closed_by') or actor}"
        return f"Closed ({p.get('code')}) {how}"
    if event_type == "IncidentStatusUpdated":
        return f"Status update to {p.get('audience')} by {actor}: {p.get('message')}"
    if event_type == "PostIncidentReviewCompleted":
        return f"Post-incident review {p.get('review_id')} approved by {_who(p, 'approved_by') or actor}"
    return event_type


def record(
    state: Incident, event_id: uuid.UUID, at: datetime, event_type: str, actor: str, payload: Mapping[str, Any]
) -> Incident:
    """The state with the event on its timeline (once: an event already there changes nothing)."""
    if len(state.timeline) >= TIMELINE_LIMIT or any(e.event_id == event_id for e in state.timeline):
        return state
    entry = Entry(event_id, at, event_type, actor, describe(event_type, payload, actor)[:2000])
    return replace(state, timeline=(*state.timeline, entry))


def involve(state: Incident, person: PersonRef | None, part: str) -> Incident:
    """The state with `person` among the people involved, `part` among what they did."""
    if person is None:
        return state
    known = state.people.get(person.sub)
    if known is None:
        involved = Involved(person, (part,))
    else:
        # Keep the newest name and email the events carried, and every part once.
        merged = PersonRef(
            sub=person.sub, name=person.name or known.person.name, email=person.email or known.person.email
        )
        involved = Involved(merged, known.parts if part in known.parts else (*known.parts, part))
    return replace(state, people={**state.people, person.sub: involved})


def person_of(actor: str, name: str | None = None, email: str | None = None) -> PersonRef | None:
    """The person an actor `user:<sub>` names (None for integrations and services)."""
    kind, _, sub = actor.partition(":")
    return PersonRef(sub=sub, name=name, email=email) if kind == "user" and sub else None


# --------------------------------------------------------------------------- review


@dataclass(frozen=True)
class Draft:
    """A post-incident review as far as the recorded events tell it; people fill in the rest."""

    title: str
    priority: str | None
    status: Status
    summary: str
    root_cause: str | None
    timeline: tuple[Entry, ...]
    time_to_acknowledge_seconds: float | None
    time_to_resolve_seconds: float | None
    people: tuple[Involved, ...]
    resolution: Resolution | None
    required: bool


def time_to_acknowledge(state: Incident) -> float | None:
    if state.acknowledged_at is None:
        return None
    return max(0.0, (state.acknowledged_at - state.logged_at).total_seconds())


def time_to_resolve(state: Incident) -> float | None:
    if state.resolution is None:
        return None
    return max(0.0, (state.resolution.at - state.logged_at).total_seconds())


def draft(state: Incident, policy: Policy) -> Draft:
    """Assemble the draft review from the incident's recorded events."""
    r = state.resolution
    summary = f"{state.priority or 'Unprioritized'} incident '{state.title}'"
    if state.service:
        summary += f" on {state.service}"
    if r is not None:
        summary += f", resolved ({r.code}) {_span_text(time_to_resolve(state))} after it was logged"
    if state.reopened:
        summary += f"; reopened {state.reopened} time(s)"
    return Draft(
        title=state.title,
        priority=state.priority,
        status=state.status,
        summary=summary + ".",
        root_cause=r.root_cause if r is not None else None,
        timeline=tuple(sorted(state.timeline, key=lambda e: e.at)),
        time_to_acknowledge_seconds=time_to_acknowledge(state),
        time_to_resolve_seconds=time_to_resolve(state),
        people=tuple(state.people.values()),
        resolution=r,
        required=review_required(state, policy),
    )


def _span_text(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _md(text: str) -> str:
    # A review is pasted into wikis: keep what people wrote from breaking the surrounding markup.
    return text.replace("\r", "").replace("\n", " ").replace("|", "\\|").strip()


def _bullets(items: Iterable[str], empty: str = "_none recorded_") -> list[str]:
    lines = [f"- {_md(i)}" for i in items]
    return lines or [f"- {empty}"]


def render_markdown(incident_id: uuid.UUID, state: Incident, policy: Policy) -> str:
    """The incident's review as Markdown: the approved one, else the current draft (marked so)."""
    review, d = state.review, draft(state, policy)
    lines = [f"# Post-incident review: {_md(state.title)}", ""]
    lines.append(f"- Incident: `{incident_id}`")
    lines.append(f"- Priority: {state.priority or 'unknown'}")
    lines.append(f"- Status: {state.status}")
    if review is None:
        lines.append("- Review: **DRAFT** (not approved yet)")
    else:
        approver = review.approved_by.name or review.approved_by.sub
        lines.append(f"- Review: `{_md(review.review_id)}`, approved by {_md(approver)}")
    tta = review.time_to_acknowledge_seconds if review is not None else d.time_to_acknowledge_seconds
    ttr = review.time_to_resolve_seconds if review is not None else d.time_to_resolve_seconds
    lines.append(f"- Time to acknowledge: {_span_text(tta)}")
    lines.append(f"- Time to resolve: {_span_text(ttr)}")
    lines += ["", "## Summary", "", _md(review.summary if review is not None else d.summary)]
    if review is not None:
        lines += ["", "## Customer and business impact", "", _md(review.impact)]
    root = review.root_cause if review is not None else d.root_cause
    lines += ["", "## Root cause", "", _md(root) if root else "_to be written_"]
    if review is not None:
        lines += ["", "### Contributing factors", "", *_bullets(review.contributing_factors)]
        lines += ["", "## What went well", "", *_bullets(review.went_well)]
        lines += ["", "## What to improve", "", *_bullets(review.to_improve)]
        lines += ["", "## Action items", ""]
        if review.action_items:
            lines += ["| id | action | owner | due |", "|---|---|---|---|"]
            for a in review.action_items:
                owner = a.owner.name or a.owner.sub
                lines.append(f"| {_md(a.item_id)} | {_md(a.title)} | {_md(owner)} | {a.due or ''} |")
        else:
            lines.append("- _none_")
    lines += ["", "## People involved", ""]
    lines += _bullets(f"{i.person.name or i.person.sub} ({', '.join(i.parts)})" for i in d.people)
    lines += ["", "## Timeline (UTC)", "", "| time | event | what happened |", "|---|---|---|"]
    entries: Sequence[tuple[uuid.UUID, datetime, str]] = (
        [(t.event_id, t.at, t.text) for t in review.timeline]
        if review is not None
        else [(e.event_id, e.at, e.text) for e in d.timeline]
    )
    for event_id, at, text in entries:
        lines.append(f"| {at.strftime('%Y-%m-%d %H:%M:%S')} | `{event_id}` | {_md(text)} |")
    return "\n".join(lines) + "\n"
