"""The resolution stage's decisions as pure functions over its state of one incident (no I/O): the
reactions to the other stages' events, registered in `decider` (the consumer subscribes to exactly
these types), the auto-close timer, and the commands people give. Each returns the new state, the
events that announce it and the timers it schedules or cancels; handlers.py runs them."""

from __future__ import annotations

import uuid
from dataclasses import replace

from opsledger.events import Envelope, EventPayload, derived_event_id
from opsledger.events.assignment import (
    IncidentAcknowledged,
    IncidentAssigned,
    IncidentEscalated,
    IncidentPutOnHold,
    IncidentResumed,
)
from opsledger.events.common import PersonRef
from opsledger.events.intake import AlertCorrelated, AlertResolved, IncidentLogged
from opsledger.events.resolution import (
    ActionItem,
    Audience,
    ClosureCode,
    CorrelationRefused,
    IncidentClosed,
    IncidentReopened,
    IncidentResolved,
    IncidentStatusUpdated,
    PostIncidentReviewCompleted,
    ReopenKind,
    ReopenTrigger,
    ResolutionCode,
    ReviewTimelineEntry,
)
from opsledger.events.sla import SlaBreached, SlaWarning
from opsledger.events.triage import IncidentPrioritized, IncidentReprioritized
from opsledger.stage import Command, Decider, Decision
from opsledger.timers import FiredTimer, Timer
from resolution import domain
from resolution.domain import Action, Context, Incident, Resolution, Status

decider: Decider[Incident, Context] = Decider()


def auto_close_key(incident_id: uuid.UUID | str) -> str:
    return f"{domain.AUTO_CLOSE}:{incident_id}"


def _auto_close_timer(incident_id: uuid.UUID | str, state: Incident, context: Context) -> Timer:
    due = domain.auto_close_at(state, context.policy)
    assert due is not None
    return Timer(auto_close_key(incident_id), due, {"incident_id": str(incident_id)})


def _seen(state: Incident, event: Envelope) -> Incident:
    return domain.record(state, event.event_id, event.occurred_at, event.event_type, event.actor, event.payload)


def _own(state: Incident, event_id: uuid.UUID, context: Context, payload: EventPayload) -> Incident:
    """The state with an event this decision announces on its timeline (its id derived as the stage will)."""
    body = payload.model_dump(mode="json")
    return domain.record(state, event_id, context.now, payload.event_type, domain.SYSTEM_ACTOR, body)


# --------------------------------------------------------------------------- reactions


@decider.on(IncidentLogged)
def on_logged(state: Incident | None, event: Envelope, logged: IncidentLogged, context: Context) -> Decision[Incident]:
    """Remember the incident (once: a second IncidentLogged for it changes nothing)."""
    if state is not None:
        return Decision(state)
    reporter = domain.person_of(event.actor, logged.reporter.name if logged.reporter else None)
    new = Incident(
        logged_at=event.occurred_at,
        title=logged.title,
        source=logged.source,
        integration_id=logged.integration_id,
        service=logged.service,
        severity=str(logged.severity),
        reporter_actor=event.actor if reporter is not None else None,
        correlation_id=event.correlation_id,
        alerts={} if logged.source == "manual" else {logged.dedup_key: True},
    )
    return Decision(domain.involve(_seen(new, event), reporter, "reported"))


@decider.on(IncidentPrioritized, IncidentReprioritized)
def on_prioritized(
    state: Incident | None, event: Envelope, p: IncidentPrioritized | IncidentReprioritized, context: Context
) -> Decision[Incident]:
    if state is None:
        return Decision(None)
    return Decision(replace(_seen(state, event), priority=p.priority))


@decider.on(IncidentAssigned)
def on_assigned(
    state: Incident | None, event: Envelope, assigned: IncidentAssigned, context: Context
) -> Decision[Incident]:
    """An (re)assignment waits for a new acknowledgement; on hold stays on hold; after resolution
    the record changes but not the state."""
    if state is None:
        return Decision(None)
    new = replace(_seen(state, event), assigned_team=assigned.team_id, assignee=assigned.assignee)
    if new.status in (Status.LOGGED, Status.ASSIGNED, Status.ACKNOWLEDGED, Status.IN_PROGRESS):
        new = replace(new, status=Status.ASSIGNED)
    return Decision(domain.involve(new, assigned.assignee, "assigned"))


@decider.on(IncidentAcknowledged)
def on_acknowledged(
    state: Incident | None, event: Envelope, ack: IncidentAcknowledged, context: Context
) -> Decision[Incident]:
    if state is None:
        return Decision(None)
    new = _seen(state, event)
    if new.status in (Status.LOGGED, Status.ASSIGNED):
        new = replace(new, status=Status.ACKNOWLEDGED)
    if new.acknowledged_at is None:
        new = replace(new, acknowledged_at=event.occurred_at)
    return Decision(domain.involve(new, ack.by, "acknowledged"))


@decider.on(IncidentPutOnHold)
def on_hold(state: Incident | None, event: Envelope, hold: IncidentPutOnHold, context: Context) -> Decision[Incident]:
    if state is None:
        return Decision(None)
    new = _seen(state, event)
    return Decision(replace(new, status=Status.ON_HOLD) if new.status in domain.OPEN else new)


@decider.on(IncidentResumed)
def on_resumed(state: Incident | None, event: Envelope, _: IncidentResumed, context: Context) -> Decision[Incident]:
    if state is None:
        return Decision(None)
    new = _seen(state, event)
    return Decision(replace(new, status=Status.IN_PROGRESS) if new.status is Status.ON_HOLD else new)


@decider.on(IncidentEscalated, SlaWarning, SlaBreached)
def on_noted(state: Incident | None, event: Envelope, _: EventPayload, context: Context) -> Decision[Incident]:
    """Events the review's timeline tells, without changing the state."""
    if state is None:
        return Decision(None)
    return Decision(_seen(state, event))


@decider.on(AlertCorrelated)
def on_correlated(
    state: Incident | None, event: Envelope, alert: AlertCorrelated, context: Context
) -> Decision[Incident]:
    """The alert fires (again). One that had resolved at its source firing again after the
    incident's resolution, within the reopen window, means the fix did not hold: reopen. So does
    an alert firing after a person resolved the incident: intake attaches a trigger to it only
    while it may be reopened. (After an automatic resolution, a repeat of an alert that never
    stopped firing does not reopen: the source just re-sends what it knows.)"""
    if state is None:
        return Decision(None)
    refired = state.alerts.get(alert.dedup_key) is False
    by_person = state.resolution is not None and not state.resolution.auto
    if state.status is Status.CLOSED:
        # Intake attached it before it learnt of the closure: the alert goes to a new incident.
        return _refuse(state, event, alert, context, "the incident is closed; a closed incident is final")
    new = replace(state, alerts={**state.alerts, alert.dedup_key: True})
    if new.status is not Status.RESOLVED or not (refired or by_person):
        return Decision(new)
    at_event = Context(context.policy, event.occurred_at)  # the re-fire's time decides, also on replay
    if (refusal := domain.refusal(Action.REOPEN, new, at_event)) is not None:
        return _refuse(state, event, alert, context, refusal.reason)
    reopened = IncidentReopened(
        reason=f"alert {alert.dedup_key} fired again at its source ({alert.source}) after resolution",
        by=ReopenTrigger(kind=ReopenKind.ALERT_REFIRED, dedup_key=alert.dedup_key),
    )
    new = _own(_seen(new, event), derived_event_id(event.event_id, "IncidentReopened"), context, reopened)
    new = replace(new, status=Status.IN_PROGRESS, reopened=new.reopened + 1, review=None)
    return Decision(new, [reopened], cancel=[auto_close_key(event.subject)])


def _refuse(
    state: Incident, event: Envelope, alert: AlertCorrelated, context: Context, reason: str
) -> Decision[Incident]:
    """The alert is not this incident's (`state` does not count it): say so, and intake opens a
    new incident for it."""
    refused = CorrelationRefused(reason=f"alert {alert.dedup_key} fired again, but {reason}", alert=alert)
    event_id = derived_event_id(event.event_id, "CorrelationRefused")
    return Decision(_own(_seen(state, event), event_id, context, refused), [refused])


@decider.on(AlertResolved)
def on_alert_resolved(
    state: Incident | None, event: Envelope, alert: AlertResolved, context: Context
) -> Decision[Incident]:
    """The source says this alert stopped firing. When every alert of the incident has, and the
    integration's policy allows it, the open incident resolves automatically."""
    if state is None:
        return Decision(None)
    new = _seen(replace(state, alerts={**state.alerts, alert.dedup_key: False}), event)
    if (
        new.status not in domain.OPEN
        or any(new.alerts.values())
        or not context.policy.auto_resolves(alert.source, alert.integration_id)
    ):
        return Decision(new)
    keys = ", ".join(sorted(new.alerts))
    resolved = IncidentResolved(
        code=ResolutionCode.OTHER,
        auto=True,
        steps_taken=f"every correlated alert resolved at its source ({alert.source}: {keys})",
    )
    new = _own(new, derived_event_id(event.event_id, "IncidentResolved"), context, resolved)
    new = replace(
        new,
        status=Status.RESOLVED,
        resolution=Resolution(code=resolved.code, at=context.now, auto=True, steps_taken=resolved.steps_taken),
    )
    return Decision(new, [resolved], schedule=[_auto_close_timer(event.subject, new, context)])


@decider.on_timer(domain.AUTO_CLOSE)
def on_auto_close(state: Incident | None, timer: FiredTimer, context: Context) -> Decision[Incident]:
    """Close an incident whose resolution held for the configured time. One that still needs its
    review stays resolved: approving the review schedules the timer again."""
    if state is None or domain.refusal(Action.CLOSE, state, context) is not None:
        return Decision(state)
    due = domain.auto_close_at(state, context.policy)
    if due is not None and due > context.now:
        # The configured time grew since the timer was set: wait until the new due time.
        return Decision(state, schedule=[_auto_close_timer(str(timer.data["incident_id"]), state, context)])
    closed = IncidentClosed(
        code=ClosureCode.RESOLVED,
        auto=True,
        note="closed automatically: the resolution held",
        due_at=timer.due_at,
        fired_at=timer.fired_at,
    )
    new = _own(state, timer.event_id(closed.event_type), context, closed)
    return Decision(replace(new, status=Status.CLOSED, closed_at=context.now, closure_code=closed.code), [closed])


# --------------------------------------------------------------------------- commands


def resolve(
    incident_id: uuid.UUID,
    person: PersonRef,
    *,
    code: ResolutionCode,
    root_cause: str | None,
    steps_taken: str | None,
    duplicate_of: uuid.UUID | None = None,
    change_ref: str | None = None,
) -> Command[Incident, Context]:
    """A person resolves the incident. Raises NotFound, Refused, or ValueError for a duplicate of itself."""

    def command(state: Incident | None, context: Context) -> Decision[Incident]:
        current = domain.check(Action.RESOLVE, state, context)
        if duplicate_of == incident_id:
            raise ValueError("field 'duplicate_of': an incident cannot duplicate itself")
        resolved = IncidentResolved(
            code=code,
            duplicate_of=duplicate_of,
            root_cause=root_cause,
            steps_taken=steps_taken,
            change_ref=change_ref,
            resolved_by=person,
        )
        resolution = Resolution(code, context.now, False, person, root_cause, steps_taken)
        new = replace(current, status=Status.RESOLVED, resolution=resolution)
        new = domain.involve(new, person, "resolved")
        return Decision(new, [resolved], schedule=[_auto_close_timer(incident_id, new, context)])

    return command


def close(incident_id: uuid.UUID, person: PersonRef, code: ClosureCode, note: str | None) -> Command[Incident, Context]:
    """A person closes a resolved incident. Raises NotFound or Refused."""

    def command(state: Incident | None, context: Context) -> Decision[Incident]:
        current = domain.check(Action.CLOSE, state, context)
        closed = IncidentClosed(code=code, note=note, closed_by=person)
        new = replace(current, status=Status.CLOSED, closed_at=context.now, closure_code=code)
        return Decision(domain.involve(new, person, "closed"), [closed], cancel=[auto_close_key(incident_id)])

    return command


def reopen(incident_id: uuid.UUID, person: PersonRef, reason: str, *, as_responder: bool) -> Command[Incident, Context]:
    """A person reopens a resolved incident within the window: any responder, or the person who
    reported it. Raises NotFound, Forbidden or Refused."""

    def command(state: Incident | None, context: Context) -> Decision[Incident]:
        if state is None:
            raise domain.NotFound
        if not as_responder and state.reporter_actor != f"user:{person.sub}":
            raise domain.Forbidden("only a responder or the person who reported the incident may reopen it")
        current = domain.check(Action.REOPEN, state, context)
        reopened = IncidentReopened(reason=reason, by=ReopenTrigger(kind=ReopenKind.PERSON, person=person))
        # A review of the earlier resolution no longer covers the incident: closure needs a new one.
        new = replace(current, status=Status.IN_PROGRESS, reopened=current.reopened + 1, review=None)
        return Decision(domain.involve(new, person, "reopened"), [reopened], cancel=[auto_close_key(incident_id)])

    return command


def status_update(person: PersonRef, audience: Audience, message: str) -> Command[Incident, Context]:
    """A person tells responders or stakeholders where the incident stands. Raises NotFound or Refused."""

    def command(state: Incident | None, context: Context) -> Decision[Incident]:
        current = domain.check(Action.UPDATE, state, context)
        updated = IncidentStatusUpdated(audience=audience, message=message)
        return Decision(domain.involve(current, person, "status updates"), [updated])

    return command


def complete_review(
    incident_id: uuid.UUID,
    approver: PersonRef,
    *,
    review_id: str,
    summary: str,
    impact: str,
    root_cause: str,
    contributing_factors: list[str],
    went_well: list[str],
    to_improve: list[str],
    action_items: list[ActionItem],
) -> Command[Incident, Context]:
    """A manager approves the review; its timeline, time to acknowledge and to resolve come from
    the recorded events. Raises NotFound or Refused."""

    def command(state: Incident | None, context: Context) -> Decision[Incident]:
        current = domain.check(Action.REVIEW, state, context)
        d = domain.draft(current, context.policy)
        completed = PostIncidentReviewCompleted(
            review_id=review_id,
            summary=summary,
            impact=impact,
            root_cause=root_cause,
            contributing_factors=contributing_factors,
            went_well=went_well,
            to_improve=to_improve,
            action_items=action_items,
            timeline=[ReviewTimelineEntry(event_id=e.event_id, at=e.at, text=e.text) for e in d.timeline],
            time_to_acknowledge_seconds=d.time_to_acknowledge_seconds,
            time_to_resolve_seconds=d.time_to_resolve_seconds,
            approved_by=approver,
        )
        new = domain.involve(replace(current, review=completed), approver, "approved the review")
        # A resolved incident whose closure waited for the review closes when its time comes (at
        # once when it is past): the timer is scheduled again.
        timers = [_auto_close_timer(incident_id, new, context)] if new.status is Status.RESOLVED else []
        return Decision(new, [completed], schedule=timers)

    return command


def recorded(state: Incident, envelopes: list[Envelope]) -> Incident:
    """The state with a command's events on its timeline (their ids are known once staged)."""
    for e in envelopes:
        state = domain.record(state, e.event_id, e.occurred_at, e.event_type, e.actor, e.payload)
    return state
