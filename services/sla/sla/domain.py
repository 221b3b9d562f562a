"""Pure decisions of the sla service (no I/O): what it knows of an incident (its clocks), and how
each event it consumes and each timer that fires changes that. Every reaction is registered on
`decider`; decisions are made under the policy in force (the context).

Times: every instant is the cause's `occurred_at` (a replay decides the same), the clocks count
from the incident's logging, and a timer's events carry its due time and when it fired."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from opsledger.events import Envelope, EventPayload
from opsledger.events.assignment import IncidentAcknowledged, IncidentPutOnHold, IncidentResumed
from opsledger.events.common import SlaTargetKind
from opsledger.events.intake import IncidentLogged
from opsledger.events.resolution import IncidentClosed, IncidentReopened, IncidentResolved
from opsledger.events.sla import (
    SlaBreached,
    SlaCancelled,
    SlaCancelReason,
    SlaClockPaused,
    SlaClockResumed,
    SlaClockStarted,
    SlaMet,
    SlaWarning,
)
from opsledger.events.triage import IncidentCategorized, IncidentPrioritized, IncidentReprioritized
from opsledger.stage import Decider, Decision
from opsledger.timers import FiredTimer, Timer
from sla.clocks import Clock, Hold, pauses_of
from sla.policy import Policy

TARGETS = (SlaTargetKind.RESPONSE, SlaTargetKind.RESOLUTION)
TIMER_KIND = "sla"


@dataclass(frozen=True)
class Incident:
    """What this service knows of one incident: the facts its clocks depend on, and the clocks."""

    logged_at: datetime
    title: str
    category: str | None = None
    service: str | None = None
    priority: str | None = None
    holds: tuple[Hold, ...] = ()
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    clocks: tuple[Clock, ...] = ()  # the current clock of each target
    previous: tuple[Clock, ...] = ()  # clocks withdrawn by re-targeting (the record)

    def clock(self, target: SlaTargetKind) -> Clock | None:
        return next((c for c in self.clocks if c.target == target), None)

    def with_clock(self, clock: Clock) -> Incident:
        others = tuple(c for c in self.clocks if c.target != clock.target)
        return replace(self, clocks=tuple(sorted((*others, clock), key=lambda c: TARGETS.index(c.target))))

    @property
    def on_hold(self) -> bool:
        return bool(self.holds) and self.holds[-1].end is None


decider: Decider[Incident, Policy] = Decider()


# --------------------------------------------------------------------------- timers and events


def timer_key(incident_id: uuid.UUID, target: SlaTargetKind, threshold: int | None) -> str:
    return f"{TIMER_KIND}:{incident_id}:{target}:{'breach' if threshold is None else threshold}"


def _all_keys(incident_id: uuid.UUID, clock: Clock) -> list[str]:
    return [timer_key(incident_id, clock.target, p) for p in (*clock.warning_percents, None)]


def timers_for(incident_id: uuid.UUID, clock: Clock) -> tuple[list[Timer], list[str]]:
    """What to schedule for a clock as it now is, and what to cancel (every key it may have)."""
    cancel = _all_keys(incident_id, clock)
    if not clock.counting or clock.breached:
        return [], cancel
    data: dict[str, Any] = {"incident_id": str(incident_id), "target": str(clock.target)}
    schedule = []
    for percent in clock.warning_percents:
        at = clock.threshold_at(percent)
        if percent not in clock.warned and at is not None:
            schedule.append(Timer(timer_key(incident_id, clock.target, percent), at, {**data, "threshold": percent}))
    due = clock.due_at()
    if due is not None:
        schedule.append(Timer(timer_key(incident_id, clock.target, None), due, {**data, "threshold": None}))
    return schedule, cancel


def _fields(clock: Clock, at: datetime) -> dict[str, Any]:
    due = clock.due_at(now=at)
    assert due is not None
    return {
        "target": clock.target,
        "target_seconds": clock.target_seconds,
        "due_at": due,
        "policy_version": clock.policy_version,
        "priority": clock.priority,
        "business_hours": clock.business_hours,
    }


def _seconds(t: timedelta) -> int:
    return int(t.total_seconds())


@dataclass
class _Changes:
    """What a reaction accumulates: the new state, events, timers."""

    state: Incident
    incident_id: uuid.UUID
    events: list[EventPayload]
    schedule: list[Timer]
    cancel: list[str]

    @classmethod
    def of(cls, state: Incident, incident_id: uuid.UUID) -> _Changes:
        return cls(state, incident_id, [], [], [])

    def set_clock(self, clock: Clock) -> None:
        """Put a clock in the state and its timers in line with it."""
        self.state = self.state.with_clock(clock)
        schedule, cancel = timers_for(self.incident_id, clock)
        self.cancel.extend(cancel)
        self.schedule.extend(schedule)

    def decision(self) -> Decision[Incident]:
        # Cancels first: a key cancelled and rescheduled by one decision stays scheduled.
        keep = {t.key for t in self.schedule}
        return Decision(self.state, self.events, self.schedule, [k for k in self.cancel if k not in keep])


def _known(state: Incident | None, event: Envelope) -> Incident:
    # An incident logged before this service existed counts from the first event heard of it.
    return state if state is not None else Incident(logged_at=event.occurred_at, title="")


# --------------------------------------------------------------------------- reactions


@decider.on(IncidentLogged)
def on_logged(state: Incident | None, event: Envelope, logged: IncidentLogged, policy: Policy) -> Decision[Incident]:
    """Remember when the incident was logged (once: a second IncidentLogged changes nothing)."""
    if state is not None:
        return Decision(state)
    return Decision(Incident(logged_at=event.occurred_at, title=logged.title, service=logged.service))


@decider.on(IncidentCategorized)
def on_categorized(
    state: Incident | None, event: Envelope, categorized: IncidentCategorized, policy: Policy
) -> Decision[Incident]:
    """Remember the category and affected service (which narrow the rule of clocks started later)."""
    known = _known(state, event)
    return Decision(
        replace(known, category=categorized.category, service=categorized.affected_service or known.service)
    )


@decider.on(IncidentPrioritized, IncidentReprioritized)
def on_prioritized(
    state: Incident | None,
    event: Envelope,
    prioritized: IncidentPrioritized | IncidentReprioritized,
    policy: Policy,
) -> Decision[Incident]:
    """Start both clocks counted from the logging; on a priority change, re-target the clocks still
    running (SlaCancelled for the old, SlaClockStarted for the new; warnings and a breach already
    announced stay announced). Clocks already met or cancelled stay as they are."""
    known = _known(state, event)
    if known.priority == prioritized.priority and known.clocks:
        return Decision(known)
    changes = _Changes.of(replace(known, priority=prioritized.priority), _incident(event))
    _start_clocks(changes, prioritized.priority, policy, event.occurred_at)
    return changes.decision()


def _start_clocks(changes: _Changes, priority: str, policy: Policy, at: datetime) -> None:
    state = changes.state
    rule = policy.rule_for(priority, state.category, state.service)
    if rule is None:  # a valid policy has a target for every priority
        return
    for target in TARGETS:
        old = state.clock(target)
        if old is not None and old.stopped:
            continue
        seconds = rule.response_seconds if target is SlaTargetKind.RESPONSE else rule.resolution_seconds
        new = Clock(
            target=target,
            priority=priority,
            policy_version=policy.version,
            rule=rule.index,
            target_seconds=seconds,
            calendar=rule.calendar,
            warning_percents=rule.warning_percents,
            counted_from=state.logged_at,
            pauses=old.pauses if old is not None else pauses_of(state.holds),
            warned=old.warned if old is not None else (),
            breached=old.breached if old is not None else False,
            retargeted=old is not None,
        )
        if old is not None:
            changes.cancel.extend(_all_keys(changes.incident_id, old))
            changes.events.append(
                SlaCancelled(
                    **_fields(old, at),
                    reason=SlaCancelReason.RETARGETED,
                    detail=f"priority {old.priority} -> {priority}",
                    was_breached=old.breached,
                )
            )
            changes.state = replace(changes.state, previous=(*changes.state.previous, replace(old, cancelled=True)))
        changes.events.append(
            SlaClockStarted(**_fields(new, at), counted_from=new.counted_from, retargeted=old is not None)
        )
        changes.set_clock(new)
    # An acknowledgement or resolution heard before the clocks started stops them at once.
    if changes.state.acknowledged_at is not None:
        _stop(changes, SlaTargetKind.RESPONSE, changes.state.acknowledged_at, at)
    if changes.state.resolved_at is not None:
        _stop(changes, SlaTargetKind.RESPONSE, changes.state.resolved_at, at)
        _stop(changes, SlaTargetKind.RESOLUTION, changes.state.resolved_at, at)


def _stop(changes: _Changes, target: SlaTargetKind, when: datetime, at: datetime) -> None:
    """Stop a target's clock at `when`: SlaMet when in time; a breach not yet announced is
    announced now (its timer had not fired yet); one already announced stays as it is."""
    clock = changes.state.clock(target)
    if clock is None or clock.stopped:
        return
    if clock.paused:
        clock = clock.resume(when)
    due = clock.due_at(now=when)
    assert due is not None
    stopped = replace(clock, stopped_at=max(when, clock.counted_from))
    if not clock.breached and when <= due:
        changes.events.append(
            SlaMet(**_fields(stopped, at), met_at=when, elapsed_seconds=_seconds(stopped.elapsed(when)))
        )
    elif not clock.breached:
        stopped = replace(stopped, breached=True)
        changes.events.append(SlaBreached(**_fields(stopped, at), fired_at=at))
    changes.set_clock(stopped)


@decider.on(IncidentPutOnHold)
def on_hold(state: Incident | None, event: Envelope, hold: IncidentPutOnHold, policy: Policy) -> Decision[Incident]:
    """Pause every counting clock (its timers are withdrawn); clocks started later inherit the hold."""
    known = _known(state, event)
    if known.on_hold:
        return Decision(known)
    at = event.occurred_at
    changes = _Changes.of(replace(known, holds=(*known.holds, Hold(at))), _incident(event))
    for clock in known.clocks:
        if not clock.counting:
            continue
        before = _fields(clock, at)
        paused = clock.pause(at)
        changes.events.append(
            SlaClockPaused(**before, elapsed_seconds=_seconds(clock.elapsed(at)), reason=str(hold.reason))
        )
        changes.set_clock(paused)
    return changes.decision()


@decider.on(IncidentResumed)
def on_resumed(state: Incident | None, event: Envelope, resumed: IncidentResumed, policy: Policy) -> Decision[Incident]:
    """Resume the paused clocks: the pause is excluded, due times move; timers rescheduled."""
    known = _known(state, event)
    if not known.on_hold:
        return Decision(known)
    at = event.occurred_at
    holds = (*known.holds[:-1], Hold(known.holds[-1].start, max(at, known.holds[-1].start)))
    changes = _Changes.of(replace(known, holds=holds), _incident(event))
    for clock in known.clocks:
        if not clock.paused or clock.stopped:
            continue
        resumed_clock = clock.resume(at)
        changes.events.append(
            SlaClockResumed(**_fields(resumed_clock, at), paused_seconds=_seconds(resumed_clock.last_pause_time()))
        )
        changes.set_clock(resumed_clock)
    return changes.decision()


@decider.on(IncidentAcknowledged)
def on_acknowledged(
    state: Incident | None, event: Envelope, ack: IncidentAcknowledged, policy: Policy
) -> Decision[Incident]:
    """The response clock stops: SlaMet, or it had breached already."""
    known = _known(state, event)
    if known.acknowledged_at is not None:
        return Decision(known)
    changes = _Changes.of(replace(known, acknowledged_at=event.occurred_at), _incident(event))
    _stop(changes, SlaTargetKind.RESPONSE, event.occurred_at, event.occurred_at)
    return changes.decision()


@decider.on(IncidentResolved)
def on_resolved(
    state: Incident | None, event: Envelope, resolved: IncidentResolved, policy: Policy
) -> Decision[Incident]:
    """The resolution clock stops (and a response clock still running: resolving answers too)."""
    known = _known(state, event)
    changes = _Changes.of(replace(known, resolved_at=event.occurred_at), _incident(event))
    _stop(changes, SlaTargetKind.RESPONSE, event.occurred_at, event.occurred_at)
    _stop(changes, SlaTargetKind.RESOLUTION, event.occurred_at, event.occurred_at)
    return changes.decision()


@decider.on(IncidentReopened)
def on_reopened(
    state: Incident | None, event: Envelope, reopened: IncidentReopened, policy: Policy
) -> Decision[Incident]:
    """The resolution clock resumes where it stopped (the time it was resolved is excluded)."""
    known = _known(state, event)
    at = event.occurred_at
    changes = _Changes.of(replace(known, resolved_at=None), _incident(event))
    clock = known.clock(SlaTargetKind.RESOLUTION)
    if clock is None or clock.cancelled or clock.stopped_at is None:
        return changes.decision()
    stopped_at = clock.stopped_at
    running = replace(clock, stopped_at=None, pauses=(*clock.pauses, (stopped_at, max(at, stopped_at))))
    gap = running.last_pause_time()
    if known.on_hold:  # reopened while on hold: it resumes counting when the hold ends
        running = running.pause(at)
    changes.events.append(SlaClockResumed(**_fields(running, at), paused_seconds=_seconds(gap), reopened=True))
    changes.set_clock(running)
    return changes.decision()


@decider.on(IncidentClosed)
def on_closed(state: Incident | None, event: Envelope, closed: IncidentClosed, policy: Policy) -> Decision[Incident]:
    """Closed without being resolved: the clocks still running are withdrawn (not applicable)."""
    if state is None:
        return Decision(None)
    changes = _Changes.of(state, _incident(event))
    for clock in state.clocks:
        if clock.stopped:
            continue
        changes.events.append(
            SlaCancelled(
                **_fields(clock, event.occurred_at),
                reason=SlaCancelReason.NOT_APPLICABLE,
                detail=f"closed ({closed.code}) without resolution",
                was_breached=clock.breached,
            )
        )
        changes.set_clock(replace(clock, cancelled=True))
    return changes.decision()


@decider.on_timer(TIMER_KIND)
def on_timer(state: Incident | None, timer: FiredTimer, policy: Policy) -> Decision[Incident]:
    """A threshold or the due time was reached: SlaWarning or SlaBreached, once per incident,
    target and threshold. A timer the clock no longer agrees with (it moved) is put right."""
    if state is None:
        return Decision(None)
    target = SlaTargetKind(timer.data["target"])
    threshold: int | None = timer.data.get("threshold")
    clock = state.clock(target)
    if clock is None or not clock.counting:
        return Decision(state)
    # Each once. A warning may come after the breach: replicas fire an incident's timers in
    # whatever order they claim them, and a threshold that fell due is announced all the same.
    if threshold is None and clock.breached:
        return Decision(state)
    if threshold is not None and (threshold in clock.warned or threshold not in clock.warning_percents):
        return Decision(state)
    instant = clock.due_at() if threshold is None else clock.threshold_at(threshold)
    if instant is None:
        return Decision(state)
    if instant > timer.due_at:  # the clock moved and the timer was not: fire when it is due
        return Decision(state, schedule=[Timer(timer.key, instant, dict(timer.data))])
    changes = _Changes.of(state, uuid.UUID(str(timer.data["incident_id"])))
    fields = _fields(clock, timer.fired_at)
    if threshold is None:
        changes.events.append(SlaBreached(**fields, fired_at=timer.fired_at))
        changes.state = state.with_clock(replace(clock, breached=True))
    else:
        fields["due_at"] = max(fields["due_at"], timer.due_at)
        changes.events.append(
            SlaWarning(**fields, threshold_percent=threshold, threshold_at=timer.due_at, fired_at=timer.fired_at)
        )
        changes.state = state.with_clock(replace(clock, warned=tuple(sorted((*clock.warned, threshold)))))
    return changes.decision()


def _incident(event: Envelope) -> uuid.UUID:
    assert event.incident_id is not None
    return event.incident_id


def replay(
    events: Sequence[tuple[Envelope, EventPayload | None]], policy: Policy, until: datetime
) -> tuple[Incident | None, list[EventPayload]]:
    """Decide an incident's history under `policy`, firing its timers as they fall due (before the
    event at or after which they are due), up to `until`: what the service would have announced.
    Nothing is written."""
    state: Incident | None = None
    pending: dict[str, Timer] = {}
    announced: list[EventPayload] = []

    def apply(decision: Decision[Incident]) -> None:
        nonlocal state
        state = decision.state if decision.state is not None else state
        for key in decision.cancel:
            pending.pop(key, None)
        for t in decision.schedule:
            pending[t.key] = t
        announced.extend(decision.events)

    def fire_until(at: datetime) -> None:
        while pending:
            key, timer = min(pending.items(), key=lambda kv: (kv[1].due_at, kv[0]))
            if timer.due_at > at:
                return
            del pending[key]
            apply(decider.decide_timer(state, FiredTimer(key, timer.due_at, timer.data, timer.due_at), policy))

    for envelope, payload in events:
        if envelope.occurred_at > until:
            break
        fire_until(envelope.occurred_at - timedelta(microseconds=1))
        apply(decider.decide(state, envelope, payload, policy))
    fire_until(until)
    return state, announced
